//! Memory budgets: networks run in horizontal bands give the whole-image result, on the f64
//! reference (bit for bit: each output is computed the same way whatever the input's height)
//! and on the GPU (against the unbudgeted plan, the f64 reference and the fast CPU path), stay
//! within the budget, and say why when the budget cannot be met.

mod common;

use common::{gpu, random4, reference_forward, rel_error, rng, scores_network};
use dilated::net::{FrontEnd, Model, Network, PresetOptions};
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::plan::{BandedLayout, Bands, Plan, PlanOptions};
use dilated::segment::{Backend, Segmenter};
use dilated::{Conv2d, Error, Shape};
use ndarray::{Array3, s};

const MIB: u64 = 1 << 20;

fn front_end(divisor: usize, seed: u64) -> Network {
    FrontEnd {
        classes: 5,
        width_divisor: divisor,
        final_layer: "final",
    }
    .build("front-end", seed)
    .unwrap()
}

fn cityscapes(divisor: usize) -> Network {
    Model::Cityscapes
        .build(&PresetOptions {
            width_divisor: divisor,
            seed: 3,
            ..Default::default()
        })
        .unwrap()
}

/// Image heights of several residues modulo 8 (the front-end's stride), so that the last band
/// ends on Caffe's partial pooling windows in some cases and not in others.
#[test]
fn front_end_in_bands_equals_the_whole_image_bit_for_bit_on_the_reference() {
    let net = front_end(64, 7);
    for (i, h) in [380usize, 397, 419].into_iter().enumerate() {
        let shape = Shape::new(1, 3, h, 376);
        let x = random4(&mut rng(9100 + i as u64), shape.dims());
        let whole = reference_forward(&net, x.view());
        for rows in [1, 2, 3] {
            let layout = Bands::with_rows(&net, shape, rows).unwrap();
            assert!(
                layout.bands.len() > 1 || layout.band_height == h,
                "height {h}, {rows} rows: {layout:?}"
            );
            let banded = layout
                .run(x.view(), |band| Ok(reference_forward(&net, band)))
                .unwrap();
            assert_eq!(banded.dim(), whole.dim());
            assert!(
                banded
                    .iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "height {h}, {rows} rows per band: {} bands differ from the whole image",
                layout.bands.len()
            );
        }
    }
}

/// The staged layout a budget chooses (a stage per pool, bands per stage) on the reference.
#[test]
fn budgeted_stages_equal_the_whole_image_bit_for_bit_on_the_reference() {
    let net = front_end(64, 8);
    let shape = Shape::new(1, 3, 421, 380);
    let x = random4(&mut rng(9200), shape.dims());
    let whole = reference_forward(&net, x.view());
    let unbudgeted = Plan::estimate_memory(&net, shape, &PlanOptions::default()).unwrap();
    let budget = unbudgeted / 4;
    let layout = BandedLayout::for_budget(&net, shape, budget)
        .unwrap()
        .expect("a quarter of the memory needs bands");
    assert!(layout.peak_memory <= budget);
    assert!(layout.stages.len() >= 4, "{}", layout.describe(&net));
    assert!(
        layout.stages.iter().any(|s| s.bands.bands.len() > 2),
        "{}",
        layout.describe(&net)
    );
    let mut y = x.clone();
    for stage in &layout.stages {
        let sub = net.sub_network(stage.layers.clone()).unwrap();
        y = stage
            .bands
            .run(y.view(), |band| Ok(reference_forward(&sub, band)))
            .unwrap();
    }
    assert_eq!(layout.rest_start, net.layers().len());
    assert_eq!(y.dim(), whole.dim());
    assert!(
        y.iter()
            .zip(&whole)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{}",
        layout.describe(&net)
    );
}

/// The Cityscapes model (front-end widths / 64) at its deploy size and at 1024 x 2048, under a
/// budget that forces bands in every stage, equals the unbudgeted run, and the plan holds no
/// more than the budget. Compared on the scores: the final softmax would hide differences.
#[test]
fn width_reduced_cityscapes_under_a_budget_equals_the_unbudgeted_run() {
    let gpu = gpu();
    let net = scores_network(&cityscapes(64));
    for (i, (h, w, budget)) in [(1396, 1396, 240 * MIB), (1024, 2048, 255 * MIB)]
        .into_iter()
        .enumerate()
    {
        let shape = Shape::new(1, 3, h, w);
        let x = random4(&mut rng(9300 + i as u64), shape.dims()).mapv(|v| 100.0 * v);
        let whole = GpuPlan::new(gpu, &net, shape).unwrap();
        assert!(whole.peak_memory() > budget);
        let want = whole.forward(x.view()).unwrap();
        drop(whole);
        let plan = Plan::new(gpu, &net, shape, &PlanOptions::with_max_memory(budget)).unwrap();
        let layout = plan.layout().expect("banded");
        assert!(
            plan.bands() >= 2 * layout.stages.len(),
            "{}",
            layout.describe(&net)
        );
        assert!(
            plan.peak_memory() <= layout.peak_memory && layout.peak_memory <= budget,
            "plan {} estimate {} budget {budget}",
            plan.peak_memory(),
            layout.peak_memory
        );
        let got = plan.forward(x.view()).unwrap();
        let err = rel_error(got.view(), want.view());
        let max_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{h}x{w}: {} bands over {} stages, peak {} bytes (budget {budget}); max |banded - whole| = {max_abs:e}, relative {err:e}",
            plan.bands(),
            layout.stages.len(),
            plan.peak_memory()
        );
        assert!(err <= 1e-6, "{h}x{w}: relative error {err:e}");
    }
}

/// A layer whose activation at full spatial size (64 x 1398 x 1398 floats, 477 MiB) exceeds a
/// 128 MiB storage binding: conv1_1 of the front-end (3 -> 64, 3x3) at 1400x1400, followed by
/// a cheap 1x1 (64 -> 8) so the output stays small. The unbudgeted plan holds the whole
/// activation and binds it in channel chunks; the budgeted plan processes it in bands. Both
/// match the fast CPU path everywhere and the f64 reference on the rows around every band
/// boundary and at the edges (the whole reference would take half a minute). (conv1_2, 64 -> 64
/// 3x3, would be ~144 GFLOP: too slow on lavapipe.)
#[test]
fn activation_larger_than_a_storage_binding_runs_whole_and_in_bands() {
    let gpu = gpu();
    let mut r = rng(9400);
    let c1 = Conv2d::new(3, 64, 3).with_relu(true);
    let c2 = Conv2d::new(64, 8, 1);
    let net = Network::builder("big activation", 3)
        .conv(
            "conv1_1",
            c1,
            random4(&mut r, c1.weight_shape()),
            Some(common::random1(&mut r, 64)),
        )
        .conv(
            "mix",
            c2,
            random4(&mut r, c2.weight_shape()).mapv(|v| v / 8.0),
            Some(common::random1(&mut r, 8)),
        )
        .build()
        .unwrap();
    let shape = Shape::new(1, 3, 1400, 1400);
    let activation = net.report(shape).unwrap()[0].activation_bytes;
    let binding = gpu.limits().max_storage_buffer_binding_size;
    eprintln!(
        "activation {} MiB, this adapter's storage binding limit {} MiB",
        activation / MIB,
        binding / MIB
    );
    let x = random4(&mut r, shape.dims());
    let cpu = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();

    let whole = GpuPlan::new(gpu, &net, shape).unwrap();
    // One dispatch per chunk of output channels that fits a binding (lavapipe: 4 or more).
    let dispatches = whole.layer_kernels()[0].1.len() as u64;
    assert!(
        dispatches >= activation.div_ceil(binding),
        "conv1_1: {dispatches} dispatches for {activation} bytes in bindings of {binding}"
    );
    let whole_out = whole.forward(x.view()).unwrap();
    drop(whole);
    let err = rel_error(whole_out.view(), cpu.view());
    assert!(err < 1e-4, "whole vs fast CPU: {err:e}");

    let budget = 256 * MIB;
    let plan = Plan::new(gpu, &net, shape, &PlanOptions::with_max_memory(budget)).unwrap();
    assert!(plan.bands() > 1);
    assert!(plan.peak_memory() <= budget);
    let banded_out = plan.forward(x.view()).unwrap();
    let err = rel_error(banded_out.view(), cpu.view());
    assert!(err < 1e-4, "banded vs fast CPU: {err:e}");

    // Output rows [a, b) of these two unpadded layers (3 rows tall, then 1) read input rows
    // [a, b + 2). A single 3x3 convolution (27 terms) and a 1x1 (64 terms): a few ulps apart.
    let layout = plan.layout().expect("banded");
    assert_eq!(layout.rest_start, net.layers().len());
    let out_h = cpu.dim().2;
    let mut windows = vec![0..4, out_h - 4..out_h];
    let last = layout.stages.last().unwrap();
    windows.extend(
        last.bands
            .bands
            .iter()
            .skip(1)
            .map(|b| b.rows.start - 2..b.rows.start + 2),
    );
    assert!(windows.len() >= 3, "{}", layout.describe(&net));
    for rows in windows {
        let band = x.slice(s![.., .., rows.start..rows.end + 2, ..]);
        let want = reference_forward(&net, band);
        for (what, got) in [
            ("whole", &whole_out),
            ("banded", &banded_out),
            ("fast CPU", &cpu),
        ] {
            let got = got.slice(s![.., .., rows.clone(), ..]);
            let err = rel_error(got, want.view());
            assert!(
                err < 1e-5,
                "{what}, rows {rows:?}: {err:e} from the reference"
            );
        }
    }
}

#[test]
fn profiled_banded_forward_times_every_layer_and_matches() {
    let gpu = gpu();
    let net = scores_network(&cityscapes(64));
    let shape = Shape::new(1, 3, 420, 400);
    let x = random4(&mut rng(9500), shape.dims()).mapv(|v| 100.0 * v);
    let whole = Plan::estimate_memory(&net, shape, &PlanOptions::default()).unwrap();
    let plan = Plan::new(gpu, &net, shape, &PlanOptions::with_max_memory(whole - 1)).unwrap();
    assert!(plan.bands() > 1);
    let (y, times) = plan.forward_profiled(x.view()).unwrap();
    let names: Vec<&str> = times.layers.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = net.layers().iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, want);
    assert_eq!(y, plan.forward(x.view()).unwrap());
    // The scores of the banded run against the f64 reference, within the tolerance of
    // `tests/networks.rs` (f32 rounding over the network's 24 convolutions).
    let err = rel_error(y.view(), reference_forward(&net, x.view()).view());
    assert!(err <= 2e-5, "banded scores vs the f64 reference: {err:e}");
}

/// The banded plan's futures (what a browser awaits) give what its blocking methods give,
/// and both the f64 reference's scores; the profiled future times every layer.
#[test]
fn banded_forward_async_equals_forward_and_the_reference() {
    let gpu = gpu();
    let net = scores_network(&cityscapes(64));
    let shape = Shape::new(1, 3, 404, 380);
    let x = random4(&mut rng(9550), shape.dims()).mapv(|v| 100.0 * v);
    let whole = Plan::estimate_memory(&net, shape, &PlanOptions::default()).unwrap();
    let plan = Plan::new(gpu, &net, shape, &PlanOptions::with_max_memory(whole / 2)).unwrap();
    let layout = plan.layout().expect("half the memory needs bands");
    assert!(layout.band_count() > 1, "{}", layout.describe(&net));
    assert!(
        layout.stages.iter().any(|s| s.bands.bands.len() > 1),
        "{}",
        layout.describe(&net)
    );
    let blocking = plan.forward(x.view()).unwrap();
    let awaited = pollster::block_on(plan.forward_async(x.view())).unwrap();
    assert_eq!(awaited, blocking);
    let (profiled, times) = pollster::block_on(plan.forward_profiled_async(x.view())).unwrap();
    assert_eq!(profiled, blocking);
    let names: Vec<&str> = times.layers.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = net.layers().iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, want);
    // Within the tolerance of the profiled banded run above.
    let reference = reference_forward(&net, x.view());
    for (what, got) in [("forward", &blocking), ("forward_async", &awaited)] {
        let err = rel_error(got.view(), reference.view());
        assert!(err <= 2e-5, "banded {what} vs the f64 reference: {err:e}");
    }
}

#[test]
fn budgets_that_cannot_be_met_say_why() {
    let net = cityscapes(8);
    let shape = Shape::new(1, 3, 1396, 1396);
    let weights: u64 = net.weight_set().unwrap().num_parameters() as u64 * 4;
    let err =
        Plan::estimate_memory(&net, shape, &PlanOptions::with_max_memory(weights / 2)).unwrap_err();
    let Error::MemoryBudget { needed, reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("weights"), "{err}");
    assert!(*needed > weights, "{err}");
    // Above the weights but below what one-row bands need: the error gives the least that
    // does, and that amount is accepted.
    let err = Plan::estimate_memory(&net, shape, &PlanOptions::with_max_memory(weights + MIB))
        .unwrap_err();
    let Error::MemoryBudget { needed, reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(!reason.contains("weights"), "{err}");
    let fits = Plan::estimate_memory(&net, shape, &PlanOptions::with_max_memory(*needed)).unwrap();
    assert!(fits <= *needed);
    // A generous budget changes nothing.
    let unbudgeted = Plan::estimate_memory(&net, shape, &PlanOptions::default()).unwrap();
    assert_eq!(
        BandedLayout::for_budget(&net, shape, unbudgeted).unwrap(),
        None
    );
}

#[test]
fn segmenter_under_a_budget_labels_like_the_unbudgeted_one() {
    let model = Model::Cityscapes;
    let net = cityscapes(64);
    let tile = Some((372 + 8 * 40, 372 + 8 * 40));
    let mut r = rng(9600);
    let image = Array3::from_shape_simple_fn((300, 400, 3), || {
        rand::Rng::random_range(&mut r, 0.0f32..255.0)
    });
    let free = Segmenter::new(model, &net, Backend::Gpu(gpu()), tile).unwrap();
    let budget = free.gpu_memory().unwrap() * 7 / 8;
    let tight = Segmenter::with_options(
        model,
        &net,
        Backend::Gpu(gpu()),
        tile,
        &PlanOptions::with_max_memory(budget),
    )
    .unwrap();
    assert!(tight.gpu_memory().unwrap() <= budget);
    let a = free.segment(image.view(), true, &mut |_, _| {}).unwrap();
    let b = tight.segment(image.view(), true, &mut |_, _| {}).unwrap();
    let (pa, pb) = (a.probabilities.unwrap(), b.probabilities.unwrap());
    let err = rel_error(
        pb.view().insert_axis(ndarray::Axis(0)),
        pa.view().insert_axis(ndarray::Axis(0)),
    );
    assert!(err <= 1e-6, "{err:e}");
    let same = a
        .labels
        .iter()
        .zip(&b.labels)
        .filter(|(x, y)| x == y)
        .count();
    assert!(
        same as f64 >= 0.999 * a.labels.len() as f64,
        "{same}/{}",
        a.labels.len()
    );
}

#[test]
fn bench_plan_only_prints_the_banded_peak() {
    let out = common::run_cli(
        &[
            "bench",
            "--plan-only",
            "--width-divisor",
            "8",
            "--max-memory",
            "250M",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("peak GPU memory of the banded plan"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let bytes: u64 = line
        .rsplit_once('(')
        .and_then(|(_, b)| b.split_whitespace().next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(bytes <= 250 * MIB, "{line}");
    let out = common::run_cli(&["bench", "--plan-only", "--max-memory", "12Q"], &[]);
    assert!(!out.status.success());
}
