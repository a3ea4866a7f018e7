//! Winograd F(2x2, 3x3) and F(4x4, 3x3) on the CPU against the f64 reference: seeded random
//! 3x3 stride-1 layers at every dilation, asymmetric padding and batch, VGG-sized channels,
//! weight updates, and NaN/infinity inputs (which take the direct method).

mod common;

use dilated::cpu::fast::{ConvMethod, CpuConv2d, WinogradTile};
use dilated::cpu::reference;
use dilated::{Conv2d, Padding, Shape};
use ndarray::Array4;
use rand::Rng;
use rand::rngs::StdRng;

const SCHEMES: [WinogradTile; 2] = [WinogradTile::F2, WinogradTile::F4];

/// Whether this CPU runs the Winograd method (AVX-512F); the tests check that it refuses
/// otherwise.
fn available() -> bool {
    let spec = Conv2d::new(1, 1, 3);
    let w = Array4::<f32>::zeros(spec.weight_shape());
    let b = ndarray::Array1::<f32>::zeros(1);
    let made = CpuConv2d::with_method(
        spec,
        w.view(),
        Some(b.view()),
        ConvMethod::Winograd(WinogradTile::F4),
    );
    if !std::arch::is_x86_feature_detected!("avx512f") {
        assert!(made.is_err(), "Winograd accepted without AVX-512F");
        return false;
    }
    made.expect("Winograd with AVX-512F").method() == ConvMethod::Winograd(WinogradTile::F4)
}

/// Runs `spec` on `input` with `scheme` into a poisoned output; returns the relative error
/// against the f64 reference.
fn check(rng: &mut StdRng, spec: Conv2d, input: Shape, scheme: WinogradTile) -> f64 {
    let x = common::random4(rng, input.dims());
    let w = common::random4(rng, spec.weight_shape());
    let b = spec.bias.then(|| common::random1(rng, spec.out_channels));
    let b = b.as_ref().map(|b| b.view());
    let want = reference::conv2d(x.view(), &spec, w.view(), b).unwrap();
    let layer = CpuConv2d::with_method(spec, w.view(), b, ConvMethod::Winograd(scheme)).unwrap();
    assert_eq!(layer.method(), ConvMethod::Winograd(scheme));
    let mut out = Array4::from_elem(want.dim(), f32::NAN);
    layer.forward_into(x.view(), &mut out).unwrap();
    common::rel_error(out.view(), want.view())
}

#[test]
fn random_dilated_layers_match_the_reference() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0x3a11);
    for case in 0..120 {
        let n = rng.random_range(1..=3);
        let cin = rng.random_range(1..=40);
        let cout = rng.random_range(1..=40);
        let dh = rng.random_range(1..=16);
        let dw = if rng.random_bool(0.5) {
            dh
        } else {
            rng.random_range(1..=16)
        };
        let mut pad = |d: usize| {
            if rng.random_bool(0.5) {
                d
            } else {
                rng.random_range(0..=2 * d)
            }
        };
        let padding = Padding::new(pad(dh), pad(dh), pad(dw), pad(dw));
        // Mostly 3x3; larger kernels go in 3x3 pieces, smaller ones in one.
        const KERNELS: [usize; 6] = [3, 3, 3, 2, 5, 7];
        let kh = KERNELS[rng.random_range(0..KERNELS.len())];
        let kw = if rng.random_bool(0.7) {
            kh
        } else {
            KERNELS[rng.random_range(0..KERNELS.len())]
        };
        let spec = Conv2d::new(cin, cout, 3)
            .kernel(kh, kw)
            .dilation_hw(dh, dw)
            .padding(padding)
            .with_bias(rng.random_bool(0.7))
            .with_relu(rng.random_bool(0.5));
        let h = rng.random_range(1..=45);
        let w = rng.random_range(1..=45);
        let input = Shape::new(n, cin, h, w);
        if spec.output_shape(input, "test").is_err() {
            continue;
        }
        for scheme in SCHEMES {
            let e = check(&mut rng, spec, input, scheme);
            assert!(
                e <= 1e-5,
                "case {case} {scheme:?}: {spec:?} on {input}: error {e:e}"
            );
        }
    }
}

/// The front-end's and context module's widths: the error stays within the per-layer
/// tolerance with hundreds of input channels.
#[test]
fn wide_layers_stay_within_the_tolerance() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0x3a12);
    for (cin, cout, size, d) in [(256, 256, 24, 1), (512, 512, 20, 2), (128, 336, 33, 4)] {
        let spec = Conv2d::new(cin, cout, 3)
            .dilation(d)
            .padding(Padding::uniform(d))
            .with_relu(true);
        for scheme in SCHEMES {
            let e = check(&mut rng, spec, Shape::new(1, cin, size, size), scheme);
            eprintln!("{cin}->{cout} 3x3 d{d} {scheme:?}: relative error {e:.2e}");
            assert!(e <= 1e-5, "{cin}->{cout} d{d} {scheme:?}: error {e:e}");
        }
    }
}

/// fc6's shape (7x7 at dilation 4, 512 input channels) in nine 3x3 pieces: 4608 rows in the
/// products, summed in runs of 512 (summed in one run, F(4x4, 3x3)'s error here was 1.4e-5).
#[test]
fn fc6_in_pieces_stays_within_the_tolerance() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0x3a15);
    let spec = Conv2d::new(512, 64, 7).dilation(4).with_relu(true);
    let input = Shape::new(1, 512, 40, 40);
    let e2 = check(&mut rng, spec, input, WinogradTile::F2);
    let e4 = check(&mut rng, spec, input, WinogradTile::F4);
    eprintln!("fc6-like 512->64 7x7 d4: F2 {e2:.2e}, F4 {e4:.2e}");
    assert!(e2 <= 1e-5, "F2 error {e2:e}");
    assert!(e4 <= 1e-5, "F4 error {e4:e}");
}

#[test]
fn new_weights_are_transformed_again() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0x3a13);
    let spec = Conv2d::new(20, 30, 3)
        .dilation(2)
        .padding(Padding::uniform(2));
    let x = common::random4(&mut rng, [2, 20, 17, 19]);
    let w0 = common::random4(&mut rng, spec.weight_shape());
    let b0 = common::random1(&mut rng, 30);
    let (w1, b1) = (
        common::random4(&mut rng, spec.weight_shape()),
        common::random1(&mut rng, 30),
    );
    for scheme in SCHEMES {
        let mut layer = CpuConv2d::with_method(
            spec,
            w0.view(),
            Some(b0.view()),
            ConvMethod::Winograd(scheme),
        )
        .unwrap();
        layer.set_weights(w1.view(), Some(b1.view())).unwrap();
        let got = layer.forward(x.view()).unwrap();
        let want = reference::conv2d(x.view(), &spec, w1.view(), Some(b1.view())).unwrap();
        let e = common::rel_error(got.view(), want.view());
        assert!(e <= 1e-5, "{scheme:?}: error {e:e}");
    }
}

/// A NaN or an infinity in the input would spread over a whole Winograd tile; such inputs
/// take the direct method and give the reference's NaN/infinity pattern exactly.
#[test]
fn non_finite_inputs_propagate_as_in_the_reference() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0x3a14);
    let spec = Conv2d::new(8, 8, 3)
        .dilation(3)
        .padding(Padding::uniform(3));
    let mut x = common::random4(&mut rng, [1, 8, 20, 20]);
    x[[0, 2, 5, 5]] = f32::NAN;
    x[[0, 4, 12, 7]] = f32::INFINITY;
    let w = common::random4(&mut rng, spec.weight_shape());
    let b = common::random1(&mut rng, 8);
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
    for scheme in SCHEMES {
        let layer =
            CpuConv2d::with_method(spec, w.view(), Some(b.view()), ConvMethod::Winograd(scheme))
                .unwrap();
        let got = layer.forward(x.view()).unwrap();
        let mut finite = 0;
        for (g, r) in got.iter().zip(want.iter()) {
            if r.is_finite() {
                assert!((g - r).abs() <= 1e-5 * r.abs().max(1.0), "{g} vs {r}");
                finite += 1;
            } else {
                assert!(
                    g.is_nan() == r.is_nan() && (r.is_nan() || g == r),
                    "{g} vs {r}"
                );
            }
        }
        assert!(finite > 0 && finite < got.len());
    }
}

#[test]
fn other_kernels_are_refused_with_a_reason() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return;
    }
    for (spec, why) in [
        (Conv2d::new(4, 4, 3).stride(2), "stride 1"),
        (Conv2d::new(4, 4, 5).stride_hw(1, 2), "stride 1"),
        (Conv2d::new(4, 4, 1), "1x1"),
    ] {
        let w = Array4::<f32>::zeros(spec.weight_shape());
        let b = ndarray::Array1::<f32>::zeros(4);
        let err = CpuConv2d::with_method(
            spec,
            w.view(),
            Some(b.view()),
            ConvMethod::Winograd(WinogradTile::F2),
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[test]
fn methods_parse_and_print() {
    for m in [
        ConvMethod::Gemm,
        ConvMethod::Direct,
        ConvMethod::Winograd(WinogradTile::F2),
        ConvMethod::Winograd(WinogradTile::F4),
    ] {
        assert_eq!(m.to_string().parse::<ConvMethod>().unwrap(), m);
    }
    assert!("winograd-f8".parse::<ConvMethod>().is_err());
}

/// A Winograd convolution followed by a 2x2, stride-2 max pool runs fused in a `CpuPlan` (the
/// pool's own time is then zero): the same values, bit for bit, as the convolution and the
/// pool run one after the other, on odd and even sizes (partial windows in ceil mode, dropped
/// rows in floor mode), batches and F(4x4, 3x3)'s partial tiles; inputs with a
/// NaN take the direct method and the pool runs on its own.
#[test]
fn pools_fused_into_winograd_match_the_separate_layers() {
    use dilated::MaxPool2d;
    use dilated::cpu::fast;
    use dilated::net::Network;
    use dilated::plan::CpuPlan;
    if !available() {
        return;
    }
    let mut rng = common::rng(0x3a16);
    for case in 0..12 {
        let (cin, cout) = (rng.random_range(32..=48), rng.random_range(32..=40));
        let conv = Conv2d::new(cin, cout, 3)
            .padding(Padding::uniform(rng.random_range(0..=1)))
            .with_relu(rng.random_bool(0.5));
        let pool = if case % 3 == 2 {
            MaxPool2d {
                ceil_mode: false,
                ..MaxPool2d::caffe(2, 2)
            }
        } else {
            MaxPool2d::caffe(2, 2)
        };
        let net = Network::builder("conv-pool", cin)
            .conv_he("conv", conv, case)
            .max_pool("pool", pool)
            .build()
            .unwrap();
        let plan = CpuPlan::new(&net).unwrap();
        let dilated::net::Op::Conv { weight, bias, .. } = &net.layers()[0].op else {
            unreachable!()
        };
        let layer = CpuConv2d::new(conv, weight.view(), bias.as_ref().map(|b| b.view())).unwrap();
        assert!(matches!(layer.method(), ConvMethod::Winograd(_)));
        let shape = [
            rng.random_range(1..=2),
            cin,
            // At least 24x24 outputs: enough tiles for Winograd.
            rng.random_range(26..=45),
            rng.random_range(26..=45),
        ];
        let mut x = common::random4(&mut rng, shape);
        for nan in [false, true] {
            if nan {
                x[[0, 1, 3, 4]] = f32::NAN;
            }
            let want = fast::max_pool2d(layer.forward(x.view()).unwrap().view(), &pool).unwrap();
            let (got, times) = plan.forward_profiled(x.view()).unwrap();
            assert_eq!(got.dim(), want.dim());
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "case {case} nan {nan}: {g} vs {w}"
                );
            }
            // Fused exactly when the input is finite.
            assert_eq!(times.layers[1].1.is_zero(), !nan, "case {case} nan {nan}");
        }
    }
}
