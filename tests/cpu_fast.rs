//! The fast CPU path against the f64 reference on seeded random configurations.

mod common;

use dilated::cpu::{fast, reference};
use dilated::{Conv2d, MaxPool2d, Padding, Shape};
use ndarray::Array4;
use rand::Rng;
use rand::rngs::StdRng;

const TOL: f64 = 1e-5;

/// Runs one convolution both ways; returns the relative error.
fn check_conv(rng: &mut StdRng, spec: Conv2d, input: Shape) -> f64 {
    let x = common::random4(rng, input.dims());
    let w = common::random4(rng, spec.weight_shape());
    let b = spec.bias.then(|| common::random1(rng, spec.out_channels));
    let want = reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
    let layer = fast::CpuConv2d::new(spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
    let got = layer.forward(x.view()).unwrap();
    let e1 = common::rel_error(got.view(), want.view());
    // forward_into over a poisoned buffer must write every element.
    let mut out = Array4::from_elem(want.dim(), f32::NAN);
    layer.forward_into(x.view(), &mut out).unwrap();
    let e2 = common::rel_error(out.view(), want.view());
    e1.max(e2)
}

/// A random valid convolution whose reference cost stays small.
fn random_conv(rng: &mut StdRng) -> (Conv2d, Shape) {
    const KERNELS: [usize; 5] = [1, 2, 3, 5, 7];
    loop {
        let n = rng.random_range(1..=3);
        let cin = rng.random_range(1..=64);
        let cout = rng.random_range(1..=64);
        let h = if rng.random_bool(0.1) {
            1
        } else {
            rng.random_range(1..=40)
        };
        let w = if rng.random_bool(0.1) {
            1
        } else {
            rng.random_range(1..=40)
        };
        let kh = KERNELS[rng.random_range(0..5)];
        let kw = if rng.random_bool(0.7) {
            kh
        } else {
            KERNELS[rng.random_range(0..5)]
        };
        let dh = rng.random_range(1..=16);
        let dw = if rng.random_bool(0.5) {
            dh
        } else {
            rng.random_range(1..=16)
        };
        let mut pad = || {
            if rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(0..=17)
            }
        };
        let padding = Padding::new(pad(), pad(), pad(), pad());
        let sh = rng.random_range(1..=3);
        let sw = if rng.random_bool(0.6) {
            1
        } else {
            rng.random_range(1..=3)
        };
        let spec = Conv2d::new(cin, cout, 1)
            .kernel(kh, kw)
            .dilation_hw(dh, dw)
            .padding(padding)
            .stride_hw(sh, sw)
            .with_bias(rng.random_bool(0.5))
            .with_relu(rng.random_bool(0.5));
        let input = Shape::new(n, cin, h, w);
        let Ok(out) = spec.output_shape(input, "test") else {
            continue;
        };
        if spec.flops(out) > 40_000_000 {
            continue;
        }
        return (spec, input);
    }
}

#[test]
fn conv_matches_reference_on_random_configs() {
    let mut rng = common::rng(0xC0FFEE);
    for i in 0..160 {
        let (spec, input) = random_conv(&mut rng);
        let e = check_conv(&mut rng, spec, input);
        assert!(
            e <= TOL,
            "config {i}: {spec:?} on {input}: relative error {e:e}"
        );
    }
}

#[test]
fn conv_tile_edges_and_channel_blocks() {
    // Widths around the 16-lane vectors and 32-pixel tiles, channel counts around the blocks.
    let mut rng = common::rng(7);
    for (i, &w) in [1usize, 15, 16, 17, 31, 32, 33, 47, 48, 64, 66, 70]
        .iter()
        .enumerate()
    {
        for &cout in &[1usize, 11, 12, 13, 24, 25, 37] {
            let d = 1 + i % 5;
            let spec = Conv2d::new(5, cout, 3)
                .dilation(d)
                .pad(d)
                .with_relu(i % 2 == 0);
            let input = Shape::new(1, 5, 9, w);
            let e = check_conv(&mut rng, spec, input);
            assert!(e <= TOL, "{spec:?} on {input}: relative error {e:e}");
        }
    }
}

#[test]
fn conv_network_shapes_small() {
    // The shapes of the benchmarks, scaled down: dilated 3x3 with pad = dilation, 1x1, a 7x7
    // dilation-4 layer without padding, a dilation larger than the input.
    let mut rng = common::rng(11);
    let cases = [
        (
            Conv2d::new(32, 32, 3).dilation(8).pad(8),
            Shape::new(1, 32, 20, 20),
        ),
        (Conv2d::new(64, 48, 1), Shape::new(1, 64, 16, 16)),
        (
            Conv2d::new(16, 24, 7).dilation(4),
            Shape::new(1, 16, 30, 30),
        ),
        (
            Conv2d::new(19, 19, 3).dilation(64).pad(64).with_relu(true),
            Shape::new(1, 19, 24, 20),
        ),
        (
            Conv2d::new(21, 42, 3).pad(1).with_relu(true),
            Shape::new(2, 21, 33, 33),
        ),
        // Many input channels and taps: the input channels are processed in chunks.
        (
            Conv2d::new(150, 13, 7).dilation(2).pad(5).with_relu(true),
            Shape::new(1, 150, 12, 20),
        ),
        (
            Conv2d::new(700, 25, 3).dilation(3).pad(3),
            Shape::new(1, 700, 6, 35),
        ),
    ];
    for (spec, input) in cases {
        let e = check_conv(&mut rng, spec, input);
        assert!(e <= TOL, "{spec:?} on {input}: relative error {e:e}");
    }
}

#[test]
fn conv_rejects_bad_shapes() {
    let spec = Conv2d::new(3, 4, 3).pad(1);
    let w = Array4::<f32>::ones(spec.weight_shape());
    let b = ndarray::Array1::<f32>::ones(4);
    let layer = fast::CpuConv2d::new(spec, w.view(), Some(b.view())).unwrap();
    assert!(
        layer
            .forward(Array4::<f32>::ones((1, 2, 5, 5)).view())
            .is_err()
    );
    let mut wrong = Array4::<f32>::zeros((1, 4, 4, 5));
    assert!(
        layer
            .forward_into(Array4::<f32>::ones((1, 3, 5, 5)).view(), &mut wrong)
            .is_err()
    );
    assert!(fast::CpuConv2d::new(spec, w.view(), None).is_err());
}

#[test]
fn max_pool_matches_reference() {
    let mut rng = common::rng(0xB00);
    let mut checked = 0;
    while checked < 120 {
        let shape = [
            rng.random_range(1..=3),
            rng.random_range(1..=9),
            rng.random_range(1..=30),
            rng.random_range(1..=30),
        ];
        let (kh, kw) = (rng.random_range(1..=4), rng.random_range(1..=4));
        let mut spec = MaxPool2d::caffe(1, 1).ceil_mode(rng.random_bool(0.5));
        spec.kernel = (kh, kw);
        spec.stride = (rng.random_range(1..=3), rng.random_range(1..=3));
        spec.padding = Padding::new(
            rng.random_range(0..kh),
            rng.random_range(0..kw),
            rng.random_range(0..kh),
            rng.random_range(0..kw),
        );
        let mut x = common::random4(&mut rng, shape);
        // A few NaNs: a window holding one must give NaN.
        for _ in 0..rng.random_range(0..3) {
            let idx = [
                rng.random_range(0..shape[0]),
                rng.random_range(0..shape[1]),
                rng.random_range(0..shape[2]),
                rng.random_range(0..shape[3]),
            ];
            x[idx] = f32::NAN;
        }
        let Ok(want) = reference::max_pool2d(x.view(), &spec) else {
            assert!(fast::max_pool2d(x.view(), &spec).is_err());
            continue;
        };
        let got = fast::max_pool2d(x.view(), &spec).unwrap();
        assert_eq!(got.dim(), want.dim());
        // Max pooling is exact: compare bit for bit, NaN positions included.
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{spec:?} on {shape:?}: {g} vs {w}"
            );
        }
        checked += 1;
    }
}

#[test]
fn relu_matches_reference() {
    let mut rng = common::rng(5);
    let mut x = common::random4(&mut rng, [2, 7, 33, 65]);
    x[[1, 3, 4, 5]] = f32::NAN;
    x[[0, 0, 0, 0]] = f32::NEG_INFINITY;
    let want = reference::relu(x.view());
    fast::relu_inplace(&mut x);
    assert_eq!(common::rel_error(x.view(), want.view()), 0.0);
    assert!(x[[1, 3, 4, 5]].is_nan());
    // A non-contiguous view goes through the general path.
    let mut y = common::random4(&mut rng, [1, 3, 8, 8]);
    y.swap_axes(2, 3);
    let want = reference::relu(y.view());
    fast::relu_inplace(&mut y);
    assert_eq!(common::rel_error(y.view(), want.view()), 0.0);
}

/// The first element where `got` differs from `want` (NaN matches NaN, infinities must be equal,
/// finite values within 1e-5 relative to max(|want|, 1)).
fn first_mismatch(got: &ndarray::Array4<f32>, want: &ndarray::Array4<f32>) -> Option<String> {
    got.indexed_iter()
        .zip(want.iter())
        .find_map(|((i, &a), &b)| {
            let same =
                (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-5 * b.abs().max(1.0);
            (!same).then(|| format!("at {i:?}: fast {a} vs reference {b}"))
        })
}

#[test]
fn softmax_and_deconvolution_match_the_reference() {
    use dilated::Deconv2d;
    use dilated::cpu::{fast, reference};
    for (i, shape) in [
        [1usize, 21, 33, 47],
        [2, 19, 16, 5],
        [1, 1, 1, 1],
        [1, 3, 70, 90],
    ]
    .into_iter()
    .enumerate()
    {
        let mut x = common::random4(&mut common::rng(500 + i as u64), shape).mapv(|v| v * 30.0);
        // Non-finite values propagate as in the reference.
        if shape[2] > 4 {
            x[[0, 0, 1, 1]] = f32::NAN;
            x[[0, shape[1] - 1, 2, 3]] = f32::INFINITY;
            x[[0, 0, 3, 2]] = f32::NEG_INFINITY;
        }
        let m = first_mismatch(&fast::softmax(x.view()), &reference::softmax(x.view()));
        assert!(m.is_none(), "softmax {shape:?} {m:?}");
        for (j, spec) in [
            Deconv2d::bilinear(shape[1], 8),
            Deconv2d {
                channels: shape[1],
                kernel: 5,
                stride: 3,
                pad: 1,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let w = common::random4(
                &mut common::rng(600 + 10 * i as u64 + j as u64),
                spec.weight_shape(),
            );
            let got = fast::deconv2d(x.view(), &spec, w.view()).unwrap();
            let want = reference::deconv2d(x.view(), &spec, w.view()).unwrap();
            let m = first_mismatch(&got, &want);
            assert!(m.is_none(), "deconv {spec:?} on {shape:?} {m:?}");
        }
    }
}
