//! Networks: identity initialisation, presets on GPU vs CPU, plan reuse and memory, builder
//! errors, and the full-size presets' costs against the published numbers.

mod common;

use common::{gpu, random4, rel_error, rng};
use dilated::net::{ContextModule, ContextPadding, Model, Network, PresetOptions};
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
        assert_identity(&cpu, &x, 1e-6, &format!("{what} (CPU)"));
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

/// Scores agree within 1e-4 and label maps agree except where the top two scores tie.
fn compare_scores(gpu_out: &Array4<f32>, cpu_out: &Array4<f32>, what: &str) {
    let err = rel_error(gpu_out.view(), cpu_out.view());
    assert!(err <= 1e-4, "{what}: rel error {err:e}");
    let (n, c, h, w) = cpu_out.dim();
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                let argmax = |a: &Array4<f32>| {
                    (0..c)
                        .max_by(|&i, &j| a[[b, i, y, x]].total_cmp(&a[[b, j, y, x]]))
                        .unwrap()
                };
                let (g, k) = (argmax(gpu_out), argmax(cpu_out));
                if g != k {
                    let gap = (cpu_out[[b, g, y, x]] - cpu_out[[b, k, y, x]]).abs();
                    assert!(
                        gap <= 1e-4,
                        "{what}: labels {g} vs {k} at ({b},{y},{x}) differ by {gap}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_preset_agrees_between_gpu_and_cpu() {
    let gpu = gpu();
    for (i, model) in Model::ALL.into_iter().enumerate() {
        let net = model
            .build(&PresetOptions {
                width_divisor: 16,
                seed: 3 + i as u64,
                ..Default::default()
            })
            .unwrap();
        // The smallest useful input (373 px gives a single output pixel), non-square.
        let shape = Shape::new(1, 3, 397, 389);
        let x = random4(&mut rng(1300 + i as u64), shape.dims()).mapv(|v| v * 100.0);
        let cpu = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
        let plan = GpuPlan::new(gpu, &net, shape).unwrap();
        let mut out = plan.forward(x.view()).unwrap();
        // Softmax scores of a randomly initialised network saturate; compare the logits too.
        compare_scores(&out, &cpu, model.name());
        out.fill(f32::NAN);
        assert!(out.iter().all(|v| v.is_nan()));
        eprintln!("{}: output {}", model.name(), plan.output_shape());
    }
}

#[test]
fn plans_with_every_kernel_agree_with_the_cpu() {
    // Each convolution forced to one kernel. With the tiled kernel the deep layers of this
    // small input (conv4/conv5, fc6, fc7) have few output tiles and split their reductions,
    // sharing the plan's one scratch buffer.
    let gpu = gpu();
    let net = Model::PascalVoc
        .build(&PresetOptions {
            width_divisor: 16,
            seed: 21,
            ..Default::default()
        })
        .unwrap();
    let shape = Shape::new(1, 3, 405, 397);
    let x = random4(&mut rng(1350), shape.dims()).mapv(|v| v * 100.0);
    let cpu = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
    for algorithm in [
        ConvAlgorithm::Tiled,
        ConvAlgorithm::Direct,
        ConvAlgorithm::Blocked,
    ] {
        let plan = GpuPlan::with_algorithm(gpu, &net, shape, algorithm).unwrap();
        let out = plan.forward(x.view()).unwrap();
        compare_scores(&out, &cpu, &format!("{algorithm:?}"));
        if algorithm == ConvAlgorithm::Tiled {
            // The estimate with room for timestamp buffers.
            let estimate = Plan::estimate_memory(&net, shape, &PlanOptions::default()).unwrap();
            assert!(
                plan.peak_memory() <= estimate,
                "peak {} over the estimate {estimate}",
                plan.peak_memory()
            );
            let split = plan
                .layer_kernels()
                .iter()
                .filter(|(_, k)| k.contains(&dilated::gpu::Kernel::ConvSplitReduce))
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
        "peak {} vs activations {activations} + weights {}",
        plan.peak_memory(),
        plan.weight_bytes()
    );
    assert!(
        plan.peak_memory() - plan.weight_bytes() < activations,
        "activation memory is not reused"
    );
    // The device-free estimate (`dilated bench --plan-only`) counts the partial sums of the
    // reductions the tiled kernel splits: it is exact, timestamp buffers aside, for a plan of
    // tiled kernels, and an upper bound for any plan.
    let estimate = GpuPlan::estimate_memory(&net, shape).unwrap();
    let timestamps = 32 * net.layers().len() as u64;
    assert!(
        plan.peak_memory() <= estimate + timestamps,
        "plan {} vs estimate {estimate}",
        plan.peak_memory()
    );
    let tiled = GpuPlan::with_algorithm(gpu, &net, shape, ConvAlgorithm::Tiled).unwrap();
    assert!(
        tiled.peak_memory() >= estimate && tiled.peak_memory() - estimate <= timestamps,
        "tiled plan {} vs estimate {estimate}",
        tiled.peak_memory()
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
    assert_eq!(times.layers.len(), net.layers().len());
    assert_eq!(y, plan.forward(x.view()).unwrap());
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
