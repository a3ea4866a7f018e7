//! The backward ops of `dilated::train::grad` against central finite differences of the f64
//! forward reference (`dilated::cpu::reference`), and against independent formulas: the
//! adjoint identities `<conv(x), g> = <x, dconv(g)> = <w, dW(x, g)>`, the input gradient of a
//! stride-1 convolution as the convolution of the output gradient with the flipped, transposed
//! kernel, and the bias gradient as the sum of the output gradient.
//!
//! Piecewise-linear ops are checked on dyadic grids where everything is exact in f32: inputs
//! `k / 4` (|x| <= 2), weights `k / 4` (|w| <= 1), biases odd multiples of 1/32, so every
//! pre-activation is an odd multiple of 1/32 and at least 1/32 away from the ReLU's kink; a
//! step of 1/128 moves a pre-activation by at most 1/64 and never crosses it. Max pooling gets
//! distinct inputs 1/4 apart and a step of 1/16, so no window changes its winner.

mod train_support;

use dilated::cpu::reference;
use dilated::train::grad::{
    bias_grad, conv2d_backward, conv2d_grad_input, conv2d_grad_weight, dropout_backward,
    dropout_forward, dropout_mask, max_pool2d_backward, relu_backward,
};
use dilated::{Conv2d, Error, MaxPool2d, Padding, Shape};
use ndarray::{Array1, Array4, s};
use train_support::{check_gradient, distinct, dot, dyadic, rng, uniform};

/// Geometries covering dilation > 1, asymmetric padding, stride 2, non-square kernels,
/// per-axis dilation and stride, with and without bias and fused ReLU, and batches > 1.
fn geometries() -> Vec<(Conv2d, Shape)> {
    vec![
        (Conv2d::new(2, 3, 3), Shape::new(1, 2, 7, 6)),
        (
            Conv2d::new(3, 2, 3).dilation(2).pad(2).with_relu(true),
            Shape::new(2, 3, 8, 9),
        ),
        (
            Conv2d::new(2, 2, 3)
                .padding(Padding::new(2, 0, 1, 3))
                .with_relu(true),
            Shape::new(1, 2, 6, 5),
        ),
        (
            Conv2d::new(2, 3, 1)
                .kernel(2, 3)
                .stride(2)
                .padding(Padding::new(1, 0, 0, 2))
                .with_relu(true),
            Shape::new(2, 2, 9, 8),
        ),
        (
            Conv2d::new(3, 2, 1)
                .kernel(3, 2)
                .dilation_hw(1, 3)
                .stride_hw(2, 1)
                .pad(1)
                .with_bias(false),
            Shape::new(1, 3, 8, 10),
        ),
        (
            Conv2d::new(2, 2, 3)
                .dilation(3)
                .stride(2)
                .padding(Padding::new(3, 1, 0, 4)),
            Shape::new(3, 2, 9, 7),
        ),
        (Conv2d::new(4, 3, 1).with_relu(true), Shape::new(3, 4, 3, 4)),
    ]
}

/// Dyadic weights and a bias of odd multiples of 1/32 (see the file's comment).
fn dyadic_params(seed: u64, spec: &Conv2d) -> (Array4<f32>, Option<Array1<f32>>) {
    let mut r = rng(seed);
    let w = dyadic(&mut r, spec.weight_shape(), 4, 4.0);
    let b = spec.bias.then(|| {
        Array1::from_shape_fn(spec.out_channels, |_| {
            use rand::Rng;
            (1 + 8 * r.random_range(-3..=3)) as f32 / 32.0
        })
    });
    (w, b)
}

#[test]
fn conv_gradients_match_finite_differences_exactly() {
    for (case, (spec, shape)) in geometries().into_iter().enumerate() {
        let seed = 100 + case as u64;
        let mut r = rng(seed);
        let x = dyadic(&mut r, shape.dims(), 8, 4.0);
        let (w, b) = dyadic_params(seed, &spec);
        let y = reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
        // The scalar L = sum(y * r) has dL/dy = r.
        let g = dyadic(&mut r, [y.dim().0, y.dim().1, y.dim().2, y.dim().3], 8, 8.0);
        let grads = conv2d_backward(x.view(), &spec, w.view(), y.view(), g.view()).unwrap();
        let what = format!("case {case} {spec:?}");
        let loss = |x: &Array4<f32>, w: &Array4<f32>, b: Option<&Array1<f32>>| {
            let y = reference::conv2d(x.view(), &spec, w.view(), b.map(|b| b.view())).unwrap();
            dot(y.view(), g.view())
        };
        // Exact arithmetic: only f32 rounding of the analytic gradient remains.
        let tol = (1e-6, 1e-6);
        let eps = 1.0 / 128.0;
        check_gradient(
            &format!("{what} input"),
            &x,
            grads.input.view(),
            eps,
            tol,
            |x| loss(x, &w, b.as_ref()),
        );
        check_gradient(
            &format!("{what} weight"),
            &w,
            grads.weight.view(),
            eps,
            tol,
            |w| loss(&x, w, b.as_ref()),
        );
        if let (Some(b), Some(gb)) = (&b, &grads.bias) {
            let b4 = b.clone().into_shape_with_order((1, b.len(), 1, 1)).unwrap();
            let gb4 = gb
                .clone()
                .into_shape_with_order((1, gb.len(), 1, 1))
                .unwrap();
            check_gradient(&format!("{what} bias"), &b4, gb4.view(), eps, tol, |b4| {
                let b = b4.clone().into_shape_with_order(b4.len()).unwrap();
                loss(&x, &w, Some(&b))
            });
        }
        assert_eq!(grads.bias.is_some(), spec.bias, "{what}");
    }
}

#[test]
fn conv_gradients_match_finite_differences_on_real_values() {
    // Without ReLU the convolution is linear in x and in w, so the central difference has no
    // truncation error; what is left is f32 rounding of the outputs near the perturbed tap.
    for (case, (spec, shape)) in geometries().into_iter().enumerate() {
        let spec = spec.with_relu(false);
        let mut r = rng(200 + case as u64);
        let x = uniform(&mut r, shape.dims(), -1.0, 1.0);
        let w = uniform(&mut r, spec.weight_shape(), -1.0, 1.0);
        let b = spec
            .bias
            .then(|| Array1::from_shape_fn(spec.out_channels, |i| 0.1 * i as f32 - 0.05));
        let y = reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
        let (n, c, h, wd) = y.dim();
        let g = uniform(&mut r, [n, c, h, wd], -1.0, 1.0);
        let gx = conv2d_grad_input(g.view(), &spec, w.view(), shape).unwrap();
        let gw = conv2d_grad_weight(x.view(), g.view(), &spec).unwrap();
        let bias = b.as_ref().map(|b| b.view());
        let tol = (5e-4, 1e-3);
        check_gradient(
            &format!("case {case} input"),
            &x,
            gx.view(),
            1e-2,
            tol,
            |x| {
                dot(
                    reference::conv2d(x.view(), &spec, w.view(), bias)
                        .unwrap()
                        .view(),
                    g.view(),
                )
            },
        );
        check_gradient(
            &format!("case {case} weight"),
            &w,
            gw.view(),
            1e-2,
            tol,
            |w| {
                dot(
                    reference::conv2d(x.view(), &spec, w.view(), bias)
                        .unwrap()
                        .view(),
                    g.view(),
                )
            },
        );
    }
}

#[test]
fn conv_backward_satisfies_the_adjoint_identities() {
    for (case, (spec, shape)) in geometries().into_iter().enumerate() {
        let spec = spec.with_relu(false).with_bias(false);
        let mut r = rng(300 + case as u64);
        let x = uniform(&mut r, shape.dims(), -1.0, 1.0);
        let w = uniform(&mut r, spec.weight_shape(), -1.0, 1.0);
        let y = reference::conv2d(x.view(), &spec, w.view(), None).unwrap();
        let (n, c, h, wd) = y.dim();
        let g = uniform(&mut r, [n, c, h, wd], -1.0, 1.0);
        let gx = conv2d_grad_input(g.view(), &spec, w.view(), shape).unwrap();
        let gw = conv2d_grad_weight(x.view(), g.view(), &spec).unwrap();
        // <conv(x; w), g> = <x, dL/dx> = <w, dL/dw>: three different sums of the same terms.
        let lhs = dot(y.view(), g.view());
        for (name, rhs) in [
            ("input", dot(x.view(), gx.view())),
            ("weight", dot(w.view(), gw.view())),
        ] {
            assert!(
                (lhs - rhs).abs() <= 1e-5 * (1.0 + lhs.abs()),
                "case {case} {name}: <y, g> = {lhs}, adjoint gives {rhs}"
            );
        }
        // The bias gradient is the output gradient summed over batch and pixels.
        let gb = bias_grad(g.view());
        for co in 0..c {
            let sum: f64 = g.slice(s![.., co, .., ..]).iter().map(|&v| v as f64).sum();
            assert!((gb[co] as f64 - sum).abs() < 1e-5, "case {case} bias {co}");
        }
    }
}

#[test]
fn stride_one_input_gradient_is_the_flipped_transposed_convolution() {
    // dL/dx = conv(dL/dy, w'), w'[ci, co, ky, kx] = w[co, ci, kh-1-ky, kw-1-kx], same
    // dilation, padding extent - 1 - p on each side (computed by the forward reference).
    let cases = [
        (
            Conv2d::new(3, 2, 3).dilation(2).pad(2),
            Shape::new(2, 3, 8, 9),
        ),
        (
            Conv2d::new(2, 3, 1)
                .kernel(3, 2)
                .dilation_hw(2, 3)
                .padding(Padding::new(1, 3, 4, 0)),
            Shape::new(1, 2, 7, 6),
        ),
        (
            Conv2d::new(2, 2, 5).padding(Padding::new(0, 4, 2, 1)),
            Shape::new(1, 2, 6, 6),
        ),
    ];
    for (case, (spec, shape)) in cases.into_iter().enumerate() {
        let mut r = rng(400 + case as u64);
        let w = uniform(&mut r, spec.weight_shape(), -1.0, 1.0);
        let out = spec.output_shape(shape, "t").unwrap();
        let g = uniform(&mut r, out.dims(), -1.0, 1.0);
        let gx = conv2d_grad_input(g.view(), &spec, w.view(), shape).unwrap();
        let (kh, kw) = spec.kernel;
        let flipped = Array4::from_shape_fn(
            (spec.in_channels, spec.out_channels, kh, kw),
            |(ci, co, ky, kx)| w[[co, ci, kh - 1 - ky, kw - 1 - kx]],
        );
        let (eh, ew) = spec.extent();
        let p = spec.padding;
        let transposed = Conv2d::new(spec.out_channels, spec.in_channels, 1)
            .kernel(kh, kw)
            .dilation_hw(spec.dilation.0, spec.dilation.1)
            .padding(Padding::new(
                eh - 1 - p.top,
                ew - 1 - p.left,
                eh - 1 - p.bottom,
                ew - 1 - p.right,
            ))
            .with_bias(false);
        let want = reference::conv2d(g.view(), &transposed, flipped.view(), None).unwrap();
        assert_eq!(want.dim(), gx.dim(), "case {case}");
        for (a, b) in gx.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-5, "case {case}: {a} vs {b}");
        }
    }
}

#[test]
fn relu_backward_passes_where_the_output_is_positive() {
    let y = Array4::from_shape_vec((1, 1, 1, 5), vec![0.0, 2.0, 0.0, 0.5, f32::NAN]).unwrap();
    let g = Array4::from_shape_vec((1, 1, 1, 5), vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let dx = relu_backward(y.view(), g.view()).unwrap();
    assert_eq!(
        dx.iter().copied().collect::<Vec<_>>(),
        vec![0.0, 2.0, 0.0, 4.0, 0.0]
    );
    // Against finite differences of the reference ReLU on values away from 0.
    let mut r = rng(500);
    let x = dyadic(&mut r, [2, 3, 4, 5], 8, 4.0).mapv(|v| v + 1.0 / 32.0);
    let g = dyadic(&mut r, [2, 3, 4, 5], 8, 8.0);
    let dx = relu_backward(reference::relu(x.view()).view(), g.view()).unwrap();
    check_gradient("relu", &x, dx.view(), 1.0 / 128.0, (1e-6, 1e-6), |x| {
        dot(reference::relu(x.view()).view(), g.view())
    });
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    let cases = [
        // Ceil mode: the last row and column of windows are clipped to the input.
        (MaxPool2d::caffe(2, 2), Shape::new(2, 2, 7, 7)),
        // Overlapping windows: an input can win several.
        (MaxPool2d::caffe(3, 2), Shape::new(1, 3, 8, 9)),
        (
            MaxPool2d {
                kernel: (3, 2),
                stride: (1, 2),
                padding: Padding::new(1, 0, 2, 1),
                ceil_mode: true,
            },
            Shape::new(2, 1, 5, 6),
        ),
        (
            MaxPool2d::caffe(3, 3).ceil_mode(false),
            Shape::new(1, 2, 8, 7),
        ),
    ];
    for (case, (spec, shape)) in cases.into_iter().enumerate() {
        let mut r = rng(600 + case as u64);
        let x = distinct(&mut r, shape.dims(), 4.0);
        let out = spec.output_shape(shape, "t").unwrap();
        let g = dyadic(&mut r, out.dims(), 8, 8.0);
        let dx = max_pool2d_backward(x.view(), &spec, g.view()).unwrap();
        check_gradient(
            &format!("pool case {case}"),
            &x,
            dx.view(),
            1.0 / 16.0,
            (1e-6, 1e-6),
            |x| {
                dot(
                    reference::max_pool2d(x.view(), &spec).unwrap().view(),
                    g.view(),
                )
            },
        );
        // Every output's gradient lands somewhere: the sums agree.
        let (sg, sx): (f64, f64) = (
            g.iter().map(|&v| v as f64).sum(),
            dx.iter().map(|&v| v as f64).sum(),
        );
        assert!((sg - sx).abs() < 1e-5, "case {case}");
    }
}

#[test]
fn max_pool_ties_go_to_the_first_maximum_in_row_major_order() {
    // Windows of 2x2, stride 2, over
    //   1 3 | 3 0
    //   3 2 | 3 3
    // left: 3 at (0,1) comes before 3 at (1,0); right: (0,2) before (1,2) and (1,3).
    let x = Array4::from_shape_vec((1, 1, 2, 4), vec![1., 3., 3., 0., 3., 2., 3., 3.]).unwrap();
    let g = Array4::from_shape_vec((1, 1, 1, 2), vec![1., 10.]).unwrap();
    let dx = max_pool2d_backward(x.view(), &MaxPool2d::caffe(2, 2), g.view()).unwrap();
    assert_eq!(
        dx.iter().copied().collect::<Vec<_>>(),
        vec![0., 1., 10., 0., 0., 0., 0., 0.]
    );

    // All equal, ceil mode on 3x3: windows rows/cols {0,1} and {2}; each goes to its
    // top-left input, the clipped ones included.
    let x = Array4::from_elem((1, 1, 3, 3), 5.0f32);
    let g = Array4::from_shape_vec((1, 1, 2, 2), vec![1., 2., 3., 4.]).unwrap();
    let dx = max_pool2d_backward(x.view(), &MaxPool2d::caffe(2, 2), g.view()).unwrap();
    assert_eq!(
        dx.iter().copied().collect::<Vec<_>>(),
        vec![1., 0., 2., 0., 0., 0., 3., 0., 4.]
    );

    // Overlapping 3x3 windows (stride 2) on a constant 3x5: column 2 is in both windows but
    // each window's first input is its own top-left, (0,0) and (0,2).
    let x = Array4::from_elem((1, 1, 3, 5), 7.0f32);
    let g = Array4::from_shape_vec((1, 1, 1, 2), vec![1., 2.]).unwrap();
    let dx = max_pool2d_backward(x.view(), &MaxPool2d::caffe(3, 2), g.view()).unwrap();
    let mut want = Array4::<f32>::zeros((1, 1, 3, 5));
    want[[0, 0, 0, 0]] = 1.0;
    want[[0, 0, 0, 2]] = 2.0;
    assert_eq!(dx, want);

    // Padding never wins, even over negative inputs: with one row and column of padding
    // above and to the left, each 2x2 window of this 2x2 input holds one real input.
    let spec = MaxPool2d::caffe(2, 2).padding(Padding::new(1, 1, 0, 0));
    let x = Array4::from_shape_vec((1, 1, 2, 2), vec![-4., -3., -2., -1.]).unwrap();
    let g = Array4::from_shape_vec((1, 1, 2, 2), vec![1., 2., 3., 4.]).unwrap();
    let dx = max_pool2d_backward(x.view(), &spec, g.view()).unwrap();
    assert_eq!(dx, g);
}

#[test]
fn dropout_scales_kept_units_and_routes_gradients_through_the_mask() {
    let x = Array4::from_shape_vec((1, 2, 1, 2), vec![1.0f32, -2.0, 3.0, 4.0]).unwrap();
    let mask = Array4::from_shape_vec((1, 2, 1, 2), vec![true, false, false, true]).unwrap();
    let y = dropout_forward(x.view(), mask.view(), 0.5).unwrap();
    assert_eq!(
        y.iter().copied().collect::<Vec<_>>(),
        vec![2.0, 0.0, 0.0, 8.0]
    );
    let g = Array4::from_shape_vec((1, 2, 1, 2), vec![0.5f32, 0.5, 0.5, -1.0]).unwrap();
    let dx = dropout_backward(g.view(), mask.view(), 0.5).unwrap();
    assert_eq!(
        dx.iter().copied().collect::<Vec<_>>(),
        vec![1.0, 0.0, 0.0, -2.0]
    );
    // Ratio 0.25 keeps with scale 4/3; finite differences of the (linear) forward agree.
    let mut r = rng(700);
    let x = uniform(&mut r, [2, 3, 4, 4], -1.0, 1.0);
    let mask = dropout_mask(Shape::new(2, 3, 4, 4), 0.25, &mut r).unwrap();
    let g = uniform(&mut r, [2, 3, 4, 4], -1.0, 1.0);
    let dx = dropout_backward(g.view(), mask.view(), 0.25).unwrap();
    check_gradient("dropout", &x, dx.view(), 1e-2, (1e-4, 1e-4), |x| {
        dot(
            dropout_forward(x.view(), mask.view(), 0.25).unwrap().view(),
            g.view(),
        )
    });
}

#[test]
fn dropout_masks_keep_one_minus_ratio_and_are_seeded() {
    let shape = Shape::new(4, 8, 25, 25);
    let m = dropout_mask(shape, 0.5, &mut rng(1)).unwrap();
    let kept = m.iter().filter(|&&k| k).count() as f64 / shape.len() as f64;
    // 20000 draws: the standard deviation of the fraction is 0.0035.
    assert!((kept - 0.5).abs() < 0.02, "kept {kept}");
    let m3 = dropout_mask(shape, 0.75, &mut rng(2)).unwrap();
    let kept = m3.iter().filter(|&&k| k).count() as f64 / shape.len() as f64;
    assert!((kept - 0.25).abs() < 0.02, "kept {kept}");
    assert_eq!(m, dropout_mask(shape, 0.5, &mut rng(1)).unwrap());
    assert!(
        dropout_mask(shape, 0.0, &mut rng(3))
            .unwrap()
            .iter()
            .all(|&k| k)
    );
    for bad in [1.0, -0.1, f32::NAN] {
        assert!(matches!(
            dropout_mask(shape, bad, &mut rng(1)),
            Err(Error::InvalidSpec { .. })
        ));
    }
}

#[test]
fn shape_errors_are_errors_not_panics() {
    let spec = Conv2d::new(2, 3, 3).pad(1).with_relu(true);
    let x = Array4::<f32>::zeros((1, 2, 5, 5));
    let w = Array4::<f32>::zeros(spec.weight_shape());
    let y = Array4::<f32>::zeros((1, 3, 5, 5));
    let wrong = Array4::<f32>::zeros((1, 3, 4, 5));
    let shape_err = |r: Result<Array4<f32>, Error>| matches!(r, Err(Error::ShapeMismatch { .. }));
    assert!(shape_err(conv2d_grad_input(
        wrong.view(),
        &spec,
        w.view(),
        Shape::new(1, 2, 5, 5)
    )));
    assert!(shape_err(conv2d_grad_input(
        y.view(),
        &spec,
        Array4::<f32>::zeros((3, 2, 3, 2)).view(),
        Shape::new(1, 2, 5, 5)
    )));
    assert!(shape_err(conv2d_grad_weight(x.view(), wrong.view(), &spec)));
    assert!(
        conv2d_grad_weight(Array4::<f32>::zeros((1, 4, 5, 5)).view(), y.view(), &spec).is_err()
    );
    assert!(conv2d_backward(x.view(), &spec, w.view(), wrong.view(), y.view()).is_err());
    assert!(conv2d_backward(x.view(), &spec, w.view(), y.view(), wrong.view()).is_err());
    assert!(shape_err(relu_backward(y.view(), wrong.view())));
    let pool = MaxPool2d::caffe(2, 2);
    assert!(shape_err(max_pool2d_backward(x.view(), &pool, x.view())));
    let mask = Array4::<bool>::from_elem((1, 2, 5, 4), true);
    assert!(shape_err(dropout_forward(x.view(), mask.view(), 0.5)));
    assert!(shape_err(dropout_backward(x.view(), mask.view(), 0.5)));
    assert!(matches!(
        dropout_forward(x.view(), Array4::from_elem((1, 2, 5, 5), true).view(), 1.0),
        Err(Error::InvalidSpec { .. })
    ));
}
