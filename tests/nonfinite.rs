//! NaN and infinite inputs propagate the same way on the CPU (reference and fast path) and the
//! GPU: every op and a whole network put NaN, +inf and -inf at the same output positions and
//! agree on the finite values. The command-line tool warns about them.

mod common;

use common::{gpu, random4, rng};
use dilated::cpu::{fast, reference};
use dilated::gpu::{GpuDeconv2d, Kernel};
use dilated::gpu::{GpuLayer, GpuMaxPool2d, GpuRelu, GpuSoftmax, GpuZoom, Io};
use dilated::net::Network;
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::{Conv2d, ConvAlgorithm, Deconv2d, GpuConv2d, MaxPool2d, Padding, Shape, Zoom};
use ndarray::{Array4, ArrayView4};
use rand::Rng;

/// Written into GPU outputs first: finite, so an element a kernel forgets to write shows as a
/// finite mismatch rather than passing for a propagated NaN.
const POISON: f32 = 12345.0;

/// Seeded values in [-1, 1) with NaN, +inf and -inf at `specials` seeded positions each, and
/// one of each at known places (first element, centre, last element).
fn with_specials(seed: u64, shape: [usize; 4], specials: usize) -> Array4<f32> {
    let mut r = rng(seed);
    let mut x = random4(&mut r, shape);
    let len = x.len();
    let flat = x.as_slice_mut().expect("standard layout");
    flat[0] = f32::NAN;
    flat[len / 2] = f32::INFINITY;
    flat[len - 1] = f32::NEG_INFINITY;
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for _ in 0..specials {
            flat[r.random_range(0..len)] = v;
        }
    }
    x
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Finite,
    Nan,
    PosInf,
    NegInf,
}

fn class(v: f32) -> Class {
    if v.is_nan() {
        Class::Nan
    } else if v == f32::INFINITY {
        Class::PosInf
    } else if v == f32::NEG_INFINITY {
        Class::NegInf
    } else {
        Class::Finite
    }
}

/// Panics unless `got` has NaN, +inf and -inf exactly where `want` has them and the finite
/// values agree within `tol` relative to the largest finite reference value.
fn same_pattern(what: &str, got: ArrayView4<f32>, want: ArrayView4<f32>, tol: f64) {
    assert_eq!(got.dim(), want.dim(), "{what}: shapes");
    let mut max_diff = 0f64;
    let mut max_ref = 0f64;
    let mut counts = [0usize; 4];
    for (((n, c, y, x), &g), &w) in got.indexed_iter().zip(want.iter()) {
        assert_eq!(
            class(g),
            class(w),
            "{what}: at [{n}, {c}, {y}, {x}] got {g}, want {w}"
        );
        counts[class(w) as usize] += 1;
        if class(w) == Class::Finite {
            max_diff = max_diff.max((g as f64 - w as f64).abs());
            max_ref = max_ref.max((w as f64).abs());
        }
    }
    let err = max_diff / max_ref.max(f64::MIN_POSITIVE);
    assert!(err <= tol, "{what}: finite values differ by {err:.2e}");
    eprintln!("{what}: finite/NaN/+inf/-inf = {counts:?}, error {err:.1e}");
}

fn gpu_out(shape: Shape) -> dilated::GpuTensor {
    gpu().filled(shape, POISON).unwrap()
}

/// Runs `conv` into `out`; fails if the kernel `algorithm` forces fell back to another.
/// Returns the main kernel.
fn run_conv(
    conv: &GpuConv2d,
    algorithm: ConvAlgorithm,
    input: &dilated::GpuTensor,
    out: &dilated::GpuTensor,
) -> Kernel {
    let gpu = gpu();
    let dispatches = conv.prepare(gpu, &Io::tensors(input, out)).unwrap();
    let kernels: Vec<Kernel> = dispatches.iter().map(|d| d.kernel()).collect();
    common::assert_forced_kernels(algorithm, &kernels, &format!("{:?}", conv.spec()));
    gpu.run(&dispatches).unwrap();
    kernels[0]
}

#[test]
fn convolutions_agree_on_every_path() {
    let gpu = gpu();
    let specs = [
        (Conv2d::new(5, 7, 3).dilation(2).pad(2), [1, 5, 13, 11]),
        (
            Conv2d::new(4, 40, 3)
                .with_relu(true)
                .padding(Padding::new(1, 0, 2, 1)),
            [2, 4, 9, 10],
        ),
        (Conv2d::new(6, 9, 1), [1, 6, 7, 8]),
        (
            Conv2d::new(3, 33, 3)
                .stride(2)
                .dilation_hw(1, 3)
                .pad(3)
                .with_relu(true),
            [1, 3, 12, 15],
        ),
    ];
    for (i, (spec, shape)) in specs.into_iter().enumerate() {
        let x = with_specials(10 + i as u64, shape, 2);
        let mut r = rng(20 + i as u64);
        let w = random4(&mut r, spec.weight_shape());
        let b = common::random1(&mut r, spec.out_channels);
        let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
        let fast = fast::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
        same_pattern(&format!("conv {i}: fast"), fast.view(), want.view(), 1e-5);
        let t = gpu.upload(x.view()).unwrap();
        for algorithm in [
            ConvAlgorithm::Direct,
            ConvAlgorithm::Tiled,
            ConvAlgorithm::Blocked,
            ConvAlgorithm::Auto,
        ] {
            let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
                .unwrap()
                .with_algorithm(algorithm);
            let out = gpu_out(conv.output_shape(t.shape()).unwrap());
            let kernel = run_conv(&conv, algorithm, &t, &out);
            let got = gpu.download(&out).unwrap();
            same_pattern(
                &format!("conv {i}: {kernel:?}"),
                got.view(),
                want.view(),
                1e-5,
            );
        }
    }
}

#[test]
fn relu_keeps_nan_and_clamps_negative_infinity() {
    let gpu = gpu();
    let x = with_specials(30, [2, 3, 7, 9], 3);
    let want = reference::relu(x.view());
    assert!(want[[0, 0, 0, 0]].is_nan(), "ReLU(NaN) is NaN");
    assert_eq!(want[[1, 2, 6, 8]], 0.0, "ReLU(-inf) is 0");
    let t = gpu.upload(x.view()).unwrap();
    let mut out = gpu_out(t.shape());
    GpuRelu.forward_into(gpu, &t, &mut out).unwrap();
    same_pattern("relu", gpu.download(&out).unwrap().view(), want.view(), 0.0);
    // The fused ReLU of a convolution as well: a 1x1 convolution of one channel with weight 1
    // is the identity (more channels would mix in 0 * inf = NaN).
    let x = with_specials(31, [3, 1, 7, 9], 3);
    let want = reference::relu(x.view());
    let t = gpu.upload(x.view()).unwrap();
    let spec = Conv2d::new(1, 1, 1).with_bias(false).with_relu(true);
    let one = Array4::from_elem(spec.weight_shape(), 1.0f32);
    let fast = fast::conv2d(x.view(), &spec, one.view(), None).unwrap();
    same_pattern("fused relu, fast", fast.view(), want.view(), 0.0);
    let fused = reference::conv2d(x.view(), &spec, one.view(), None).unwrap();
    same_pattern("fused relu, reference", fused.view(), want.view(), 0.0);
    for algorithm in [
        ConvAlgorithm::Direct,
        ConvAlgorithm::Tiled,
        ConvAlgorithm::Blocked,
    ] {
        let conv = GpuConv2d::new(gpu, spec, one.view(), None)
            .unwrap()
            .with_algorithm(algorithm);
        let out = gpu_out(t.shape());
        run_conv(&conv, algorithm, &t, &out);
        let got = gpu.download(&out).unwrap();
        same_pattern(
            &format!("fused relu, {algorithm:?}"),
            got.view(),
            want.view(),
            0.0,
        );
    }
}

#[test]
fn max_pool_windows_with_nan_give_nan() {
    let gpu = gpu();
    let pools = [
        MaxPool2d::caffe(2, 2),
        MaxPool2d::caffe(3, 2).padding(Padding::new(1, 2, 0, 1)),
        MaxPool2d::caffe(3, 3).ceil_mode(false),
    ];
    for (i, pool) in pools.into_iter().enumerate() {
        let x = with_specials(40 + i as u64, [2, 3, 11, 10], 3);
        let want = reference::max_pool2d(x.view(), &pool).unwrap();
        assert!(want[[0, 0, 0, 0]].is_nan(), "the window holding the NaN");
        let t = gpu.upload(x.view()).unwrap();
        let mut out = gpu_out(pool.output_shape(t.shape(), "pool").unwrap());
        GpuMaxPool2d::new(pool)
            .forward_into(gpu, &t, &mut out)
            .unwrap();
        let got = gpu.download(&out).unwrap();
        same_pattern(&format!("max pool {i}"), got.view(), want.view(), 0.0);
    }
    // A window of nothing but -inf gives -inf.
    let x = Array4::from_elem((1, 1, 2, 2), f32::NEG_INFINITY);
    let pool = MaxPool2d::caffe(2, 2);
    let want = reference::max_pool2d(x.view(), &pool).unwrap();
    assert_eq!(want[[0, 0, 0, 0]], f32::NEG_INFINITY);
    let got = gpu
        .download(
            &GpuMaxPool2d::new(pool)
                .forward(gpu, &gpu.upload(x.view()).unwrap())
                .unwrap(),
        )
        .unwrap();
    same_pattern("max pool of -inf", got.view(), want.view(), 0.0);
}

#[test]
fn softmax_argmax_zoom_and_deconv_agree() {
    let gpu = gpu();
    let x = with_specials(50, [2, 6, 9, 8], 3);
    let t = gpu.upload(x.view()).unwrap();

    let mut out = gpu_out(t.shape());
    GpuSoftmax.forward_into(gpu, &t, &mut out).unwrap();
    let want = reference::softmax(x.view());
    same_pattern(
        "softmax",
        gpu.download(&out).unwrap().view(),
        want.view(),
        1e-5,
    );

    let labels = gpu.argmax(&t).unwrap();
    assert_eq!(labels, reference::argmax(x.view()), "argmax");

    for factor in [1, 3, 8] {
        let zoom = Zoom { factor };
        let mut out = gpu_out(zoom.output_shape(t.shape(), "zoom").unwrap());
        GpuZoom::new(zoom).forward_into(gpu, &t, &mut out).unwrap();
        let want = reference::zoom(x.view(), &zoom).unwrap();
        same_pattern(
            &format!("zoom {factor}"),
            gpu.download(&out).unwrap().view(),
            want.view(),
            1e-5,
        );
    }

    // An infinity reaches only the outputs that weight it: no NaN from 0 * inf around it.
    let mut x1 = random4(&mut rng(55), [1, 1, 3, 3]);
    x1[[0, 0, 1, 1]] = f32::INFINITY;
    let zoom = Zoom { factor: 2 };
    let want = reference::zoom(x1.view(), &zoom).unwrap();
    assert!(want.iter().all(|v| !v.is_nan()), "{want:?}");
    assert_eq!(want[[0, 0, 2, 2]], f32::INFINITY);
    assert_eq!(want[[0, 0, 0, 0]], x1[[0, 0, 0, 0]]);
    assert!(want[[0, 0, 0, 1]].is_finite() && want[[0, 0, 1, 1]] == f32::INFINITY);
    let got = gpu
        .download(
            &GpuZoom::new(zoom)
                .forward(gpu, &gpu.upload(x1.view()).unwrap())
                .unwrap(),
        )
        .unwrap();
    same_pattern("zoom of one infinity", got.view(), want.view(), 1e-6);

    for (i, spec) in [Deconv2d::bilinear(6, 2), Deconv2d::bilinear(6, 3)]
        .into_iter()
        .enumerate()
    {
        let w = random4(&mut rng(60 + i as u64), spec.weight_shape());
        let deconv = GpuDeconv2d::new(gpu, spec, w.view()).unwrap();
        let mut out = gpu_out(spec.output_shape(t.shape(), "deconv").unwrap());
        deconv.forward_into(gpu, &t, &mut out).unwrap();
        let want = reference::deconv2d(x.view(), &spec, w.view()).unwrap();
        same_pattern(
            &format!("deconv {i}"),
            gpu.download(&out).unwrap().view(),
            want.view(),
            1e-5,
        );
    }
}

/// A small network with every op, in the order the presets use them.
fn network(softmax: bool) -> Network {
    let b = Network::builder("nonfinite", 3)
        .conv_he("conv1", Conv2d::new(3, 8, 3).pad(1).with_relu(true), 1)
        .max_pool("pool1", MaxPool2d::caffe(2, 2))
        .conv_he("conv2", Conv2d::new(8, 8, 3).dilation(2).pad(2), 2)
        .relu("relu2")
        .conv_he("conv3", Conv2d::new(8, 5, 1), 3)
        .deconv_bilinear("up", Deconv2d::bilinear(5, 2))
        .zoom("zoom", 2);
    if softmax { b.softmax("prob") } else { b }.build().unwrap()
}

#[test]
fn whole_networks_agree_on_cpu_and_gpu() {
    let gpu = gpu();
    for softmax in [false, true] {
        let net = network(softmax);
        // A few specials only, so most of the output stays finite.
        let x = with_specials(70, [1, 3, 24, 22], 0);
        let mut want = x.clone();
        for layer in net.layers() {
            want = reference::apply(&layer.op, want.view()).unwrap();
        }
        let cpu = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
        same_pattern(
            &format!("network (softmax {softmax}): CPU plan"),
            cpu.view(),
            want.view(),
            1e-4,
        );
        let plan = GpuPlan::new(gpu, &net, Shape::new(1, 3, 24, 22)).unwrap();
        let got = plan.forward(x.view()).unwrap();
        same_pattern(
            &format!("network (softmax {softmax}): GPU plan"),
            got.view(),
            want.view(),
            1e-4,
        );
        let finite = want.iter().filter(|v| v.is_finite()).count();
        assert!(
            finite > 0 && finite < want.len(),
            "the check covers both kinds of value"
        );
    }
}

fn dilated(args: &[&str]) -> std::process::Output {
    common::run_cli(args, &[])
}

#[test]
fn the_command_line_tool_warns_about_nan_input() {
    use dilated::net::{Model, PresetOptions};
    let dir = tempfile::tempdir().unwrap();
    let net = Model::Kitti
        .build(&PresetOptions {
            width_divisor: 32,
            ..Default::default()
        })
        .unwrap();
    let weights = dir.path().join("w.safetensors");
    dilated::weights::write_safetensors(&weights, &net.weight_set().unwrap()).unwrap();
    let clean = random4(&mut rng(90), [1, 3, 381, 377]).mapv(|v| v * 60.0);
    let mut dirty = clean.clone();
    dirty[[0, 1, 200, 190]] = f32::NAN;
    dirty[[0, 2, 10, 20]] = f32::INFINITY;
    for (name, x) in [("clean", &clean), ("dirty", &dirty)] {
        let input = dir.path().join(format!("{name}.npy"));
        let output = dir.path().join(format!("{name}-out.npy"));
        dilated::io::write_npy(&input, x).unwrap();
        let out = dilated(&[
            "run",
            "--model",
            "kitti",
            "--width-divisor",
            "32",
            "--cpu",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let y = dilated::io::read_npy4(&output).unwrap();
        if name == "clean" {
            assert!(!stderr.contains("NaN"), "{stderr}");
            assert!(y.iter().all(|v| v.is_finite()));
        } else {
            assert!(
                stderr.contains("dirty.npy has 2 NaN or infinite values"),
                "{stderr}"
            );
            assert!(stderr.contains("the output has"), "{stderr}");
            assert!(y.iter().any(|v| v.is_nan()), "the NaN reaches the output");
        }
    }
}
