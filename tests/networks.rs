//! Networks: identity initialisation, presets on the GPU (every kernel) and the fast CPU path
//! against the f64 reference, plan reuse and memory, builder errors, and the full-size presets'
//! costs against the published numbers.

mod common;

use std::sync::OnceLock;

use common::{gpu, random4, rel_error, rng};
use dilated::cpu::fast::ConvMethod;
use dilated::cpu::reference;
use dilated::gpu::Kernel;
use dilated::net::{ContextModule, ContextPadding, Model, Network, Op, PresetOptions};
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::{Conv2d, ConvAlgorithm, Error, Plan, PlanOptions, Shape};
use ndarray::Array4;

/// Fails if any element differs from the input by more than `tol`.
fn assert_identity(got: &Array4<f32>, want: &Array4<f32>, tol: f32, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max deviation {worst:e}");
}

#[test]
fn identity_initialised_context_modules_pass_non_negative_input_through() {
    let gpu = gpu();
    let cases = [
        ("basic", ContextModule::basic(5)),
        ("large sigma 0", ContextModule::large(3).sigma(0.0, 1)),
        (
            "basic cityscapes dilations",
            ContextModule::basic(4).dilations(&[1, 1, 2, 4, 8, 16, 32, 64, 1]),
        ),
        (
            "large, VOC padding",
            ContextModule::large(2)
                .sigma(0.0, 1)
                .padding(ContextPadding::FirstLayer),
        ),
    ];
    for (i, (what, module)) in cases.into_iter().enumerate() {
        let net = module.build().unwrap();
        let shape = [1, module.classes, 23, 19];
        let x = random4(&mut rng(1100 + i as u64), shape).mapv(f32::abs);
        let cpu = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
        // The CPU runs the wider layers with Winograd, whose transformed weights (thirds,
        // fifteenths) are rounded to f32: the identity holds to a few ulps per layer there.
        assert_identity(&cpu, &x, 1e-5, &format!("{what} (CPU)"));
        let direct = CpuPlan::with_method(&net, Some(ConvMethod::Direct))
            .or_else(|_| CpuPlan::with_method(&net, Some(ConvMethod::Gemm)))
            .unwrap()
            .forward(x.view())
            .unwrap();
        assert_identity(&direct, &x, 1e-6, &format!("{what} (CPU, direct)"));
        let plan = GpuPlan::new(gpu, &net, Shape::from(shape)).unwrap();
        assert_identity(
            &plan.forward(x.view()).unwrap(),
            &x,
            1e-6,
            &format!("{what} (GPU)"),
        );
    }
}

#[test]
fn large_module_with_noise_is_no_longer_the_identity() {
    // The check above can fail: noise of sigma 0.01 changes the output.
    let net = ContextModule::large(3).sigma(0.01, 7).build().unwrap();
    let x = random4(&mut rng(1200), [1, 3, 16, 16]).mapv(f32::abs);
    let y = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
    let worst = y
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 1e-3, "noise had no effect ({worst:e})");
}

/// Relative error (of the largest reference value) allowed between a whole network's f32
/// scores and the f64 reference. Each convolution rounds its sums in f32, in an order that
/// differs between the GPU kernels, the fast CPU path and the reference: about
/// `sqrt(K) * 2^-24` relative to the layer's largest output for a reduction of `K` terms
/// (at most 6,048 here, the 3x3 layers of the large context module on 672 channels), so under
/// 5e-6 per layer. ReLU and max pooling do not amplify differences (both are 1-Lipschitz) and
/// He-initialised layers keep the activations' scale, so over the 23 to 26 convolutions of
/// these networks the errors add up to at most ~1e-4 if every layer erred in the same direction
/// at its worst. Observed on lavapipe: 1.3e-6 to 3.5e-6 for every kernel and the fast CPU path
/// (the tests print it), so 2e-5 leaves a margin of 5 for other adapters' rounding, while
/// scaling a quarter of the blocked kernel's outputs by 0.99999, or one of the tiled kernel's
/// 16 accumulators by 0.9999, exceeds it (5e-5 to 1e-4; checked by editing the shaders).
const SCORE_TOLERANCE: f64 = 2e-5;

/// The tolerance of probabilities (the softmax of `scores`) that follows from the score
/// tolerance: a row of the softmax's Jacobian, `diag(p) - p p^T`, sums in absolute value to
/// `2 p_k (1 - p_k) <= 1/2`, so a probability moves by at most half the largest score error,
/// `SCORE_TOLERANCE * max |score|`, plus the f32 softmax's own rounding (a few ulps of 1).
/// Loose (the scores of these random networks reach a few hundred, and saturate the softmax,
/// which is why the scores are compared on their own), but tight enough for a softmax that
/// normalises wrongly or misses a channel.
fn probability_tolerance(scores: &Array4<f32>) -> f64 {
    let max = scores.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    0.5 * SCORE_TOLERANCE * max + 1e-6
}

/// Fails unless `got` is within `tol` of the reference (NaN counts as a failure).
fn assert_close(got: &Array4<f32>, want: &Array4<f32>, tol: f64, what: &str) -> f64 {
    let err = rel_error(got.view(), want.view());
    assert!(err <= tol, "{what}: relative error {err:e} over {tol:e}");
    err
}

/// A width-reduced preset on a seeded input, with its f64 reference outputs.
struct PresetCase {
    net: Network,
    /// `net` without its final softmax.
    scores: Network,
    shape: Shape,
    input: Array4<f32>,
    /// The reference's scores (before the softmax) and probabilities (the network's output).
    want_scores: Array4<f32>,
    want: Array4<f32>,
}

/// The case of `model`, built once per test binary: the reference takes about 11 s for the
/// Pascal VOC preset (its large context module runs on 70 x 69 maps of up to 672 channels)
/// and 1 s for the others.
fn preset_case(model: Model) -> &'static PresetCase {
    static CASES: [OnceLock<PresetCase>; 4] = [const { OnceLock::new() }; 4];
    let i = Model::ALL.iter().position(|&m| m == model).unwrap();
    CASES[i].get_or_init(|| {
        let net = model
            .build(&PresetOptions {
                width_divisor: 16,
                seed: 3 + i as u64,
                ..Default::default()
            })
            .unwrap();
        let scores = common::scores_network(&net);
        assert_eq!(
            scores.layers().len() + 1,
            net.layers().len(),
            "ends in softmax"
        );
        // Near the smallest useful input (373 px gives a single output pixel), non-square:
        // 5 x 4 output pixels. Pixel-sized values, as the models take 0..255 less the mean.
        let shape = Shape::new(1, 3, 405, 397);
        let input = random4(&mut rng(1300 + i as u64), shape.dims()).mapv(|v| v * 100.0);
        let want_scores = common::reference_forward(&scores, input.view());
        let want = reference::softmax(want_scores.view());
        PresetCase {
            net,
            scores,
            shape,
            input,
            want_scores,
            want,
        }
    })
}

#[test]
fn every_preset_agrees_with_the_f64_reference() {
    let gpu = gpu();
    // Pascal VOC last: the test below computes its reference meanwhile.
    for model in Model::ALL.into_iter().rev() {
        let case = preset_case(model);
        let what = model.name();
        let x = case.input.view();
        // The scores, where a wrong kernel shows (the softmax squashes them).
        let plan = GpuPlan::new(gpu, &case.scores, case.shape).unwrap();
        let gpu_err = assert_close(
            &plan.forward(x).unwrap(),
            &case.want_scores,
            SCORE_TOLERANCE,
            &format!("{what}: GPU scores"),
        );
        let cpu = CpuPlan::new(&case.scores).unwrap().forward(x).unwrap();
        let cpu_err = assert_close(
            &cpu,
            &case.want_scores,
            SCORE_TOLERANCE,
            &format!("{what}: fast CPU scores"),
        );
        // The whole network, softmax included, on both paths.
        let plan = GpuPlan::new(gpu, &case.net, case.shape).unwrap();
        let tol = probability_tolerance(&case.want_scores);
        assert_close(
            &plan.forward(x).unwrap(),
            &case.want,
            tol,
            &format!("{what}: GPU probabilities"),
        );
        let cpu = CpuPlan::new(&case.net).unwrap().forward(x).unwrap();
        assert_close(
            &cpu,
            &case.want,
            tol,
            &format!("{what}: fast CPU probabilities"),
        );
        eprintln!(
            "{what}: output {}, score error GPU {gpu_err:.1e}, fast CPU {cpu_err:.1e}",
            plan.output_shape()
        );
    }
}

#[test]
fn plans_with_every_kernel_agree_with_the_f64_reference() {
    // Each convolution forced to one kernel, which must be the one that runs. With the tiled
    // kernel the deep layers of this small input (conv4/conv5, fc6, fc7) have few output tiles
    // and split their reductions, sharing the plan's one scratch buffer.
    let gpu = gpu();
    let case = preset_case(Model::PascalVoc);
    let net = &case.scores;
    let shape = case.shape;
    for algorithm in [
        ConvAlgorithm::Tiled,
        ConvAlgorithm::Direct,
        ConvAlgorithm::Blocked,
    ] {
        let plan = GpuPlan::with_algorithm(gpu, net, shape, algorithm).unwrap();
        let kernels = plan.layer_kernels();
        for (layer, (name, k)) in net.layers().iter().zip(&kernels) {
            assert_eq!(layer.name, *name);
            if matches!(layer.op, Op::Conv { .. }) {
                common::assert_forced_kernels(algorithm, k, name);
            }
        }
        let err = assert_close(
            &plan.forward(case.input.view()).unwrap(),
            &case.want_scores,
            SCORE_TOLERANCE,
            &format!("{algorithm:?}"),
        );
        eprintln!("{algorithm:?}: score error {err:.1e}");
        if algorithm == ConvAlgorithm::Tiled {
            // The estimate with room for timestamp buffers.
            let estimate = Plan::estimate_memory(net, shape, &PlanOptions::default()).unwrap();
            assert!(
                plan.peak_memory() <= estimate,
                "peak {} over the estimate {estimate}",
                plan.peak_memory()
            );
            let split = kernels
                .iter()
                .filter(|(_, k)| k.contains(&Kernel::ConvSplitReduce))
                .count();
            assert!(split >= 3, "{split} split reductions");
        }
    }
}

#[test]
fn plan_reuse_equals_fresh_plans_and_peak_memory_is_below_the_sum_of_activations() {
    let gpu = gpu();
    let net = Model::CamVid
        .build(&PresetOptions {
            width_divisor: 32,
            seed: 9,
            ..Default::default()
        })
        .unwrap();
    let shape = Shape::new(1, 3, 381, 390);
    let a = random4(&mut rng(1400), shape.dims()).mapv(|v| v * 50.0);
    let b = random4(&mut rng(1401), shape.dims()).mapv(|v| v * 50.0);
    let plan = GpuPlan::new(gpu, &net, shape).unwrap();
    let ya = plan.forward(a.view()).unwrap();
    let yb = plan.forward(b.view()).unwrap();
    assert_ne!(ya, yb, "different inputs gave the same output");
    assert_eq!(
        ya,
        GpuPlan::new(gpu, &net, shape)
            .unwrap()
            .forward(a.view())
            .unwrap()
    );
    assert_eq!(
        yb,
        GpuPlan::new(gpu, &net, shape)
            .unwrap()
            .forward(b.view())
            .unwrap()
    );
    let activations: u64 = net
        .report(shape)
        .unwrap()
        .iter()
        .map(|r| r.activation_bytes)
        .sum();
    assert!(
        plan.peak_memory() < activations + plan.weight_bytes(),
        "activation memory is not reused: peak {} vs activations {activations} + weights {}",
        plan.peak_memory(),
        plan.weight_bytes()
    );
    // The device-free estimate (`dilated bench --plan-only`) counts per layer the larger of
    // the partial sums of the reductions the tiled kernel splits and the packed weights of the
    // packed register-blocked kernel (`Auto`'s on lavapipe): an upper bound for any plan, and
    // exact, timestamp buffers aside, for whichever of the tiled plan and `Auto`'s holds more.
    let estimate = GpuPlan::estimate_memory(&net, shape).unwrap();
    let timestamps = 32 * net.layers().len() as u64;
    assert!(
        plan.peak_memory() <= estimate + timestamps,
        "plan {} vs estimate {estimate}",
        plan.peak_memory()
    );
    let tiled = GpuPlan::with_algorithm(gpu, &net, shape, ConvAlgorithm::Tiled).unwrap();
    let larger = tiled.peak_memory().max(plan.peak_memory());
    assert!(
        tiled.peak_memory() <= estimate + timestamps
            && larger >= estimate
            && larger - estimate <= timestamps,
        "tiled plan {}, plan {} vs estimate {estimate}",
        tiled.peak_memory(),
        plan.peak_memory()
    );
}

#[test]
fn profiled_forward_times_every_layer_and_matches() {
    let gpu = gpu();
    let net = ContextModule::basic(6).build().unwrap();
    let shape = Shape::new(2, 6, 20, 30);
    let x = random4(&mut rng(1500), shape.dims());
    let plan = GpuPlan::new(gpu, &net, shape).unwrap();
    let (y, times) = plan.forward_profiled(x.view()).unwrap();
    let names: Vec<&str> = times.layers.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = net.layers().iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, want);
    assert_eq!(y, plan.forward(x.view()).unwrap());
    let want = common::reference_forward(&net, x.view());
    assert_close(&y, &want, SCORE_TOLERANCE, "profiled");
}

#[test]
fn builder_errors_name_the_layer() {
    let w = Array4::<f32>::zeros((8, 4, 3, 3));
    let err = Network::builder("t", 3)
        .conv("first", Conv2d::new(4, 8, 3).with_bias(false), w, None)
        .build()
        .unwrap_err();
    match &err {
        Error::Layer { layer, reason } => {
            assert_eq!(layer, "first");
            assert!(reason.contains('4') && reason.contains('3'), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let net = Model::Kitti
        .build(&PresetOptions {
            width_divisor: 64,
            ..Default::default()
        })
        .unwrap();
    let err = net.shapes(Shape::new(1, 3, 300, 500)).unwrap_err();
    match &err {
        Error::Layer { layer, .. } => {
            assert!(layer.starts_with("conv") || layer == "fc6", "{layer}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("too small"), "{err}");
    let err = GpuPlan::new(gpu(), &net, Shape::new(1, 3, 100, 100))
        .err()
        .expect("too small");
    assert!(matches!(err, Error::Layer { .. }), "{err:?}");
    // A plane over the device's binding limit (capped at 4 KiB here) names its layer.
    let mut small = dilated::Gpu::new().unwrap();
    small.set_max_binding_bytes(Some(4096)).unwrap();
    let net = ContextModule::basic(2).build().unwrap();
    let err = GpuPlan::new(&small, &net, Shape::new(1, 2, 40, 40))
        .err()
        .expect("a 40x40 plane exceeds 4 KiB");
    match &err {
        Error::ExceedsDeviceLimits { what, .. } => {
            assert!(what.starts_with("layer "), "{what}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Full-size presets: parameters, GFLOP and largest activation against NETWORK.md.
#[test]
fn full_size_presets_match_the_published_costs() {
    // (model, GFLOP at deploy size, params in millions, largest activation MiB)
    let table = [
        (Model::PascalVoc, 1642.0, 141.2, 197.0),
        (Model::CamVid, 2107.0, 134.3, 241.0),
        (Model::Kitti, 3244.0, 134.3, 340.0),
        (Model::Cityscapes, 5295.0, 134.4, 474.0),
    ];
    for (model, gflop, mparams, mib) in table {
        // The published costs pad every context layer by its dilation.
        let same = Some(ContextPadding::Same);
        let net = model
            .build(&PresetOptions {
                context_padding: same,
                ..Default::default()
            })
            .unwrap();
        let (h, w) = model.info().input_size;
        let report = net.report(Shape::new(1, 3, h, w)).unwrap();
        let flops: u64 = report.iter().map(|r| r.flops).sum();
        let params = net.params() as f64 / 1e6;
        let largest =
            report.iter().map(|r| r.activation_bytes).max().unwrap() as f64 / (1 << 20) as f64;
        let g = flops as f64 / 1e9;
        assert!(
            (g - gflop).abs() / gflop < 0.005,
            "{}: {g:.1} GFLOP vs {gflop}",
            model.name()
        );
        assert!(
            (params - mparams).abs() < 0.06,
            "{}: {params:.3} M params vs {mparams}",
            model.name()
        );
        assert!(
            (largest - mib).abs() < 1.0,
            "{}: {largest:.1} MiB vs {mib}",
            model.name()
        );
    }
    let voc = Model::PascalVoc.build(&PresetOptions::default()).unwrap();
    // VGG-16's 13 convolutions, fc6, fc7, fc-final, then the large context module (C = 21).
    let vgg = 14_714_688;
    let fc = (4096 * 512 * 49 + 4096) + (4096 * 4096 + 4096) + (21 * 4096 + 21);
    let widths = [21usize, 42, 42, 84, 168, 336, 672, 672];
    let context: usize = (0..7)
        .map(|i| widths[i] * widths[i + 1] * 9 + widths[i + 1])
        .sum::<usize>()
        + 672 * 21
        + 21;
    assert_eq!(voc.params(), vgg + fc + context);
    // The VOC release pads its first context layer by 33 and the rest by 0, so the context
    // layers run on larger maps (130, 128, 124, 116, 100, 68, 66 px) than with "same" padding.
    let same = Model::PascalVoc
        .build(&PresetOptions {
            context_padding: Some(ContextPadding::Same),
            ..Default::default()
        })
        .unwrap();
    let total = |n: &Network| {
        n.report(Shape::new(1, 3, 900, 900))
            .unwrap()
            .iter()
            .map(|r| r.flops)
            .sum::<u64>()
    };
    let widths = widths.map(|w| w as u64);
    let release_sizes = [130u64, 128, 124, 116, 100, 68, 66];
    let extra: u64 = (0..7)
        .map(|i| 2 * 9 * widths[i] * widths[i + 1] * (release_sizes[i].pow(2) - 66 * 66))
        .sum();
    assert_eq!(total(&voc) - total(&same), extra);
    let fc6 = voc.layer("fc6").unwrap();
    assert_eq!(fc6.op.params(), 4096 * 512 * 49 + 4096);
}
