//! GPU kernels against the CPU reference (direct f64 loops) on seeded random configurations.
//! Every output buffer is poisoned with NaN first, so an unwritten element fails the check, and
//! a forced convolution kernel must be the one that runs.

mod common;

use common::{gpu, random1, random4, rel_error, rng};
use dilated::cpu::reference;
use dilated::gpu::Kernel;
use dilated::gpu::{GpuLayer, GpuMaxPool2d, GpuRelu, Io};
use dilated::{Conv2d, ConvAlgorithm, Gpu, GpuConv2d, MaxPool2d, Padding, Shape};
use ndarray::Array4;
use rand::Rng;
use rand::rngs::StdRng;

const TOLERANCE: f64 = 1e-5;

/// Runs one convolution on the GPU (poisoned output) and on the reference; returns the error.
fn check_conv(seed: u64, spec: Conv2d, input_shape: [usize; 4], algorithm: ConvAlgorithm) -> f64 {
    check_conv_on(gpu(), seed, spec, input_shape, algorithm)
}

fn check_conv_on(
    gpu: &Gpu,
    seed: u64,
    spec: Conv2d,
    input_shape: [usize; 4],
    algorithm: ConvAlgorithm,
) -> f64 {
    check_conv_kernels(gpu, seed, spec, input_shape, algorithm).0
}

/// [`check_conv_on`], also returning the kernel of every dispatch; fails if a forced kernel
/// fell back to another.
fn check_conv_kernels(
    gpu: &Gpu,
    seed: u64,
    spec: Conv2d,
    input_shape: [usize; 4],
    algorithm: ConvAlgorithm,
) -> (f64, Vec<Kernel>) {
    let mut r = rng(seed);
    let x = random4(&mut r, input_shape);
    let w = random4(&mut r, spec.weight_shape());
    let b = spec.bias.then(|| random1(&mut r, spec.out_channels));
    let want = reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
    let conv = GpuConv2d::new(gpu, spec, w.view(), b.as_ref().map(|b| b.view()))
        .unwrap()
        .with_algorithm(algorithm);
    let input = gpu.upload(x.view()).unwrap();
    let out_shape = conv.output_shape(input.shape()).unwrap();
    let out = gpu.filled(out_shape, f32::NAN).unwrap();
    let dispatches = conv.prepare(gpu, &Io::tensors(&input, &out)).unwrap();
    let kernels: Vec<Kernel> = dispatches.iter().map(|d| d.kernel()).collect();
    common::assert_forced_kernels(algorithm, &kernels, &format!("{spec:?} on {input_shape:?}"));
    gpu.run(&dispatches).unwrap();
    let got = gpu.download(&out).unwrap();
    (rel_error(got.view(), want.view()), kernels)
}

fn pick<T: Copy>(r: &mut StdRng, items: &[T]) -> T {
    items[r.random_range(0..items.len())]
}

/// A random convolution configuration small enough for the f64 reference.
fn random_conv(r: &mut StdRng) -> (Conv2d, [usize; 4]) {
    let small = |r: &mut StdRng, max: usize| {
        if r.random_bool(0.3) {
            r.random_range(1..=4)
        } else {
            r.random_range(1..=max)
        }
    };
    let n = r.random_range(1..=3);
    let mut c_in = small(r, 64);
    let mut c_out = small(r, 64);
    let mut h = small(r, 64);
    let mut w = small(r, 64);
    let kh = pick(r, &[1, 2, 3, 3, 5, 7]);
    let kw = if r.random_bool(0.6) {
        kh
    } else {
        pick(r, &[1, 2, 3, 5, 7])
    };
    let dil = |r: &mut StdRng| {
        if r.random_bool(0.4) {
            1
        } else {
            r.random_range(1..=16)
        }
    };
    let (dh, dw) = (dil(r), dil(r));
    let (sh, sw) = if r.random_bool(0.6) {
        (1, 1)
    } else {
        (r.random_range(1..=3), r.random_range(1..=3))
    };
    let eh = (kh - 1) * dh + 1;
    let ew = (kw - 1) * dw + 1;
    let mut pad = Padding::new(
        r.random_range(0..=eh / 2 + 1),
        r.random_range(0..=ew / 2 + 1),
        r.random_range(0..=eh / 2 + 1),
        r.random_range(0..=ew / 2 + 1),
    );
    // Make the kernel fit: grow the bottom/right padding where the input is too small.
    if h + pad.top + pad.bottom < eh {
        pad.bottom = eh - h - pad.top;
    }
    if w + pad.left + pad.right < ew {
        pad.right = ew - w - pad.left;
    }
    let (bias, relu) = (r.random_bool(0.7), r.random_bool(0.5));
    let spec = |c_in, c_out| {
        Conv2d::new(c_in, c_out, 1)
            .kernel(kh, kw)
            .dilation_hw(dh, dw)
            .stride_hw(sh, sw)
            .padding(pad)
            .with_bias(bias)
            .with_relu(relu)
    };
    // Keep the arithmetic small: shrink the largest of channels and size.
    let cost = |c_in: usize, c_out: usize, h: usize, w: usize| {
        let s = spec(c_in, c_out);
        s.output_shape(Shape::new(n, c_in, h, w), "t")
            .map(|o| s.flops(o))
            .unwrap_or(0)
    };
    while cost(c_in, c_out, h, w) > 6_000_000 {
        let m = c_in.max(c_out).max(h).max(w);
        if c_in == m {
            c_in = c_in.div_ceil(2);
        } else if c_out == m {
            c_out = c_out.div_ceil(2);
        } else if h == m && h > eh {
            h = h
                .div_ceil(2)
                .max(eh.saturating_sub(pad.top + pad.bottom))
                .max(1);
        } else {
            w = w
                .div_ceil(2)
                .max(ew.saturating_sub(pad.left + pad.right))
                .max(1);
        }
    }
    (spec(c_in, c_out), [n, c_in, h, w])
}

#[test]
fn conv2d_matches_reference_on_random_configurations() {
    let algorithms = [
        ConvAlgorithm::Auto,
        ConvAlgorithm::Direct,
        ConvAlgorithm::Tiled,
    ];
    let mut failures = Vec::new();
    let cases = 240;
    for case in 0..cases {
        let mut r = rng(1000 + case);
        let (spec, shape) = random_conv(&mut r);
        let algorithm = algorithms[case as usize % algorithms.len()];
        let err = check_conv(case, spec, shape, algorithm);
        if err.is_nan() || err > TOLERANCE {
            eprintln!(
                "FAIL case {case}: {algorithm:?} input {shape:?} {spec:?}: rel error {err:e}"
            );
            failures.push(case);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} configurations failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn pointwise_conv_matches_reference() {
    for (i, (c_in, c_out, h, w, n)) in [
        (1, 1, 1, 1, 1),
        (7, 5, 3, 9, 2),
        (64, 64, 8, 8, 1),
        (100, 130, 5, 13, 3),
        (33, 70, 17, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        for alg in [
            ConvAlgorithm::Auto,
            ConvAlgorithm::Tiled,
            ConvAlgorithm::Direct,
        ] {
            let spec = Conv2d::new(c_in, c_out, 1).with_relu(i % 2 == 0);
            let err = check_conv(50 + i as u64, spec, [n, c_in, h, w], alg);
            assert!(
                err <= TOLERANCE,
                "1x1 {c_in}->{c_out} at {h}x{w} n={n} {alg:?}: {err:e}"
            );
        }
    }
}

#[test]
fn dilated_context_layers_match_reference() {
    // The context module's shapes: 3x3, dilation d, padding d, at 66x66 (scaled-down channels).
    for (i, d) in [1usize, 2, 4, 8, 16].into_iter().enumerate() {
        let spec = Conv2d::new(21, 21, 3).dilation(d).pad(d).with_relu(true);
        for alg in [ConvAlgorithm::Direct, ConvAlgorithm::Tiled] {
            let err = check_conv(70 + i as u64, spec, [1, 21, 66, 66], alg);
            assert!(err <= TOLERANCE, "dilation {d} {alg:?}: {err:e}");
        }
    }
}

#[test]
fn weight_over_one_binding_is_split_over_output_channels() {
    // 6000 x 6000 1x1 weights = 144 MB, over lavapipe's 128 MiB binding limit.
    let gpu = gpu();
    let spec = Conv2d::new(6000, 6000, 1).with_relu(true);
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let bytes = spec.weight_len() as u64 * 4;
    if bytes <= limit {
        eprintln!("adapter binds {limit} bytes; this case does not exceed it here");
    }
    for alg in [ConvAlgorithm::Auto, ConvAlgorithm::Tiled] {
        let (err, kernels) = check_conv_kernels(gpu, 90, spec, [1, 6000, 2, 3], alg);
        assert!(err <= TOLERANCE, "{alg:?}: {err:e}");
        // One dispatch (and its split sum, if any) per window of output channels.
        let windows = kernels
            .iter()
            .filter(|k| **k != Kernel::ConvSplitReduce)
            .count() as u64;
        assert!(
            windows >= bytes.div_ceil(limit),
            "{alg:?}: {windows} weight windows of at most {limit} bytes for {bytes} bytes"
        );
    }
}

#[test]
fn activations_over_one_binding_are_split_over_channels() {
    // Input of 40 x 1024 x 1024 floats (160 MiB): the reduction is split over input channels
    // and accumulated in the output.
    let err = check_conv(
        91,
        Conv2d::new(40, 2, 1).with_relu(true),
        [1, 40, 1024, 1024],
        ConvAlgorithm::Auto,
    );
    assert!(err <= TOLERANCE, "input split: {err:e}");
    // Output of 40 x 1024 x 1024: split over output channels.
    let err = check_conv(
        92,
        Conv2d::new(1, 40, 1),
        [1, 1, 1024, 1024],
        ConvAlgorithm::Auto,
    );
    assert!(err <= TOLERANCE, "output split: {err:e}");
    // A dilated non-square kernel with asymmetric padding over a batch of 2.
    let spec = Conv2d::new(36, 1, 1)
        .kernel(2, 1)
        .dilation_hw(3, 1)
        .padding(Padding::new(1, 0, 2, 0));
    let err = check_conv(93, spec, [2, 36, 1000, 950], ConvAlgorithm::Auto);
    assert!(err <= TOLERANCE, "batched dilated input split: {err:e}");
}

#[test]
fn every_kernel_splits_over_a_capped_binding() {
    // With storage bindings capped at 64 KiB (16,320 floats once aligned), these small layers
    // take every split path: input-channel chunks whose partial sums accumulate in the output,
    // output-channel chunks, weight windows starting mid-buffer and one image per window.
    let mut capped = Gpu::new().unwrap();
    assert!(capped.set_max_binding_bytes(Some(100)).is_err());
    capped.set_max_binding_bytes(Some(64 << 10)).unwrap();
    let cases = [
        // Input planes of 930: chunks of 17 input and 17 output channels.
        (
            Conv2d::new(20, 150, 3).dilation(2).pad(2).with_relu(true),
            [2, 20, 30, 31],
        ),
        // Non-square dilated kernel, stride 2, asymmetric padding.
        (
            Conv2d::new(33, 40, 1)
                .kernel(3, 2)
                .dilation_hw(1, 3)
                .stride(2)
                .padding(Padding::new(1, 2, 0, 3)),
            [1, 33, 41, 37],
        ),
        // 1x1: chunks of 24 channels.
        (Conv2d::new(40, 140, 1), [1, 40, 25, 27]),
        // Input-channel chunks of 40, output-channel chunks of 8 (2,000-float weight rows):
        // the tiled kernel also splits each chunk's reduction in 3 and sums the slices into the
        // accumulated output.
        (Conv2d::new(80, 40, 5).with_relu(true), [1, 80, 20, 20]),
    ];
    for (i, (spec, shape)) in cases.into_iter().enumerate() {
        for alg in [
            ConvAlgorithm::Direct,
            ConvAlgorithm::Tiled,
            ConvAlgorithm::Blocked,
            ConvAlgorithm::Auto,
        ] {
            let err = check_conv_on(&capped, 97 + i as u64, spec, shape, alg);
            assert!(err <= TOLERANCE, "case {i} {alg:?} {spec:?}: {err:e}");
        }
    }
}

fn check_pool(seed: u64, spec: MaxPool2d, shape: [usize; 4]) -> f64 {
    let gpu = gpu();
    let x = random4(&mut rng(seed), shape);
    let want = reference::max_pool2d(x.view(), &spec).unwrap();
    let input = gpu.upload(x.view()).unwrap();
    let mut out = gpu
        .filled(spec.output_shape(input.shape(), "pool").unwrap(), f32::NAN)
        .unwrap();
    GpuMaxPool2d::new(spec)
        .forward_into(gpu, &input, &mut out)
        .unwrap();
    rel_error(gpu.download(&out).unwrap().view(), want.view())
}

#[test]
fn max_pool_matches_reference() {
    // Caffe's pool: 2x2 stride 2, ceil rounding, on odd sizes.
    for (i, shape) in [
        [1, 3, 7, 7],
        [2, 5, 9, 4],
        [1, 1, 2, 2],
        [3, 2, 31, 17],
        [1, 4, 898, 3],
    ]
    .into_iter()
    .enumerate()
    {
        let err = check_pool(200 + i as u64, MaxPool2d::caffe(2, 2), shape);
        assert_eq!(err, 0.0, "caffe pool on {shape:?}");
    }
    let mut r = rng(7);
    for case in 0..60u64 {
        let kh = r.random_range(1..=4);
        let kw = r.random_range(1..=4);
        let pad = Padding::new(
            r.random_range(0..kh),
            r.random_range(0..kw),
            r.random_range(0..kh),
            r.random_range(0..kw),
        );
        let spec = MaxPool2d {
            kernel: (kh, kw),
            stride: (r.random_range(1..=3), r.random_range(1..=3)),
            padding: pad,
            ceil_mode: r.random_bool(0.5),
        };
        let shape = [
            r.random_range(1..=2),
            r.random_range(1..=5),
            r.random_range(kh..=40),
            r.random_range(kw..=40),
        ];
        let err = check_pool(300 + case, spec, shape);
        assert_eq!(err, 0.0, "case {case}: {spec:?} on {shape:?}");
    }
}

#[test]
fn relu_matches_reference() {
    let gpu = gpu();
    for (i, shape) in [[1, 1, 1, 1], [2, 3, 5, 7], [1, 64, 33, 65]]
        .into_iter()
        .enumerate()
    {
        let x = random4(&mut rng(400 + i as u64), shape);
        let input = gpu.upload(x.view()).unwrap();
        let mut out = gpu.filled(input.shape(), f32::NAN).unwrap();
        GpuRelu.forward_into(gpu, &input, &mut out).unwrap();
        let got = gpu.download(&out).unwrap();
        assert_eq!(rel_error(got.view(), reference::relu(x.view()).view()), 0.0);
    }
}

#[test]
fn upload_download_round_trip_any_batch() {
    let gpu = gpu();
    for shape in [[1, 1, 1, 1], [3, 2, 5, 7], [2, 17, 9, 1]] {
        let x: Array4<f32> = random4(&mut rng(500), shape);
        let t = gpu.upload(x.view()).unwrap();
        assert_eq!(t.shape(), Shape::from(shape));
        assert_eq!(gpu.download(&t).unwrap(), x);
        // Non-standard layouts upload by logical order.
        let xt = x.clone().permuted_axes([0, 1, 3, 2]);
        let back = gpu.download(&gpu.upload(xt.view()).unwrap()).unwrap();
        assert_eq!(back, xt);
    }
}
