//! The f16 variants of the forward kernels against the f64 CPU reference, and f16 plans
//! against f32 ones.
//!
//! An f16 kernel reads f16 inputs and weights, computes in f32 and rounds its output to f16.
//! So the reference runs on the inputs, weights and biases rounded to f16 (exactly what the
//! kernel reads), in f64: what remains is the f32 arithmetic (about 1e-6 relative) and the
//! rounding of the output to f16, at most 2^-11 (4.9e-4) of each value, hence of the largest
//! one. [`TOLERANCE`] is twice that bound. Kernels that store intermediate sums (the partial
//! sums of a split reduction, the running sum of input-channel chunks) round once more per
//! stored sum, and are checked to [`SPLIT_TOLERANCE`]. Outputs are poisoned with NaN first.

mod common;

use common::{F16Case, f16_conv_case, gpu, random1, random4, rel_error, rng, round1, round4};
use dilated::gpu::{GpuArgmax, GpuDeconv2d, GpuMaxPool2d, GpuRelu, GpuSoftmax, GpuZoom, Io};
use dilated::net::{Model, PresetOptions};
use dilated::plan::{GpuPlan, Plan, PlanOptions};
use dilated::{
    Conv2d, ConvAlgorithm, Deconv2d, Error, Gpu, GpuConv2d, GpuLayer, MaxPool2d, Precision, Shape,
    Zoom, cpu,
};
use ndarray::Array4;

/// Twice the f16 rounding of the output, relative to the largest output.
const TOLERANCE: f64 = 1e-3;
/// With intermediate sums stored as f16.
const SPLIT_TOLERANCE: f64 = 3e-3;

/// Runs `layer` on `x` (rounded to f16 on upload) into an f16 output poisoned with NaN; the
/// result widened to f32, and the kernels' dispatches checked to be f16 variants.
fn run_f16(gpu: &Gpu, layer: &dyn GpuLayer, x: &Array4<f32>) -> Array4<f32> {
    let input = gpu.upload_as(x.view(), Precision::F16).expect("upload");
    assert_eq!(input.precision(), Precision::F16);
    let out_shape = layer.output_shape(input.shape()).expect("output shape");
    let output = gpu
        .filled_as(out_shape, f32::NAN, Precision::F16)
        .expect("output");
    let dispatches = layer
        .prepare(gpu, &Io::tensors(&input, &output))
        .expect("prepare");
    assert!(!dispatches.is_empty());
    for d in &dispatches {
        assert_eq!(d.precision(), Precision::F16, "{:?}", d.kernel());
    }
    gpu.run(&dispatches).expect("run");
    gpu.download(&output).expect("download")
}

fn check(what: &str, got: &Array4<f32>, want: &Array4<f32>, tolerance: f64) {
    let err = rel_error(got.view(), want.view());
    eprintln!("{what}: relative error {err:e}");
    assert!(
        err <= tolerance,
        "{what}: relative error {err:e} > {tolerance:e}"
    );
}

/// Convolutions covering the forward kernels: 3x3 dilated with bias and ReLU, a 1x1
/// (pointwise), a strided one without bias, and an fc6-like deep reduction over one tile
/// (which the tiled kernel splits).
fn conv_cases() -> Vec<(Conv2d, Shape, f64)> {
    vec![
        (
            Conv2d::new(17, 40, 3).dilation(2).pad(2).with_relu(true),
            Shape::new(2, 17, 33, 37),
            TOLERANCE,
        ),
        (Conv2d::new(70, 33, 1), Shape::new(1, 70, 30, 29), TOLERANCE),
        (
            Conv2d::new(3, 65, 3).stride(2).pad(1).with_bias(false),
            Shape::new(1, 3, 45, 50),
            TOLERANCE,
        ),
        (
            Conv2d::new(64, 40, 7).dilation(2).with_relu(true),
            Shape::new(1, 64, 20, 18),
            SPLIT_TOLERANCE,
        ),
    ]
}

fn check_conv(gpu: &Gpu, algorithm: ConvAlgorithm) -> Vec<dilated::gpu::Kernel> {
    let mut r = rng(160);
    let mut kernels = Vec::new();
    for (i, (spec, shape, tolerance)) in conv_cases().into_iter().enumerate() {
        let F16Case {
            x,
            w,
            b,
            conv,
            input,
            output,
        } = f16_conv_case(gpu, &mut r, spec, shape);
        let conv = conv.with_algorithm(algorithm);
        assert_eq!(conv.precision(), Precision::F16);
        let dispatches = conv.prepare(gpu, &Io::tensors(&input, &output)).unwrap();
        kernels.extend(dispatches.iter().map(|d| d.kernel()));
        gpu.run(&dispatches).unwrap();
        let got = gpu.download(&output).unwrap();
        let want = cpu::reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view()))
            .unwrap();
        check(
            &format!("conv {i} {algorithm:?} {:?}", dispatches[0].kernel()),
            &got,
            &want,
            tolerance,
        );
    }
    kernels
}

#[test]
fn f16_direct_convolution_matches_the_reference() {
    let kernels = check_conv(gpu(), ConvAlgorithm::Direct);
    assert!(kernels.contains(&dilated::gpu::Kernel::ConvDirect));
}

#[test]
fn f16_tiled_pointwise_and_split_convolutions_match_the_reference() {
    use dilated::gpu::Kernel;
    let kernels = check_conv(gpu(), ConvAlgorithm::Tiled);
    for k in [
        Kernel::ConvTiled,
        Kernel::ConvPointwise,
        Kernel::ConvSplitReduce,
    ] {
        assert!(kernels.contains(&k), "{k:?} did not run: {kernels:?}");
    }
}

#[test]
fn f16_generated_tiled_variants_match_the_reference() {
    for v in dilated::gpu::TiledVariant::ALL {
        let kernels = check_conv(gpu(), ConvAlgorithm::TiledVariant(v));
        assert!(kernels.contains(&v.kernel()), "{v:?}: {kernels:?}");
    }
}

#[test]
fn f16_blocked_convolution_matches_the_reference() {
    let gpu = gpu();
    let kernels = check_conv(gpu, ConvAlgorithm::Blocked);
    if gpu.device().features().contains(wgpu::Features::SUBGROUP) {
        assert!(kernels.contains(&dilated::gpu::Kernel::ConvBlocked));
    }
}

#[test]
fn f16_wide_blocked_convolution_matches_the_reference() {
    let gpu = gpu();
    let kernels = check_conv(gpu, ConvAlgorithm::BlockedWide);
    if gpu.device().features().contains(wgpu::Features::SUBGROUP) {
        assert!(kernels.contains(&dilated::gpu::Kernel::ConvBlocked64));
    }
}

#[test]
fn f16_packed_blocked_convolution_matches_the_reference() {
    let gpu = gpu();
    let kernels = check_conv(gpu, ConvAlgorithm::BlockedPacked);
    if gpu.device().features().contains(wgpu::Features::SUBGROUP) {
        assert!(kernels.contains(&dilated::gpu::Kernel::ConvBlockedPacked));
        assert!(kernels.contains(&dilated::gpu::Kernel::ConvPackBlocked));
    }
}

/// A convolution cut into chunks of images, output channels and input channels (the last
/// accumulating into f16 outputs), on windows at odd f16 offsets, under a 64 KiB binding cap.
#[test]
fn f16_convolution_chunks_fit_small_bindings() {
    let mut capped = Gpu::with_options(&dilated::GpuOptions {
        cache_dir: None,
        ..dilated::GpuOptions::from_env()
    })
    .unwrap();
    common::check_adapter(&capped);
    capped.set_max_binding_bytes(Some(64 << 10)).unwrap();
    let mut r = rng(161);
    let spec = Conv2d::new(37, 29, 3).dilation(3).pad(3).with_relu(true);
    let shape = Shape::new(2, 37, 31, 27);
    let x = round4(&random4(&mut r, shape.dims()));
    let w = round4(&random4(&mut r, spec.weight_shape()));
    let b = round1(&random1(&mut r, 29));
    let want = cpu::reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
    for algorithm in [ConvAlgorithm::Direct, ConvAlgorithm::Tiled] {
        let conv =
            GpuConv2d::new_as(&capped, spec, w.view(), Some(b.view()), Precision::F16).unwrap();
        let got = run_f16(&capped, &conv.with_algorithm(algorithm), &x);
        check(
            &format!("chunked conv {algorithm:?}"),
            &got,
            &want,
            SPLIT_TOLERANCE,
        );
    }
    // ReLU and pooling over several windows of whole planes.
    let big = round4(&random4(&mut r, [2, 37, 41, 43]));
    check(
        "chunked relu",
        &run_f16(&capped, &GpuRelu, &big),
        &cpu::reference::relu(big.view()),
        0.0,
    );
    let pool = MaxPool2d::caffe(3, 2);
    check(
        "chunked max pool",
        &run_f16(&capped, &GpuMaxPool2d::new(pool), &big),
        &cpu::reference::max_pool2d(big.view(), &pool).unwrap(),
        0.0,
    );
}

#[test]
fn f16_relu_and_max_pool_are_exact() {
    let gpu = gpu();
    let mut r = rng(162);
    let x = round4(&random4(&mut r, [2, 5, 17, 23]));
    check(
        "relu",
        &run_f16(gpu, &GpuRelu, &x),
        &cpu::reference::relu(x.view()),
        0.0,
    );
    let pool = MaxPool2d::caffe(2, 2);
    check(
        "max pool",
        &run_f16(gpu, &GpuMaxPool2d::new(pool), &x),
        &cpu::reference::max_pool2d(x.view(), &pool).unwrap(),
        0.0,
    );
}

#[test]
fn f16_softmax_zoom_and_deconv_match_the_reference() {
    let gpu = gpu();
    let mut r = rng(163);
    let x = round4(&random4(&mut r, [2, 11, 13, 9]).mapv(|v| 4.0 * v));
    check(
        "softmax",
        &run_f16(gpu, &GpuSoftmax, &x),
        &cpu::reference::softmax(x.view()),
        TOLERANCE,
    );
    let zoom = Zoom { factor: 8 };
    check(
        "zoom",
        &run_f16(gpu, &GpuZoom::new(zoom), &x),
        &cpu::reference::zoom(x.view(), &zoom).unwrap(),
        TOLERANCE,
    );
    let spec = Deconv2d::bilinear(11, 8);
    let w = round4(&random4(&mut r, [11, 1, spec.kernel, spec.kernel]));
    let deconv = GpuDeconv2d::new_as(gpu, spec, w.view(), Precision::F16).unwrap();
    check(
        "deconv",
        &run_f16(gpu, &deconv, &x),
        &cpu::reference::deconv2d(x.view(), &spec, w.view()).unwrap(),
        TOLERANCE,
    );
}

#[test]
fn f16_argmax_matches_the_reference() {
    let gpu = gpu();
    let mut r = rng(164);
    let x = round4(&random4(&mut r, [2, 21, 15, 17]));
    let t = gpu.upload_as(x.view(), Precision::F16).unwrap();
    assert_eq!(gpu.argmax(&t).unwrap(), cpu::reference::argmax(x.view()));
    // The layer's own output: u32 labels in a tensor of 4-byte elements.
    let labels = GpuArgmax.forward(gpu, &t).unwrap();
    assert_eq!(labels.precision(), Precision::F32);
}

/// Weights of one precision on tensors of the other are refused, not misread.
#[test]
fn mixed_precisions_are_errors() {
    let gpu = gpu();
    let mut r = rng(165);
    let spec = Conv2d::new(3, 4, 3).pad(1);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, 4);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view())).unwrap();
    let x = gpu
        .upload_as(random4(&mut r, [1, 3, 8, 8]).view(), Precision::F16)
        .unwrap();
    let err = conv
        .forward(gpu, &x)
        .err()
        .expect("f32 weights on f16 tensors");
    assert!(matches!(err, Error::InvalidSpec { .. }), "{err:?}");
    let y = gpu.empty(Shape::new(1, 3, 8, 8)).unwrap();
    let mut out = gpu.empty(Shape::new(1, 3, 8, 8)).unwrap();
    assert!(GpuRelu.forward_into(gpu, &x, &mut out).is_err());
    assert!(GpuRelu.forward_into(gpu, &y, &mut out).is_ok());
}

/// A whole width-reduced network (its class scores, before the final softmax): the f16
/// plan's scores within 1% of the f32 plan's largest score, almost every pixel's label the same, about half the memory, and the memory estimate
/// as the plan reports it; the banded f16 plan agrees with the whole one.
#[test]
fn f16_plan_agrees_with_the_f32_plan() {
    let gpu = gpu();
    let net = common::scores_network(
        &Model::CamVid
            .build(&PresetOptions {
                width_divisor: 16,
                ..Default::default()
            })
            .unwrap(),
    );
    let shape = Shape::new(1, 3, 396, 412);
    let x = random4(&mut rng(166), shape.dims()).mapv(|v| 60.0 * v);
    let f32_plan = GpuPlan::new(gpu, &net, shape).unwrap();
    let options = PlanOptions {
        precision: Precision::F16,
        ..Default::default()
    };
    let f16_plan = Plan::new(gpu, &net, shape, &options).unwrap();
    assert_eq!(f16_plan.precision(), Precision::F16);
    let a = f32_plan.forward(x.view()).unwrap();
    let b = f16_plan.forward(x.view()).unwrap();
    let err = rel_error(b.view(), a.view());
    let la = cpu::reference::argmax(a.view());
    let lb = cpu::reference::argmax(b.view());
    let agree = la.iter().zip(&lb).filter(|(p, q)| p == q).count() as f64 / la.len() as f64;
    eprintln!(
        "f16 vs f32: relative error {err:e}, labels agree on {:.2}% of pixels; memory {} vs {}",
        100.0 * agree,
        f16_plan.peak_memory(),
        f32_plan.peak_memory()
    );
    assert!(err < 1e-2, "relative error {err:e}");
    assert!(agree > 0.97, "labels agree on {agree}");
    let ratio = f16_plan.peak_memory() as f64 / f32_plan.peak_memory() as f64;
    assert!((0.45..0.55).contains(&ratio), "memory ratio {ratio}");
    assert!(
        f16_plan.peak_memory() <= Plan::estimate_memory(&net, shape, &options).unwrap(),
        "the estimate bounds the plan"
    );
    let f32_estimate = Plan::estimate_memory(&net, shape, &PlanOptions::default()).unwrap();
    let f16_estimate = Plan::estimate_memory(&net, shape, &options).unwrap();
    assert!((0.45..0.55).contains(&(f16_estimate as f64 / f32_estimate as f64)));

    // Within a budget the whole f16 plan fits but the f32 one does not: no bands.
    let budget = PlanOptions {
        max_memory: Some(f16_estimate + 1024),
        ..options
    };
    assert!(
        Plan::new(gpu, &net, shape, &budget)
            .unwrap()
            .layout()
            .is_none()
    );
    // In bands (no split reductions there): the same labels, scores within f16 rounding.
    let banded_options = PlanOptions {
        max_memory: Some(f16_estimate * 2 / 3),
        ..options
    };
    let banded = Plan::new(gpu, &net, shape, &banded_options).unwrap();
    assert!(banded.layout().is_some(), "the budget makes bands");
    assert!(banded.peak_memory() <= f16_estimate * 2 / 3);
    let c = banded.forward(x.view()).unwrap();
    let err = rel_error(c.view(), b.view());
    assert!(err < 1e-2, "banded vs whole f16: {err:e}");
}

/// Every preset (widths / 32, class scores): f16 within 1% of f32's largest score, at least
/// 97% of the labels the same (Cityscapes' in-network deconvolution and the large context
/// module included).
#[test]
fn every_preset_agrees_between_f16_and_f32() {
    let gpu = gpu();
    let shape = Shape::new(1, 3, 404, 420);
    let x = random4(&mut rng(167), shape.dims()).mapv(|v| 60.0 * v);
    let options = PlanOptions {
        precision: Precision::F16,
        ..Default::default()
    };
    for model in Model::ALL {
        let net = common::scores_network(
            &model
                .build(&PresetOptions {
                    width_divisor: 32,
                    ..Default::default()
                })
                .unwrap(),
        );
        let a = GpuPlan::new(gpu, &net, shape)
            .unwrap()
            .forward(x.view())
            .unwrap();
        let b = Plan::new(gpu, &net, shape, &options)
            .unwrap()
            .forward(x.view())
            .unwrap();
        let err = rel_error(b.view(), a.view());
        let la = cpu::reference::argmax(a.view());
        let lb = cpu::reference::argmax(b.view());
        let agree = la.iter().zip(&lb).filter(|(p, q)| p == q).count() as f64 / la.len() as f64;
        eprintln!(
            "{}: relative error {err:e}, labels agree {agree}",
            model.name()
        );
        assert!(err < 1e-2, "{}: relative error {err:e}", model.name());
        assert!(agree > 0.97, "{}: labels agree on {agree}", model.name());
    }
}

/// Training is f32 only: asking for f16 is an error, not a silent f32 run.
#[test]
fn the_trainer_refuses_f16() {
    let gpu = gpu();
    let net = Model::CamVid
        .build(&PresetOptions {
            width_divisor: 16,
            ..Default::default()
        })
        .unwrap();
    let front = net.sub_network(0..2).unwrap();
    let options = PlanOptions {
        precision: Precision::F16,
        ..Default::default()
    };
    let err =
        dilated::plan::GpuTrainer::with_options(gpu, &front, Shape::new(1, 3, 64, 64), &options)
            .err()
            .expect("f16 training is refused");
    assert!(
        matches!(
            err,
            Error::UnsupportedPrecision {
                precision: "f16",
                ..
            }
        ),
        "{err:?}"
    );
}
