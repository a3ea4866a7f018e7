//! Kernels chosen by measurement and the files kept between runs: every timed candidate (so
//! whichever wins) stays within the tolerance every kernel is tested to against the f64
//! reference (poisoned outputs, seeded inputs); recorded choices and the pipeline cache are
//! found by a second `Gpu`; corrupt files are ignored and rewritten; a forced kernel overrides
//! a recorded one.

mod common;

use std::path::Path;

use common::{check_adapter, gpu, random1, random4, rel_error, rng};
use dilated::gpu::tune::{ChoiceSource, Tuning, geometry_key, measure_conv_alone};
use dilated::gpu::{GpuLayer, Io, Kernel};
use dilated::net::Network;
use dilated::plan::GpuPlan;
use dilated::{Conv2d, ConvAlgorithm, Gpu, GpuConv2d, GpuOptions, Shape, cpu};
use ndarray::Array4;

/// The tolerance of `tests/gpu_conv_kernels.rs`.
const TOLERANCE: f64 = 1e-5;

/// A `Gpu` keeping its files in `dir`.
fn gpu_in(dir: &Path) -> Gpu {
    let g = Gpu::with_options(&GpuOptions {
        cache_dir: Some(dir.to_path_buf()),
        ..GpuOptions::from_env()
    })
    .unwrap_or_else(|e| panic!("the GPU tests need an adapter: {e}"));
    check_adapter(&g);
    g
}

/// A small network of convolutions of different geometries (split reductions included).
fn network() -> Network {
    Network::builder("tuned", 8)
        .conv_he(
            "a",
            Conv2d::new(8, 40, 3).dilation(2).pad(2).with_relu(true),
            1,
        )
        .conv_he(
            "b",
            Conv2d::new(40, 40, 3).dilation(4).pad(4).with_relu(true),
            2,
        )
        .conv_he("c", Conv2d::new(40, 36, 7).dilation(2), 3)
        .conv_he("d", Conv2d::new(36, 5, 1), 4)
        .build()
        .unwrap()
}

const INPUT: Shape = Shape {
    n: 1,
    c: 8,
    h: 30,
    w: 27,
};

#[test]
fn every_timed_candidate_matches_the_reference() {
    let g = gpu();
    let cases = [
        (
            Conv2d::new(17, 40, 3).dilation(2).pad(2).with_relu(true),
            Shape::new(2, 17, 33, 37),
        ),
        (Conv2d::new(70, 33, 1), Shape::new(1, 70, 30, 29)),
        // A deep reduction over one tile, which the tiled kernel splits.
        (
            Conv2d::new(64, 40, 7).dilation(2).with_relu(true),
            Shape::new(1, 64, 20, 18),
        ),
        (
            Conv2d::new(24, 136, 3).dilation(3).pad(3).with_bias(false),
            Shape::new(1, 24, 19, 23),
        ),
    ];
    let mut r = rng(41);
    for (spec, shape) in cases {
        let x = random4(&mut r, shape.dims());
        let w = random4(&mut r, spec.weight_shape());
        let b = spec.bias.then(|| random1(&mut r, spec.out_channels));
        let reference =
            cpu::reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view()))
                .unwrap();
        let conv = GpuConv2d::new(g, spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
        let times = measure_conv_alone(g, &conv, shape, true).unwrap();
        assert!(!times.is_empty());
        assert!(times.iter().any(|t| t.runs > 0), "{spec:?}: nothing timed");
        let xg = g.upload(x.view()).unwrap();
        for t in &times {
            let nan = Array4::from_elem(reference.dim(), f32::NAN);
            let mut y = g.upload(nan.view()).unwrap();
            let dispatches = conv.prepare_as(g, &Io::tensors(&xg, &y), t.choice).unwrap();
            assert_eq!(dispatches[0].kernel(), t.kernel);
            g.run(&dispatches).unwrap();
            let got = g.download(&y).unwrap();
            let err = rel_error(got.view(), reference.view());
            assert!(err < TOLERANCE, "{spec:?} {:?}: error {err}", t.choice);
            // The winner, applied to the layer itself, runs the same.
            let tuned = GpuConv2d::new(g, spec, w.view(), b.as_ref().map(|b| b.view()))
                .unwrap()
                .with_choice(t.choice);
            tuned.forward_into(g, &xg, &mut y).unwrap();
            let err = rel_error(g.download(&y).unwrap().view(), reference.view());
            assert!(
                err < TOLERANCE,
                "{spec:?} {:?} as the layer's choice: {err}",
                t.choice
            );
        }
    }
}

#[test]
fn choices_and_pipelines_are_found_by_a_second_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let x = random4(&mut rng(5), INPUT.dims());
    let reference = common::reference_forward(&net, x.view());
    let (choices, file) = {
        let first = gpu_in(dir.path());
        let plan =
            GpuPlan::with_tuning(&first, &net, INPUT, ConvAlgorithm::Auto, Tuning::On).unwrap();
        let choices = plan.conv_choices().to_vec();
        assert_eq!(choices.len(), 4);
        for t in &choices {
            assert_eq!(t.source, ChoiceSource::Measured, "{}", t.layer);
            assert!(!t.candidates.is_empty(), "{}", t.layer);
            assert_eq!(
                t.choice, t.candidates[0].choice,
                "{}: the fastest wins",
                t.layer
            );
        }
        let err = rel_error(plan.forward(x.view()).unwrap().view(), reference.view());
        assert!(err < 1e-4, "tuned network: error {err}");
        let file = first.tuning_file().expect("a cache directory is set");
        assert!(file.exists(), "{}", file.display());
        if first.adapter().pipeline_cache {
            assert!(first.pipeline_cache().unwrap().path.exists());
        }
        (choices, file)
    };
    let second = gpu_in(dir.path());
    assert_eq!(second.tuning_file().as_ref(), Some(&file));
    if second.adapter().pipeline_cache {
        let info = second
            .pipeline_cache()
            .expect("the adapter offers a pipeline cache");
        assert!(
            info.loaded_bytes > 0,
            "the cached pipelines were not used: {info:?}"
        );
    } else {
        eprintln!("the adapter offers no pipeline cache; that half is not checked");
    }
    let plan = GpuPlan::new(&second, &net, INPUT).unwrap();
    for (t, before) in plan.conv_choices().iter().zip(&choices) {
        assert_eq!(t.source, ChoiceSource::Cached, "{}", t.layer);
        assert_eq!(t.choice, before.choice, "{}", t.layer);
        assert!(t.candidates.is_empty());
    }
    let err = rel_error(plan.forward(x.view()).unwrap().view(), reference.view());
    assert!(err < 1e-4, "network on recorded choices: error {err}");
    // Off ignores them; a forced kernel overrides them.
    let off = GpuPlan::with_tuning(&second, &net, INPUT, ConvAlgorithm::Auto, Tuning::Off).unwrap();
    assert!(
        off.conv_choices()
            .iter()
            .all(|t| t.source == ChoiceSource::Heuristic)
    );
    let forced =
        GpuPlan::with_tuning(&second, &net, INPUT, ConvAlgorithm::Direct, Tuning::On).unwrap();
    for t in forced.conv_choices() {
        assert_eq!(t.source, ChoiceSource::Forced, "{}", t.layer);
        assert_eq!(t.kernel, Kernel::ConvDirect, "{}", t.layer);
        assert!(t.candidates.is_empty());
    }
    for (_, kernels) in forced.layer_kernels() {
        assert!(
            kernels.iter().all(|&k| k == Kernel::ConvDirect),
            "{kernels:?}"
        );
    }
    let err = rel_error(forced.forward(x.view()).unwrap().view(), reference.view());
    assert!(err < 1e-4, "forced kernels: error {err}");
}

#[test]
fn corrupt_files_are_ignored_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let probe = gpu_in(dir.path());
    let tuning = probe.tuning_file().unwrap();
    let pipelines = probe.pipeline_cache().map(|p| p.path);
    drop(probe);
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(
        &tuning,
        b"{\"format\": \"dilated-conv-choices-1\", \"choices\": [1, 2",
    )
    .unwrap();
    if let Some(p) = &pipelines {
        std::fs::write(p, b"DILPIPE1 but not really a pipeline cache").unwrap();
    }
    {
        let g = gpu_in(dir.path());
        if let Some(info) = g.pipeline_cache() {
            assert_eq!(info.loaded_bytes, 0, "corrupt pipeline data was used");
        }
        // The corrupt choices are ignored: nothing recorded, so On measures every geometry.
        let plan = GpuPlan::with_tuning(&g, &net, INPUT, ConvAlgorithm::Auto, Tuning::On).unwrap();
        assert!(
            plan.conv_choices()
                .iter()
                .all(|t| t.source == ChoiceSource::Measured)
        );
    }
    let text = std::fs::read_to_string(&tuning).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("rewritten as JSON");
    let shapes = net.shapes(INPUT).unwrap();
    let first = &net.layers()[0];
    let dilated::net::Op::Conv { spec, .. } = &first.op else {
        panic!("a convolution first")
    };
    let key = geometry_key(spec, INPUT, true, dilated::Precision::F32);
    assert!(v["choices"][&key]["choice"].is_string(), "{text}");
    assert_eq!(shapes.len(), 4);
    // A stale file (another adapter's key) is ignored as well.
    std::fs::write(&tuning, text.replace("\"key\": \"", "\"key\": \"another ")).unwrap();
    let g = gpu_in(dir.path());
    if pipelines.is_some() {
        assert!(
            g.pipeline_cache().unwrap().loaded_bytes > 0,
            "the rewritten pipelines"
        );
    }
    let plan = GpuPlan::new(&g, &net, INPUT).unwrap();
    assert!(
        plan.conv_choices()
            .iter()
            .all(|t| t.source == ChoiceSource::Heuristic)
    );
}
