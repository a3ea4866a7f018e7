//! The reduced-precision direct method (`ConvMethod::DirectBf16`) against the f64 reference:
//! computed on the same inputs and weights rounded to bf16, it must agree to f32 accumulation
//! (the kernel's only other rounding); against the unrounded reference the error is bf16's
//! (printed, bounded loosely). Random layers of every kernel, dilation, padding, stride, odd
//! and even channel counts, weight updates and non-finite inputs.

mod common;

use dilated::cpu::fast::{ConvMethod, CpuConv2d, CpuPrecision};
use dilated::cpu::reference;
use dilated::{Conv2d, Padding, Shape};
use ndarray::{Array1, Array4};
use rand::Rng;
use rand::rngs::StdRng;

/// Whether this CPU runs the bf16 method (AVX-512F and AVX-512 BF16); the tests check that it
/// refuses otherwise.
fn available() -> bool {
    let spec = Conv2d::new(1, 1, 3);
    let w = Array4::<f32>::zeros(spec.weight_shape());
    let b = Array1::<f32>::zeros(1);
    let made = CpuConv2d::with_method(spec, w.view(), Some(b.view()), ConvMethod::DirectBf16);
    let has = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16");
    if !has {
        let err = made.err().expect("bf16 accepted without AVX-512 BF16");
        assert!(err.to_string().contains("BF16"), "{err}");
        return false;
    }
    made.expect("bf16 with AVX-512 BF16").method() == ConvMethod::DirectBf16
}

/// `a` with every value rounded to the nearest bf16.
fn to_bf16<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> ndarray::Array<f32, D> {
    a.mapv(|v| half::bf16::from_f32(v).to_f32())
}

/// Runs `spec` with the bf16 method into a poisoned output; returns the relative errors
/// against the f64 reference on the bf16-rounded inputs and weights, and on the exact ones.
fn check(rng: &mut StdRng, spec: Conv2d, input: Shape) -> (f64, f64) {
    let x = common::random4(rng, input.dims());
    let w = common::random4(rng, spec.weight_shape());
    let b = spec.bias.then(|| common::random1(rng, spec.out_channels));
    let b = b.as_ref().map(|b| b.view());
    let layer = CpuConv2d::with_method(spec, w.view(), b, ConvMethod::DirectBf16).unwrap();
    assert_eq!(layer.method(), ConvMethod::DirectBf16);
    let os = layer.output_shape(input).unwrap();
    let mut out = Array4::from_elem(os.dims(), f32::NAN);
    layer.forward_into(x.view(), &mut out).unwrap();
    let (xr, wr) = (to_bf16(&x), to_bf16(&w));
    // The bias is added in f32, unrounded.
    let rounded = reference::conv2d(xr.view(), &spec, wr.view(), b).unwrap();
    let exact = reference::conv2d(x.view(), &spec, w.view(), b).unwrap();
    (
        common::rel_error(out.view(), rounded.view()),
        common::rel_error(out.view(), exact.view()),
    )
}

#[test]
fn random_layers_match_the_reference_on_rounded_values() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0xbf16);
    let mut worst = (0.0f64, 0.0f64);
    let mut ran = 0;
    for case in 0..80 {
        let n = rng.random_range(1..=3);
        // Odd counts leave the last channel pair half empty.
        let cin = rng.random_range(1..=37);
        let cout = rng.random_range(1..=40);
        let kh = rng.random_range(1..=7);
        let kw = if rng.random_bool(0.6) {
            kh
        } else {
            rng.random_range(1..=7)
        };
        let dh = rng.random_range(1..=8);
        let dw = rng.random_range(1..=8);
        let mut pad = |k: usize, d: usize| rng.random_range(0..=(k - 1) * d + 1);
        let padding = Padding::new(pad(kh, dh), pad(kh, dh), pad(kw, dw), pad(kw, dw));
        let spec = Conv2d::new(cin, cout, 3)
            .kernel(kh, kw)
            .dilation_hw(dh, dw)
            .padding(padding)
            .stride_hw(rng.random_range(1..=2), 1)
            .with_bias(rng.random_bool(0.7))
            .with_relu(rng.random_bool(0.5));
        let input = Shape::new(n, cin, rng.random_range(1..=40), rng.random_range(1..=40));
        if spec.output_shape(input, "test").is_err() {
            continue;
        }
        let (rounded, exact) = check(&mut rng, spec, input);
        assert!(
            rounded <= 1e-5,
            "case {case}: {spec:?} on {input}: error {rounded:e} against the rounded reference"
        );
        assert!(
            exact <= 2e-2,
            "case {case}: {spec:?} on {input}: error {exact:e} against the exact reference"
        );
        worst = (worst.0.max(rounded), worst.1.max(exact));
        ran += 1;
    }
    assert!(ran >= 40, "only {ran} valid layers");
    eprintln!(
        "{ran} layers: worst relative error {:.2e} (rounded reference), {:.2e} (exact)",
        worst.0, worst.1
    );
}

/// VGG-sized layers: hundreds of input channels, the error against the exact reference is
/// bf16's rounding of inputs and weights, not growing with the sum's length.
#[test]
fn wide_layers_have_bf16_error() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0xbf17);
    for (cin, cout, k, size, d) in [
        (256, 256, 3, 24, 1),
        (512, 512, 3, 20, 2),
        (512, 64, 7, 40, 4),
        (1024, 96, 1, 30, 1),
    ] {
        let spec = Conv2d::new(cin, cout, k)
            .dilation(d)
            .padding(Padding::uniform(if k == 7 { 0 } else { d * (k / 2) }))
            .with_relu(true);
        let (rounded, exact) = check(&mut rng, spec, Shape::new(1, cin, size, size));
        eprintln!(
            "{cin}->{cout} {k}x{k} d{d}: relative error {rounded:.2e} against the rounded \
             reference, {exact:.2e} against the exact one"
        );
        assert!(rounded <= 1e-5, "{cin}->{cout}: {rounded:e}");
        assert!(exact <= 1e-2, "{cin}->{cout}: {exact:e}");
    }
}

#[test]
fn new_weights_are_packed_again() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0xbf18);
    let spec = Conv2d::new(21, 30, 3)
        .dilation(2)
        .padding(Padding::uniform(2));
    let x = common::random4(&mut rng, [2, 21, 17, 19]);
    let (w0, b0) = (
        common::random4(&mut rng, spec.weight_shape()),
        common::random1(&mut rng, 30),
    );
    let (w1, b1) = (
        common::random4(&mut rng, spec.weight_shape()),
        common::random1(&mut rng, 30),
    );
    let mut layer =
        CpuConv2d::with_method(spec, w0.view(), Some(b0.view()), ConvMethod::DirectBf16).unwrap();
    layer.set_weights(w1.view(), Some(b1.view())).unwrap();
    let got = layer.forward(x.view()).unwrap();
    let want = reference::conv2d(
        to_bf16(&x).view(),
        &spec,
        to_bf16(&w1).view(),
        Some(b1.view()),
    )
    .unwrap();
    let e = common::rel_error(got.view(), want.view());
    assert!(e <= 1e-5, "error {e:e}");
}

/// NaN and infinity keep their places: bf16 has f32's exponent range and its NaN.
#[test]
fn non_finite_inputs_propagate_as_in_the_reference() {
    if !available() {
        return;
    }
    let mut rng = common::rng(0xbf19);
    let spec = Conv2d::new(9, 8, 3)
        .dilation(3)
        .padding(Padding::uniform(3));
    let mut x = common::random4(&mut rng, [1, 9, 20, 20]);
    x[[0, 2, 5, 5]] = f32::NAN;
    x[[0, 8, 12, 7]] = f32::INFINITY;
    let w = common::random4(&mut rng, spec.weight_shape());
    let b = common::random1(&mut rng, 8);
    let want = reference::conv2d(
        to_bf16(&x).view(),
        &spec,
        to_bf16(&w).view(),
        Some(b.view()),
    )
    .unwrap();
    let layer =
        CpuConv2d::with_method(spec, w.view(), Some(b.view()), ConvMethod::DirectBf16).unwrap();
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

#[test]
fn horizontal_stride_is_refused_with_a_reason() {
    if !available() {
        return;
    }
    let spec = Conv2d::new(4, 4, 3).stride_hw(1, 2);
    let w = Array4::<f32>::zeros(spec.weight_shape());
    let b = Array1::<f32>::zeros(4);
    let err = CpuConv2d::with_method(spec, w.view(), Some(b.view()), ConvMethod::DirectBf16)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("stride"), "{err}");
}

#[test]
fn precision_and_method_names_parse_and_print() {
    assert_eq!(
        "direct-bf16".parse::<ConvMethod>().unwrap(),
        ConvMethod::DirectBf16
    );
    assert_eq!(ConvMethod::DirectBf16.to_string(), "direct-bf16");
    for p in [CpuPrecision::F32, CpuPrecision::Bf16] {
        assert_eq!(p.to_string().parse::<CpuPrecision>().unwrap(), p);
    }
    assert!("f8".parse::<CpuPrecision>().is_err());
    assert_eq!(CpuPrecision::default(), CpuPrecision::F32);
}

/// A whole network at bf16: the plan puts the bf16 method where the policy says, its scores
/// stay within bf16's error of the f32 plan's (and differ from them: it did run in bf16), and
/// its weights take less memory.
#[test]
fn plans_run_in_bf16_where_asked() {
    use dilated::net::{Model, PresetOptions};
    use dilated::plan::CpuPlan;
    let net = Model::PascalVoc
        .build(&PresetOptions {
            width_divisor: 16,
            ..PresetOptions::default()
        })
        .unwrap();
    if !available() {
        let err = CpuPlan::with_precision(&net, CpuPrecision::Bf16)
            .err()
            .expect("bf16 plan without AVX-512 BF16");
        assert!(err.to_string().contains("BF16"), "{err}");
        return;
    }
    let f32_plan = CpuPlan::with_precision(&net, CpuPrecision::F32).unwrap();
    let bf16_plan = CpuPlan::with_precision(&net, CpuPrecision::Bf16).unwrap();
    for ((name, m32), (_, m16)) in f32_plan
        .conv_methods()
        .into_iter()
        .zip(bf16_plan.conv_methods())
    {
        let spec = match &net.layer(name).unwrap().op {
            dilated::net::Op::Conv { spec, .. } => *spec,
            _ => unreachable!(),
        };
        assert_eq!(
            m16,
            CpuConv2d::auto_for_precision(&spec, CpuPrecision::Bf16)
        );
        assert_eq!(m32, CpuConv2d::auto(&spec));
        // 3x3 layers on Winograd keep it; the others take bf16.
        let wino = matches!(m32, ConvMethod::Winograd(_)) && spec.kernel == (3, 3);
        assert_eq!(
            m16 == ConvMethod::DirectBf16,
            !wino,
            "{name}: {m32} / {m16}"
        );
    }
    assert!(bf16_plan.weight_bytes() < f32_plan.weight_bytes());
    let x = common::random4(&mut common::rng(0xbf1a), [1, 3, 452, 436]);
    // Before the final softmax: the scores themselves.
    let layers = net.layers().len() - 1;
    let a = f32_plan.forward_prefix(x.view(), layers).unwrap();
    let b = bf16_plan.forward_prefix(x.view(), layers).unwrap();
    let e = common::rel_error(b.view(), a.view());
    eprintln!("VOC widths / 16, 452x436: bf16 scores {e:.2e} from f32's");
    assert!(e > 1e-5 && e < 5e-2, "relative error {e:e}");
}
