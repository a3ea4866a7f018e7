//! The GPU's training kernels against the CPU reference (`dilated::train`, f64 loops checked
//! against finite differences in `tests/train_*.rs`), against hand-worked values, and
//! against central finite differences of the forward reference (`cpu::reference::conv2d`):
//! convolution gradients for the input, weights and bias over many geometries, the ReLU's
//! gradient, max pooling's gradient (overlapping windows, ceil-mode edges, padding, ties, past
//! 65,535 workgroups, capped bindings), dropout with fixed masks, the softmax cross-entropy
//! with ignored pixels, and Caffe's SGD step.

mod common;

use common::{gpu, random1, random4, rel_error, rng};
use dilated::cpu::reference;
use dilated::gpu::{
    ConvGradAlgorithm, ConvGrads, GpuConv2d, GpuDropout, GpuLayer, GpuMask, GpuMaxPool2d,
    GpuReluGrad, GpuSoftmaxLoss, Kernel, SgdHyper,
};
use dilated::train::{grad, softmax_cross_entropy};
use dilated::{Conv2d, Error, Gpu, MaxPool2d, Padding, Shape};
use ndarray::{Array1, Array3, Array4};
use rand::Rng;

const TOLERANCE: f64 = 1e-5;

/// Input, weight and bias gradients of a convolution (before its ReLU) from the CPU
/// reference (`dilated::train::grad`, f64 accumulation, itself checked against finite
/// differences).
fn conv_grads_f64(
    x: &Array4<f32>,
    w: &Array4<f32>,
    spec: &Conv2d,
    g: &Array4<f32>,
) -> (Array4<f64>, Array4<f64>, Array1<f64>) {
    let d = x.dim();
    let shape = Shape::new(d.0, d.1, d.2, d.3);
    let dx = grad::conv2d_grad_input(g.view(), spec, w.view(), shape).unwrap();
    let dw = grad::conv2d_grad_weight(x.view(), g.view(), spec).unwrap();
    let db = grad::bias_grad(g.view());
    (dx.mapv(f64::from), dw.mapv(f64::from), db.mapv(f64::from))
}

fn rel64<D: ndarray::Dimension>(
    got: &ndarray::Array<f32, D>,
    want: &ndarray::Array<f64, D>,
) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(want.iter()).fold(0f64, |m, (&a, &b)| {
        if a.is_nan() {
            f64::INFINITY
        } else {
            m.max((a as f64 - b).abs())
        }
    });
    if scale == 0.0 { diff } else { diff / scale }
}

/// The geometries the gradients are checked on: dilation, asymmetric padding, stride 2,
/// non-square kernels, batches, with and without bias.
fn geometries() -> Vec<(Conv2d, [usize; 4])> {
    vec![
        (Conv2d::new(3, 4, 3).dilation(2).pad(2), [2, 3, 9, 8]),
        (
            Conv2d::new(5, 2, 1)
                .kernel(3, 2)
                .dilation_hw(1, 3)
                .stride(2)
                .padding(Padding::new(1, 2, 0, 3)),
            [1, 5, 11, 13],
        ),
        (Conv2d::new(4, 6, 1), [3, 4, 5, 7]),
        (
            Conv2d::new(2, 3, 3).stride(2).with_bias(false),
            [2, 2, 10, 9],
        ),
        (Conv2d::new(6, 6, 3).dilation(4).pad(4), [1, 6, 12, 12]),
        // More channels than one register block (32) and columns than one workgroup (256),
        // no padding at dilation 3 (the flipped convolution padded by 6).
        (Conv2d::new(37, 45, 3).dilation(3), [2, 37, 14, 13]),
        // Asymmetric padding within the kernel's extent, a wide kernel.
        (
            Conv2d::new(3, 5, 1)
                .kernel(2, 5)
                .dilation_hw(2, 1)
                .padding(Padding::new(2, 4, 0, 1)),
            [2, 3, 6, 9],
        ),
    ]
}

/// Both gradient algorithms on every geometry: the fast one (flipped-weight convolution for
/// the input gradient where the stride is 1 and the padding within the kernel's extent, the
/// register-blocked weight gradient) and the gather kernels.
#[test]
fn convolution_gradients_match_the_definition() {
    let gpu = gpu();
    let cases = geometries()
        .into_iter()
        .enumerate()
        .flat_map(|(i, g)| [ConvGradAlgorithm::Auto, ConvGradAlgorithm::Gather].map(|a| (i, g, a)));
    for (i, (spec, shape), algorithm) in cases {
        let mut r = rng(100 + i as u64);
        let x = random4(&mut r, shape);
        let w = random4(&mut r, spec.weight_shape());
        let b = spec.bias.then(|| random1(&mut r, spec.out_channels));
        let conv = GpuConv2d::new(gpu, spec, w.view(), b.as_ref().map(|b| b.view()))
            .unwrap()
            .with_grad_algorithm(algorithm);
        let i = format!("{i} ({algorithm:?})");
        let in_shape = Shape::new(shape[0], shape[1], shape[2], shape[3]);
        let out_shape = conv.output_shape(in_shape).unwrap();
        let g = random4(&mut r, out_shape.dims());
        let (dx, dw, db) = conv_grads_f64(&x, &w, &spec, &g);

        let input = gpu.upload(x.view()).unwrap();
        let grad_out = gpu.upload(g.view()).unwrap();
        let grad_in = gpu.filled(in_shape, f32::NAN).unwrap();
        gpu.run(&conv.prepare_grad_input(gpu, &grad_out, &grad_in).unwrap())
            .unwrap();
        let got_dx = gpu.download(&grad_in).unwrap();
        assert!(
            rel64(&got_dx, &dx) <= TOLERANCE,
            "case {i} dx: {:e}",
            rel64(&got_dx, &dx)
        );

        let grads = ConvGrads::filled(gpu, &conv, f32::NAN).unwrap();
        gpu.run(
            &conv
                .prepare_grad_params(gpu, &input, &grad_out, &grads)
                .unwrap(),
        )
        .unwrap();
        let (got_dw, got_db) = grads.download(gpu).unwrap();
        assert!(
            rel64(&got_dw, &dw) <= TOLERANCE,
            "case {i} dw: {:e}",
            rel64(&got_dw, &dw)
        );
        match (got_db, spec.bias) {
            (Some(got), true) => {
                assert!(
                    rel64(&got, &db) <= TOLERANCE,
                    "case {i} db: {:e}",
                    rel64(&got, &db)
                )
            }
            (None, false) => {}
            (got, _) => panic!("case {i}: bias gradient {got:?} for bias {}", spec.bias),
        }
    }
}

/// `L = sum(g * conv(x))`: dL/dx and dL/dw from the GPU against central differences of the
/// forward reference, for a few elements of each.
#[test]
fn convolution_gradients_match_finite_differences() {
    let gpu = gpu();
    let spec = Conv2d::new(2, 3, 3)
        .dilation(2)
        .padding(Padding::new(2, 1, 0, 2));
    let shape = [1, 2, 7, 6];
    let mut r = rng(7);
    let x = random4(&mut r, shape).mapv(|v| v as f64 as f32);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, 3);
    let loss = |x: &Array4<f32>, w: &Array4<f32>, g: &Array4<f32>| -> f64 {
        let y = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
        y.iter()
            .zip(g.iter())
            .map(|(&a, &c)| a as f64 * c as f64)
            .sum()
    };
    let out_shape = spec.output_shape(Shape::new(1, 2, 7, 6), "conv").unwrap();
    let g = random4(&mut r, out_shape.dims());
    let input = gpu.upload(x.view()).unwrap();
    let grad_out = gpu.upload(g.view()).unwrap();
    let grads = |algorithm| {
        let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
            .unwrap()
            .with_grad_algorithm(algorithm);
        let dx = gpu
            .download(&conv.grad_input(gpu, &grad_out, input.shape()).unwrap())
            .unwrap();
        let (dw, _) = conv
            .grad_params_of(gpu, &input, &grad_out)
            .unwrap()
            .download(gpu)
            .unwrap();
        (dx, dw)
    };
    let (dx, dw) = grads(ConvGradAlgorithm::Auto);
    let (gather_dx, gather_dw) = grads(ConvGradAlgorithm::Gather);
    // The loss is linear in x and in w, so a central difference of step 0.5 is exact up to
    // the f32 rounding of the forward pass.
    let h = 0.5f32;
    for _ in 0..12 {
        let at = [
            0,
            r.random_range(0..2),
            r.random_range(0..7),
            r.random_range(0..6),
        ];
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[at] += h;
        minus[at] -= h;
        let fd = (loss(&plus, &w, &g) - loss(&minus, &w, &g)) / (2.0 * h as f64);
        for dx in [&dx, &gather_dx] {
            assert!(
                (dx[at] as f64 - fd).abs() <= 1e-4 * fd.abs().max(1.0),
                "dx{at:?}: {} vs {fd}",
                dx[at]
            );
        }
        let at = [
            r.random_range(0..3),
            r.random_range(0..2),
            r.random_range(0..3),
            r.random_range(0..3),
        ];
        let (mut plus, mut minus) = (w.clone(), w.clone());
        plus[at] += h;
        minus[at] -= h;
        let fd = (loss(&x, &plus, &g) - loss(&x, &minus, &g)) / (2.0 * h as f64);
        for dw in [&dw, &gather_dw] {
            assert!(
                (dw[at] as f64 - fd).abs() <= 1e-4 * fd.abs().max(1.0),
                "dw{at:?}: {} vs {fd}",
                dw[at]
            );
        }
    }
}

#[test]
fn relu_gradient_passes_where_the_output_is_positive() {
    let gpu = gpu();
    let mut r = rng(8);
    let g = random4(&mut r, [2, 3, 17, 19]);
    let a = random4(&mut r, [2, 3, 17, 19]).mapv(|v| v.max(0.0));
    let got = gpu
        .download(
            &GpuReluGrad
                .run(
                    gpu,
                    &gpu.upload(g.view()).unwrap(),
                    &gpu.upload(a.view()).unwrap(),
                )
                .unwrap(),
        )
        .unwrap();
    let want = ndarray::Zip::from(&g)
        .and(&a)
        .map_collect(|&g, &a| if a > 0.0 { g } else { 0.0 });
    assert_eq!(rel_error(got.view(), want.view()), 0.0);
    assert!(a.iter().any(|&v| v == 0.0) && a.iter().any(|&v| v > 0.0));
}

/// Loss and gradient from the CPU reference (`dilated::train::softmax_cross_entropy`).
fn softmax_loss_f64(s: &Array4<f32>, labels: &Array3<u32>) -> (f64, Array4<f64>) {
    let r = softmax_cross_entropy(s.view(), labels.view()).unwrap();
    (r.loss, r.grad.mapv(f64::from))
}

#[test]
fn softmax_loss_matches_the_definition_with_ignored_pixels() {
    let gpu = gpu();
    // Two classes, two pixels, one ignored: scores (0, ln 3) at the counted pixel, label 1:
    // q = (1/4, 3/4), loss = -ln(3/4) = 0.2877, gradient (1/4, -1/4) over 1 valid pixel.
    let s = Array4::from_shape_vec((1, 2, 1, 2), vec![0.0, 5.0, 3f32.ln(), -2.0]).unwrap();
    let labels = Array3::from_shape_vec((1, 1, 2), vec![1u32, 255]).unwrap();
    let out = GpuSoftmaxLoss::default()
        .run(gpu, &gpu.upload(s.view()).unwrap(), labels.view())
        .unwrap();
    assert_eq!(out.valid_pixels, 1);
    assert!(
        (out.loss - (4.0f64 / 3.0).ln()).abs() < 1e-6,
        "{}",
        out.loss
    );
    let g = gpu.download(&out.grad).unwrap();
    let want = [0.25f32, 0.0, -0.25, 0.0];
    for (a, b) in g.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{g:?}");
    }

    // Random scores over a batch, a fifth of the pixels ignored.
    let mut r = rng(9);
    let s = random4(&mut r, [2, 5, 9, 11]).mapv(|v| 4.0 * v);
    let labels = Array3::from_shape_simple_fn((2, 9, 11), || {
        if r.random_bool(0.2) {
            255
        } else {
            r.random_range(0..5)
        }
    });
    let (loss, grad) = softmax_loss_f64(&s, &labels);
    let out = GpuSoftmaxLoss::default()
        .run(gpu, &gpu.upload(s.view()).unwrap(), labels.view())
        .unwrap();
    assert!(
        (out.loss - loss).abs() <= 1e-5 * loss,
        "{} vs {loss}",
        out.loss
    );
    assert!(rel64(&gpu.download(&out.grad).unwrap(), &grad) <= TOLERANCE);

    // Every pixel ignored: loss 0, gradient 0. A label that is no class: an error.
    let none = Array3::from_elem((2, 9, 11), 255u32);
    let out = GpuSoftmaxLoss::default()
        .run(gpu, &gpu.upload(s.view()).unwrap(), none.view())
        .unwrap();
    assert_eq!((out.loss, out.valid_pixels), (0.0, 0));
    assert!(gpu.download(&out.grad).unwrap().iter().all(|&v| v == 0.0));
    let bad = Array3::from_elem((2, 9, 11), 5u32);
    let err = GpuSoftmaxLoss::default()
        .run(gpu, &gpu.upload(s.view()).unwrap(), bad.view())
        .err()
        .expect("label 5 of 5 classes");
    assert!(err.to_string().contains("label 5"), "{err}");
}

#[test]
fn sgd_step_is_caffes_update() {
    let gpu = gpu();
    // One output channel of two weights and a bias: w = (1, -2), b = 0.5; gradients (0.1, 0.2)
    // and 0.3; previous velocities (0.01, -0.02) and 0.04. lr 0.1, momentum 0.9, decay 0.01.
    let spec = Conv2d::new(2, 1, 1);
    let w = Array4::from_shape_vec((1, 2, 1, 1), vec![1.0f32, -2.0]).unwrap();
    let b = Array1::from(vec![0.5f32]);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view())).unwrap();
    let upload = |v: Vec<f32>, shape: Shape| {
        gpu.upload(Array4::from_shape_vec(shape.dims(), v).unwrap().view())
            .unwrap()
    };
    let rows = Shape::new(1, 1, 1, 2);
    let bias = Shape::new(1, 1, 1, 1);
    let grads = ConvGrads {
        weight: upload(vec![0.1, 0.2], rows),
        bias: Some(upload(vec![0.3], bias)),
    };
    let velocity = ConvGrads {
        weight: upload(vec![0.01, -0.02], rows),
        bias: Some(upload(vec![0.04], bias)),
    };
    let hyper = SgdHyper {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
    };
    conv.sgd_step(gpu, &grads, &velocity, &hyper).unwrap();
    // Weights (lr_mult 1, decay_mult 1):
    //   v0 = 0.9 * 0.01 + 0.1 * (0.1 + 0.01 * 1) = 0.009 + 0.011 = 0.020;  w0 = 1 - 0.02 = 0.98
    //   v1 = 0.9 * -0.02 + 0.1 * (0.2 + 0.01 * -2) = -0.018 + 0.018 = 0;  w1 = -2
    // Bias (lr_mult 2, decay_mult 0):
    //   v = 0.9 * 0.04 + 0.2 * 0.3 = 0.036 + 0.06 = 0.096;  b = 0.5 - 0.096 = 0.404
    let (w, b) = conv.download_params(gpu).unwrap();
    let (v, vb) = velocity.download(gpu).unwrap();
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    assert!(
        close(v[[0, 0, 0, 0]], 0.02) && close(v[[0, 1, 0, 0]], 0.0),
        "{v:?}"
    );
    assert!(close(vb.unwrap()[0], 0.096));
    assert!(
        close(w[[0, 0, 0, 0]], 0.98) && close(w[[0, 1, 0, 0]], -2.0),
        "{w:?}"
    );
    assert!(close(b.unwrap()[0], 0.404));
}

/// A second handle on the test adapter whose bindings are capped at 64 KiB: (65,536 - offset
/// alignment) / 4 floats per window.
fn capped_gpu() -> Gpu {
    let mut capped = Gpu::new().unwrap();
    common::check_adapter(&capped);
    capped.set_max_binding_bytes(Some(64 << 10)).unwrap();
    capped
}

/// Max pooling's input gradient on `gpu` into a NaN-poisoned tensor, with the kernels of its
/// dispatches.
fn gpu_pool_grad(
    gpu: &Gpu,
    spec: MaxPool2d,
    x: &Array4<f32>,
    g: &Array4<f32>,
) -> (Array4<f32>, Vec<dilated::gpu::Dispatch>) {
    let pool = GpuMaxPool2d::new(spec);
    let input = gpu.upload(x.view()).unwrap();
    let grad_out = gpu.upload(g.view()).unwrap();
    let grad_in = gpu.filled(input.shape(), f32::NAN).unwrap();
    let dispatches = pool
        .prepare_grad_input(gpu, &input, &grad_out, &grad_in)
        .unwrap();
    gpu.run(&dispatches).unwrap();
    (gpu.download(&grad_in).unwrap(), dispatches)
}

/// The CPU reference's max-pooling backward (`dilated::train::grad::max_pool2d_backward`).
fn pool_grad_reference(spec: MaxPool2d, x: &Array4<f32>, g: &Array4<f32>) -> Array4<f32> {
    grad::max_pool2d_backward(x.view(), &spec, g.view()).unwrap()
}

#[test]
fn max_pool_gradient_matches_the_reference() {
    let gpu = gpu();
    // Overlapping windows (stride < kernel), ceil-mode edges (odd sizes: the last window is
    // clipped), padding on some sides, stride > kernel (gaps), floor rounding, batches.
    let cases: Vec<(MaxPool2d, [usize; 4])> = vec![
        (MaxPool2d::caffe(2, 2), [2, 3, 9, 8]),
        (MaxPool2d::caffe(3, 2), [1, 4, 11, 10]),
        (MaxPool2d::caffe(3, 1), [2, 2, 7, 9]),
        (
            MaxPool2d::caffe(3, 1).padding(Padding::new(1, 1, 1, 1)),
            [1, 3, 6, 7],
        ),
        (
            MaxPool2d {
                kernel: (3, 2),
                stride: (2, 1),
                padding: Padding::new(2, 0, 1, 1),
                ceil_mode: true,
            },
            [2, 2, 10, 7],
        ),
        (MaxPool2d::caffe(2, 3), [1, 2, 11, 13]),
        (MaxPool2d::caffe(3, 2).ceil_mode(false), [3, 1, 12, 9]),
        (MaxPool2d::caffe(5, 2), [1, 2, 5, 6]),
    ];
    let mut checked = 0;
    for (i, (spec, shape)) in cases.into_iter().enumerate() {
        let mut r = rng(200 + i as u64);
        // Random values, then values from {0, 1, 2} so most windows hold ties (the first
        // maximum in row-major order wins).
        let random = random4(&mut r, shape);
        let ties = Array4::from_shape_simple_fn(shape, || r.random_range(0..3) as f32);
        for x in [random, ties] {
            let out = spec
                .output_shape(Shape::new(shape[0], shape[1], shape[2], shape[3]), "t")
                .unwrap();
            let g = random4(&mut r, out.dims());
            let (got, dispatches) = gpu_pool_grad(gpu, spec, &x, &g);
            assert!(dispatches.iter().all(|d| d.kernel() == Kernel::MaxPoolGrad));
            let want = pool_grad_reference(spec, &x, &g);
            let err = rel_error(got.view(), want.view());
            assert!(err <= 1e-6, "case {i} {spec:?} {shape:?}: {err:e}");
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
}

#[test]
fn max_pool_gradient_goes_to_the_first_maximum() {
    let gpu = gpu();
    // One 4x4 plane of equal values, 3x3 windows at stride 1 (four windows, each overlapping
    // the others): every window's first maximum is its top-left input.
    let x = Array4::from_elem((1, 1, 4, 4), 1.5f32);
    let g = Array4::from_shape_vec((1, 1, 2, 2), vec![1.0f32, 2.0, 4.0, 8.0]).unwrap();
    let (got, _) = gpu_pool_grad(gpu, MaxPool2d::caffe(3, 1), &x, &g);
    let mut want = Array4::<f32>::zeros((1, 1, 4, 4));
    want[[0, 0, 0, 0]] = 1.0;
    want[[0, 0, 0, 1]] = 2.0;
    want[[0, 0, 1, 0]] = 4.0;
    want[[0, 0, 1, 1]] = 8.0;
    assert_eq!(got, want);
    // A maximum shared by overlapping windows collects both gradients; an equal value later
    // in the window does not win; a NaN never replaces the winner (as the forward pass
    // scans).
    #[rustfmt::skip]
    let x = Array4::from_shape_vec((1, 1, 3, 5), vec![
        0.0, 1.0, 7.0, 2.0, 7.0,
        f32::NAN, 3.0, 0.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 5.0,
    ]).unwrap();
    // 3x3 windows at stride 2, ceil: columns 0..3 and 2..5, one row of windows.
    let g = Array4::from_shape_vec((1, 1, 1, 2), vec![0.5f32, 0.25]).unwrap();
    let (got, _) = gpu_pool_grad(gpu, MaxPool2d::caffe(3, 2), &x, &g);
    let want = pool_grad_reference(MaxPool2d::caffe(3, 2), &x, &g);
    assert_eq!(got[[0, 0, 0, 2]], 0.75, "{got:?}");
    assert_eq!(got.iter().filter(|&&v| v != 0.0).count(), 1, "{got:?}");
    assert_eq!(rel_error(got.view(), want.view()), 0.0);
}

#[test]
fn max_pool_gradient_past_the_limit() {
    let gpu = gpu();
    // One invocation per input element: 4,410,000 / 64 = 68,906.25 workgroups, folded into
    // two rows of at most 65,535. Overlapping 3x3 windows at stride 2, ceil mode.
    let spec = MaxPool2d::caffe(3, 2);
    let mut r = rng(210);
    let x = random4(&mut r, [1, 1, 2100, 2100]);
    let out = spec
        .output_shape(Shape::new(1, 1, 2100, 2100), "t")
        .unwrap();
    let g = random4(&mut r, out.dims());
    let (got, dispatches) = gpu_pool_grad(gpu, spec, &x, &g);
    assert_eq!(dispatches.len(), 1);
    assert_eq!(dispatches[0].workgroups(), (65_535, 2));
    let err = rel_error(got.view(), pool_grad_reference(spec, &x, &g).view());
    assert!(err <= 1e-6, "{err:e}");
}

#[test]
fn capped_bindings_split_the_pooling_gradient_into_planes() {
    let gpu = capped_gpu();
    // Input planes of 60 x 70 = 4,200 floats: 3 planes per window, 2 x 5 = 10 planes in 4
    // chunks.
    let spec = MaxPool2d::caffe(3, 2);
    let mut r = rng(220);
    let x = random4(&mut r, [2, 5, 60, 70]);
    let out = spec.output_shape(Shape::new(2, 5, 60, 70), "t").unwrap();
    let g = random4(&mut r, out.dims());
    let (got, dispatches) = gpu_pool_grad(&gpu, spec, &x, &g);
    assert_eq!(dispatches.len(), 4);
    let err = rel_error(got.view(), pool_grad_reference(spec, &x, &g).view());
    assert!(err <= 1e-6, "{err:e}");
    // A plane larger than a window is refused, naming the limit.
    let pool = GpuMaxPool2d::new(spec);
    let big = gpu.filled(Shape::new(1, 1, 130, 130), 0.0).unwrap();
    let big_out = gpu
        .filled(pool.output_shape(big.shape()).unwrap(), 0.0)
        .unwrap();
    let dx = gpu.filled(big.shape(), 0.0).unwrap();
    let err = pool.prepare_grad_input(&gpu, &big, &big_out, &dx).err();
    assert!(
        matches!(err, Some(Error::ExceedsDeviceLimits { .. })),
        "{err:?}"
    );
    // Mismatched shapes are errors.
    let err = pool.prepare_grad_input(&gpu, &big, &big, &dx).err();
    assert!(matches!(err, Some(Error::ShapeMismatch { .. })), "{err:?}");
}

/// Dropout on `gpu` in place on a copy of `x` with mask `keep`, with the number of dispatches.
fn gpu_dropout(
    gpu: &Gpu,
    ratio: f32,
    keep: &Array4<bool>,
    x: &Array4<f32>,
) -> (Array4<f32>, usize) {
    let data = gpu.upload(x.view()).unwrap();
    let mask = GpuMask::upload(gpu, keep.view()).unwrap();
    let dropout = GpuDropout::new(ratio).unwrap();
    let dispatches = dropout.prepare(gpu, &mask, &data).unwrap();
    assert!(dispatches.iter().all(|d| d.kernel() == Kernel::Dropout));
    gpu.run(&dispatches).unwrap();
    (gpu.download(&data).unwrap(), dispatches.len())
}

#[test]
fn dropout_forward_and_backward_apply_the_given_mask() {
    let gpu = gpu();
    for (i, (ratio, shape)) in [
        (0.5f32, [2, 3, 7, 5]),
        (0.3, [1, 64, 3, 3]),
        (0.0, [1, 1, 1, 33]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rng(230 + i as u64);
        let s = Shape::new(shape[0], shape[1], shape[2], shape[3]);
        let keep = grad::dropout_mask(s, ratio, &mut r).unwrap();
        let mut x = random4(&mut r, shape);
        // A NaN in a dropped unit is dropped too, as on the CPU.
        if let Some(at) = keep.indexed_iter().find(|(_, k)| !**k).map(|(at, _)| at) {
            x[at] = f32::NAN;
        }
        let (got, _) = gpu_dropout(gpu, ratio, &keep, &x);
        let want = grad::dropout_forward(x.view(), keep.view(), ratio).unwrap();
        let err = rel_error(got.view(), want.view());
        assert!(err <= 1e-7, "forward, ratio {ratio}: {err:e}");
        let g = random4(&mut r, shape);
        let (got, _) = gpu_dropout(gpu, ratio, &keep, &g);
        let want = grad::dropout_backward(g.view(), keep.view(), ratio).unwrap();
        let err = rel_error(got.view(), want.view());
        assert!(err <= 1e-7, "backward, ratio {ratio}: {err:e}");
    }
    // A mask of another shape and a ratio outside [0, 1) are errors.
    let data = gpu.filled(Shape::new(1, 2, 3, 4), 1.0).unwrap();
    let mask = GpuMask::new(gpu, Shape::new(1, 2, 4, 3)).unwrap();
    let err = GpuDropout::new(0.5)
        .unwrap()
        .prepare(gpu, &mask, &data)
        .err();
    assert!(matches!(err, Some(Error::ShapeMismatch { .. })), "{err:?}");
    for ratio in [1.0, -0.1, f32::NAN] {
        assert!(matches!(
            GpuDropout::new(ratio),
            Err(Error::InvalidSpec { .. })
        ));
    }
}

#[test]
fn capped_bindings_split_dropout_into_word_aligned_chunks() {
    let gpu = capped_gpu();
    let align = gpu.limits().min_storage_buffer_offset_alignment as usize;
    let max = ((64 << 10) - align) / 4;
    assert!((16_000..=16_383).contains(&max), "window of {max} floats");
    // Chunks of max rounded down to whole mask words (15,968 to 16,352 floats): 50,000
    // elements in 4 chunks.
    let shape = [2, 5, 50, 100];
    let mut r = rng(240);
    let keep = grad::dropout_mask(Shape::new(2, 5, 50, 100), 0.5, &mut r).unwrap();
    let x = random4(&mut r, shape);
    let (got, chunks) = gpu_dropout(&gpu, 0.5, &keep, &x);
    assert_eq!(chunks, 4);
    let want = grad::dropout_forward(x.view(), keep.view(), 0.5).unwrap();
    assert_eq!(rel_error(got.view(), want.view()), 0.0);
}

/// A convolution's gradients and an SGD step on `gpu` (its bindings capped), checked against
/// the CPU reference; returns the kernels of the input-gradient, parameter-gradient and SGD
/// dispatches.
fn capped_conv_grads(
    gpu: &Gpu,
    seed: u64,
    spec: Conv2d,
    shape: [usize; 4],
    algorithm: ConvGradAlgorithm,
) -> (Vec<Kernel>, Vec<Kernel>, Vec<Kernel>) {
    let mut r = rng(seed);
    let x = random4(&mut r, shape);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, spec.out_channels);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
        .unwrap()
        .with_grad_algorithm(algorithm);
    let in_shape = Shape::new(shape[0], shape[1], shape[2], shape[3]);
    let out_shape = conv.output_shape(in_shape).unwrap();
    let g = random4(&mut r, out_shape.dims());
    let (dx, dw, db) = conv_grads_f64(&x, &w, &spec, &g);
    let kinds = |d: &[dilated::gpu::Dispatch]| d.iter().map(|d| d.kernel()).collect::<Vec<_>>();

    let input = gpu.upload(x.view()).unwrap();
    let grad_out = gpu.upload(g.view()).unwrap();
    let grad_in = gpu.filled(in_shape, f32::NAN).unwrap();
    let d_input = conv.prepare_grad_input(gpu, &grad_out, &grad_in).unwrap();
    gpu.run(&d_input).unwrap();
    let err = rel64(&gpu.download(&grad_in).unwrap(), &dx);
    assert!(err <= TOLERANCE, "{spec:?} dx: {err:e}");

    let grads = ConvGrads::zeros(gpu, &conv).unwrap();
    grads
        .upload(
            gpu,
            &dilated::weights::LayerWeights::new(
                "poisoned",
                Array4::from_elem(spec.weight_shape(), f32::NAN),
                Some(Array1::from_elem(spec.out_channels, f32::NAN)),
            )
            .unwrap(),
        )
        .unwrap();
    let d_params = conv
        .prepare_grad_params(gpu, &input, &grad_out, &grads)
        .unwrap();
    gpu.run(&d_params).unwrap();
    let (got_dw, got_db) = grads.download(gpu).unwrap();
    let got_db = got_db.unwrap();
    let err = rel64(&got_dw, &dw);
    assert!(err <= TOLERANCE, "{spec:?} dw: {err:e}");
    let err = rel64(&got_db, &db);
    assert!(err <= TOLERANCE, "{spec:?} db: {err:e}");

    // One SGD step from a random momentum: v = 0.9 v + lr (g + wd w), w -= v (bias: 2 lr, no
    // decay), in f64.
    let v0 = random4(&mut r, spec.weight_shape());
    let vb0 = random1(&mut r, spec.out_channels);
    let velocity = ConvGrads::zeros(gpu, &conv).unwrap();
    velocity
        .upload(
            gpu,
            &dilated::weights::LayerWeights::new("v", v0.clone(), Some(vb0.clone())).unwrap(),
        )
        .unwrap();
    let hyper = SgdHyper {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
    };
    let d_sgd = conv
        .prepare_sgd_step(gpu, &grads, &velocity, &hyper)
        .unwrap();
    gpu.run(&d_sgd).unwrap();
    let (new_w, new_b) = conv.download_params(gpu).unwrap();
    let update = |w: f32, g: f32, v: f32, lr: f64, decay: f64| {
        let v = 0.9 * v as f64 + lr * (g as f64 + decay * w as f64);
        (w as f64 - v, v)
    };
    let mut want_w = Array4::<f64>::zeros(spec.weight_shape());
    let mut want_v = Array4::<f64>::zeros(spec.weight_shape());
    for (at, &wv) in w.indexed_iter() {
        let (nw, nv) = update(wv, got_dw[at], v0[at], 0.1, 0.01);
        want_w[at] = nw;
        want_v[at] = nv;
    }
    let want_b = Array1::from_shape_fn(spec.out_channels, |c| {
        update(b[c], got_db[c], vb0[c], 0.2, 0.0).0
    });
    let err = rel64(&new_w, &want_w);
    assert!(err <= TOLERANCE, "{spec:?} sgd weights: {err:e}");
    let err = rel64(&velocity.download(gpu).unwrap().0, &want_v);
    assert!(err <= TOLERANCE, "{spec:?} sgd momentum: {err:e}");
    let err = rel64(&new_b.unwrap(), &want_b);
    assert!(err <= TOLERANCE, "{spec:?} sgd bias: {err:e}");
    (kinds(&d_input), kinds(&d_params), kinds(&d_sgd))
}

#[test]
fn capped_bindings_split_convolution_gradients_and_sgd_into_the_expected_chunks() {
    let gpu = capped_gpu();
    let align = gpu.limits().min_storage_buffer_offset_alignment as usize;
    let max = ((64 << 10) - align) / 4;
    assert!((16_000..=16_383).contains(&max), "window of {max} floats");
    use ConvGradAlgorithm::{Auto, Gather};
    use Kernel::{ConvBlocked, ConvGradWeightBlocked as WB, ConvWeightFlip};
    use Kernel::{ConvGradBias as B, ConvGradInput as I, ConvGradWeight as W, Sgd as S};

    // As the forward pass (tests/gpu_dispatch.rs): 20 -> 150 channels, 3x3 dilation 2, 2
    // images of 30 x 31: 17 output and 17 input channels per window, so 2 images x 9 x 2 = 36
    // chunks; the bias once per chunk of output channels. 27,000 weights: 2 SGD chunks, and
    // one for the bias.
    let spec = Conv2d::new(20, 150, 3).dilation(2).pad(2).with_relu(true);
    let (input, params, sgd) = capped_conv_grads(&gpu, 250, spec, [2, 20, 30, 31], Gather);
    assert_eq!(input, [I; 36]);
    assert_eq!(params, [W, B, W].repeat(18));
    assert_eq!(sgd, [S; 3]);
    // The fast algorithm on the same layer: its weights are above the cap, so the input
    // gradient gathers; the weight gradient runs register-blocked over the same chunks.
    let (input, params, _) = capped_conv_grads(&gpu, 250, spec, [2, 20, 30, 31], Auto);
    assert_eq!(input, [I; 36]);
    assert_eq!(params, [WB, B, WB].repeat(18));
    // Weights within the cap (20 -> 30, 5,400): the flip, then the flipped convolution cut
    // as a forward pass from 30 channels to 20 is cut (activations above the cap).
    let spec = Conv2d::new(20, 30, 3).dilation(2).pad(2).with_relu(true);
    let (input, params, _) = capped_conv_grads(&gpu, 252, spec, [2, 20, 30, 31], Auto);
    assert_eq!(input[0], ConvWeightFlip);
    assert!(input.len() > 2, "{input:?}");
    assert!(input[1..].iter().all(|&k| k == ConvBlocked), "{input:?}");
    assert!(params.iter().all(|&k| k == WB || k == B), "{params:?}");

    // fc6-like, its weights above the cap: 8 -> 64 channels, 7x7 dilation 4, 3 images of 30 x
    // 30 (21,600 floats, above the cap too). Weight rows of 392 floats: 40 or 41 output
    // channels per window, so 3 images x 2 chunks of output channels; 25,088 weights in 2 SGD
    // chunks, and one for the bias.
    let spec = Conv2d::new(8, 64, 7).dilation(4).with_relu(true);
    let (input, params, sgd) = capped_conv_grads(&gpu, 251, spec, [3, 8, 30, 30], Gather);
    assert_eq!(input, [I; 6]);
    assert_eq!(params, [W, B].repeat(6));
    assert_eq!(sgd, [S; 3]);
}

/// The kernels of a convolution's input-gradient and parameter-gradient dispatches on the test
/// GPU, with the three gradients checked against the CPU reference.
fn conv_grads_checked(
    seed: u64,
    spec: Conv2d,
    shape: [usize; 4],
    algorithm: ConvGradAlgorithm,
) -> (Vec<Kernel>, Vec<Kernel>) {
    let gpu = gpu();
    let mut r = rng(seed);
    let x = random4(&mut r, shape);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, spec.out_channels);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
        .unwrap()
        .with_grad_algorithm(algorithm);
    let in_shape = Shape::new(shape[0], shape[1], shape[2], shape[3]);
    let g = random4(&mut r, conv.output_shape(in_shape).unwrap().dims());
    let (dx, dw, db) = conv_grads_f64(&x, &w, &spec, &g);
    let input = gpu.upload(x.view()).unwrap();
    let grad_out = gpu.upload(g.view()).unwrap();
    let grad_in = gpu.filled(in_shape, f32::NAN).unwrap();
    let d_input = conv.prepare_grad_input(gpu, &grad_out, &grad_in).unwrap();
    gpu.run(&d_input).unwrap();
    let err = rel64(&gpu.download(&grad_in).unwrap(), &dx);
    assert!(err <= TOLERANCE, "{spec:?} {shape:?} dx: {err:e}");
    let grads = ConvGrads::filled(gpu, &conv, f32::NAN).unwrap();
    let d_params = conv
        .prepare_grad_params(gpu, &input, &grad_out, &grads)
        .unwrap();
    gpu.run(&d_params).unwrap();
    let (got_dw, got_db) = grads.download(gpu).unwrap();
    let err = rel64(&got_dw, &dw);
    assert!(err <= TOLERANCE, "{spec:?} {shape:?} dw: {err:e}");
    let err = rel64(&got_db.unwrap(), &db);
    assert!(err <= TOLERANCE, "{spec:?} {shape:?} db: {err:e}");
    let kinds = |d: &[dilated::gpu::Dispatch]| d.iter().map(|d| d.kernel()).collect::<Vec<_>>();
    (kinds(&d_input), kinds(&d_params))
}

/// Reductions longer than one invocation may loop (`MAX_LOOP_STEPS`; lavapipe silently ends
/// an invocation's loops after 65,535 iterations in all) are cut into dispatches that add up.
#[test]
fn long_reductions_are_cut_into_bounded_loops() {
    use ConvGradAlgorithm::{Auto, Gather};
    use Kernel::{ConvBlocked, ConvGradWeightBlocked as WB, ConvWeightFlip};
    use Kernel::{ConvGradBias as B, ConvGradInput as I, ConvGradWeight as W};
    let steps = dilated::gpu::shader::MAX_LOOP_STEPS;
    assert_eq!(steps, 16_384);
    // Weight and bias gradients summing over 2 images of 198 x 198 = 78,408 pixels: 5 ranges.
    let spec = Conv2d::new(1, 2, 3).pad(1).with_relu(true);
    let (input, params) = conv_grads_checked(260, spec, [2, 1, 198, 198], Gather);
    assert_eq!(input, [I]);
    assert_eq!(params, [W, B].repeat(5));
    // The blocked kernel sums whole rows and counts one loop step per row: 16,384 / 199 = 82
    // rows a range, 396 rows in 5 ranges.
    let (input, params) = conv_grads_checked(260, spec, [2, 1, 198, 198], Auto);
    assert_eq!(input, [ConvWeightFlip, ConvBlocked]);
    assert_eq!(params, [WB, B].repeat(5));
    // One row of 70,000 pixels, a 1x1 layer: 5 ranges; a row that long gathers.
    for algorithm in [Gather, Auto] {
        let spec = Conv2d::new(1, 2, 1);
        let (_, params) = conv_grads_checked(261, spec, [1, 1, 1, 70_000], algorithm);
        assert_eq!(params, [W, B].repeat(5));
    }
    // An input gradient gathering over 1,400 output channels x 49 taps = 68,600 terms: 334
    // channels (16,384 / 49) per dispatch, 5 dispatches.
    let spec = Conv2d::new(1, 1400, 7);
    let (input, params) = conv_grads_checked(262, spec, [1, 1, 7, 7], Gather);
    assert_eq!(input, [I; 5]);
    assert_eq!(params, [W, B]);
    // The flipped convolution reduces over 1,400 channels x 49 taps, above
    // MAX_REDUCTION_DEPTH: two chunks of input channels, as a forward pass is cut.
    let (input, params) = conv_grads_checked(262, spec, [1, 1, 7, 7], Auto);
    assert_eq!(input, [ConvWeightFlip, ConvBlocked, ConvBlocked]);
    assert_eq!(params, [WB, B]);
}
