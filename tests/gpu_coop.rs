//! The cooperative-matrix convolutions (f16 operands, f32 accumulators; tensor cores on
//! NVIDIA and AMD) against the f64 CPU reference, on devices that offer square f16
//! cooperative matrices ([`Gpu::cooperative_matrix`]).
//!
//! Such a device is needed: the lavapipe of Mesa 26 (Debian unstable) offers 8x8x8 matrices,
//! those of Debian 12 (Mesa 22.3) and its backports (25.0) none; `tests/coop_lavapipe.sh`
//! runs this file on the former. Without one every test here fails when
//! `DILATED_TEST_COOP=1` and passes, saying it was skipped, otherwise. The reference runs on
//! the inputs, weights and biases rounded to f16 (what the kernel reads), so what remains is
//! the f32 accumulation and the rounding of the output to f16 (at most 2^-11 of each value):
//! [`TOLERANCE`], as for the other f16 kernels, and [`SPLIT_TOLERANCE`] where split
//! reductions store f16 partial sums. Outputs are poisoned with NaN first.

mod common;

use common::conv_configs::{CONFIGS, conv_config};
use common::{
    F16Case, assert_forced_kernels, assert_no_failures, f16_conv_case, gpu, random4, rel_error, rng,
};
use dilated::gpu::tune::Tuning;
use dilated::gpu::{ConvChoice, GpuLayer, Io, Kernel, shader};
use dilated::net::{Model, PresetOptions};
use dilated::plan::{CpuPlan, GpuPlan};
use dilated::{ConvAlgorithm, Gpu, Precision, Shape, cpu};

/// Twice the f16 rounding of the output, relative to the largest output.
const TOLERANCE: f64 = 1e-3;
/// With split reductions' partial sums stored as f16.
const SPLIT_TOLERANCE: f64 = 3e-3;

/// The device's cooperative-matrix side, or `None` after saying the test is skipped (a
/// failure instead when `DILATED_TEST_COOP=1`).
fn coop_gpu(test: &str) -> Option<&'static Gpu> {
    let gpu = gpu();
    match gpu.cooperative_matrix() {
        Some(_) => Some(gpu),
        None if std::env::var("DILATED_TEST_COOP").is_ok_and(|v| v == "1") => panic!(
            "{test}: DILATED_TEST_COOP=1 but {} runs no f16 cooperative matrices ({})",
            gpu.name(),
            gpu.cooperative_matrix_rejected()
                .unwrap_or("the adapter offers none")
        ),
        None => {
            eprintln!(
                "{test}: skipped: {} offers no f16 cooperative matrices",
                gpu.name()
            );
            None
        }
    }
}

/// Every configuration of `common::conv_configs` with `choice`; the kernels that ran.
fn check_choice(gpu: &Gpu, choice: ConvChoice) -> Vec<Kernel> {
    let mut r = rng(0xc00b);
    let mut kernels = Vec::new();
    let mut failures = Vec::new();
    for i in 0..CONFIGS {
        let (spec, shape) = conv_config(&mut r, i);
        let F16Case {
            x,
            w,
            b,
            conv,
            input,
            output,
        } = f16_conv_case(gpu, &mut r, spec, shape);
        let conv = conv.with_choice(choice);
        let dispatches = conv
            .prepare(gpu, &Io::tensors(&input, &output))
            .expect("prepare");
        let ran: Vec<Kernel> = dispatches.iter().map(|d| d.kernel()).collect();
        assert_forced_kernels(ConvAlgorithm::Coop, &ran, &format!("config {i}"));
        gpu.run(&dispatches).expect("run");
        let got = gpu.download(&output).expect("download");
        let want = cpu::reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view()))
            .expect("reference");
        let split = ran.contains(&Kernel::ConvSplitReduce);
        let tolerance = if split { SPLIT_TOLERANCE } else { TOLERANCE };
        let err = rel_error(got.view(), want.view());
        if err.is_nan() || err > tolerance {
            failures.push(format!(
                "config {i}: {spec:?} on {shape} with {ran:?}: relative error {err:e}"
            ));
        }
        kernels.extend(ran);
    }
    assert_no_failures(&failures, CONFIGS);
    kernels
}

#[test]
fn coop_convolution_matches_the_reference() {
    let Some(gpu) = coop_gpu("coop_convolution_matches_the_reference") else {
        return;
    };
    let side = gpu.cooperative_matrix().unwrap();
    let own = Kernel::coop_for(side).unwrap();
    for split in [false, true] {
        let kernels = check_choice(gpu, ConvChoice::new(ConvAlgorithm::Coop, split));
        assert!(kernels.contains(&own), "{kernels:?}");
        assert_eq!(
            kernels.contains(&Kernel::ConvSplitReduce),
            split,
            "split {split}: {kernels:?}"
        );
    }
}

/// With `DILATED_COOP_MAX_SUBGROUPS` set (as `tests/coop_lavapipe.sh` does in its second and
/// third runs), the kernels that ran above were built with that cap: fewer working subgroups
/// than the four groups of blocks, the rounds a device with subgroups of 64 or more runs.
/// The device's subgroups are narrow enough for the cap to bind.
#[test]
fn coop_subgroup_cap_is_in_effect() {
    let Some(gpu) = coop_gpu("coop_subgroup_cap_is_in_effect") else {
        return;
    };
    let Ok(value) = std::env::var("DILATED_COOP_MAX_SUBGROUPS") else {
        eprintln!("coop_subgroup_cap_is_in_effect: no cap asked for");
        return;
    };
    let cap: u32 = value.trim().parse().expect("DILATED_COOP_MAX_SUBGROUPS");
    assert_eq!(shader::coop_max_subgroups(), cap);
    let side = gpu.cooperative_matrix().unwrap();
    let source = Kernel::coop_for(side).unwrap().source_as(Precision::F16);
    assert!(
        source.contains(&format!("const COOP_MAX_SUBGROUPS: u32 = {cap}u;")),
        "{source}"
    );
    let subgroups = shader::WG_COOP / gpu.adapter().info.subgroup_max_size;
    assert!(
        cap < subgroups.min(4),
        "a cap of {cap} subgroups of the {subgroups} there are leaves no rounds"
    );
}

/// Split-K factors asked for: odd ones and more slices than the reduction has steps.
#[test]
fn coop_forced_split_factors_match_the_reference() {
    let Some(gpu) = coop_gpu("coop_forced_split_factors_match_the_reference") else {
        return;
    };
    for slices in [3, 200] {
        let choice = ConvChoice {
            slices,
            ..ConvChoice::new(ConvAlgorithm::Coop, true)
        };
        let kernels = check_choice(gpu, choice);
        assert!(kernels.contains(&Kernel::ConvSplitReduce), "{slices}");
    }
}

/// An f16 plan of a whole (narrowed) network on the cooperative-matrix kernels against the
/// f32 CPU plan: class scores within 1e-2 of the largest, labels all but the closest calls
/// agreeing. The f32 plan on the same device ignores them (its inputs would be rounded).
#[test]
fn coop_network_matches_the_cpu() {
    let Some(gpu) = coop_gpu("coop_network_matches_the_cpu") else {
        return;
    };
    let net = Model::Kitti
        .build(&PresetOptions {
            width_divisor: 8,
            ..Default::default()
        })
        .unwrap();
    let net = common::scores_network(&net);
    let shape = Shape::new(1, 3, 460, 484);
    let mut r = rng(0xc00c);
    let x = random4(&mut r, shape.dims()).mapv(|v| v * 100.0);
    let want = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
    let plan = GpuPlan::with_precision(
        gpu,
        &net,
        shape,
        ConvAlgorithm::Coop,
        Tuning::Off,
        Precision::F16,
    )
    .unwrap();
    let coop_layers = plan
        .layer_kernels()
        .iter()
        .filter(|(_, k)| k.iter().any(|k| k.coop_size().is_some()))
        .count();
    assert!(coop_layers >= 10, "{:?}", plan.layer_kernels());
    let got = plan.forward(x.view()).unwrap();
    let err = rel_error(got.view(), want.view());
    let labels = cpu::reference::argmax(got.view());
    let labels_want = cpu::reference::argmax(want.view());
    let same = labels
        .iter()
        .zip(&labels_want)
        .filter(|(a, b)| a == b)
        .count();
    let agree = same as f64 / labels_want.len() as f64;
    eprintln!("coop f16 network: relative error {err:e}, labels agree {agree}");
    assert!(err < 1e-2, "relative error {err:e}");
    assert!(agree > 0.99, "labels agree {agree}");

    let f32_plan = GpuPlan::with_algorithm(gpu, &net, shape, ConvAlgorithm::Coop).unwrap();
    assert!(
        f32_plan
            .layer_kernels()
            .iter()
            .all(|(_, k)| k.iter().all(|k| k.coop_size().is_none())),
        "{:?}",
        f32_plan.layer_kernels()
    );
}
