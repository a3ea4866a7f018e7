//! The GPU's training kernels against the CPU reference (`dilated::train`, f64 loops checked
//! against finite differences in `tests/train_*.rs`), against hand-worked values, and
//! against central finite differences of the forward reference (`cpu::reference::conv2d`):
//! convolution gradients for the input, weights and bias over many geometries, the ReLU's
//! gradient, the softmax cross-entropy with ignored pixels, and Caffe's SGD step.

mod common;

use common::{gpu, random1, random4, rel_error, rng};
use dilated::cpu::reference;
use dilated::gpu::{ConvGrads, GpuConv2d, GpuLayer, GpuReluGrad, GpuSoftmaxLoss, SgdHyper};
use dilated::train::{grad, softmax_cross_entropy};
use dilated::{Conv2d, Padding, Shape};
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
    ]
}

#[test]
fn convolution_gradients_match_the_definition() {
    let gpu = gpu();
    for (i, (spec, shape)) in geometries().into_iter().enumerate() {
        let mut r = rng(100 + i as u64);
        let x = random4(&mut r, shape);
        let w = random4(&mut r, spec.weight_shape());
        let b = spec.bias.then(|| random1(&mut r, spec.out_channels));
        let conv = GpuConv2d::new(gpu, spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
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

        let grads = ConvGrads::zeros(gpu, &conv).unwrap();
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
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view())).unwrap();
    let out_shape = conv.output_shape(Shape::new(1, 2, 7, 6)).unwrap();
    let g = random4(&mut r, out_shape.dims());
    let input = gpu.upload(x.view()).unwrap();
    let grad_out = gpu.upload(g.view()).unwrap();
    let dx = gpu
        .download(&conv.grad_input(gpu, &grad_out, input.shape()).unwrap())
        .unwrap();
    let (dw, _) = conv
        .grad_params_of(gpu, &input, &grad_out)
        .unwrap()
        .download(gpu)
        .unwrap();
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
        assert!(
            (dx[at] as f64 - fd).abs() <= 1e-4 * fd.abs().max(1.0),
            "dx{at:?}: {} vs {fd}",
            dx[at]
        );
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
        assert!(
            (dw[at] as f64 - fd).abs() <= 1e-4 * fd.abs().max(1.0),
            "dw{at:?}: {} vs {fd}",
            dw[at]
        );
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
