//! The real-GPU check `benches/gpu_check.sh` runs: adapter information; the GFLOP/s of every
//! convolution kernel, and of the kernels chosen by measurement in f32 and f16, on the shapes
//! of `benches/ops.rs`, each output checked against the CPU; the whole `dilation10_cityscapes`
//! network at 1396x1396 in f32 and f16, with the heuristic's kernels and with kernels chosen
//! by measurement, each output compared with the CPU plan's (relative error, label agreement);
//! beside them, when given, the cuDNN figures of `benches/cudnn_reference.py --json` from the
//! same machine. Prints a table and writes JSON and Markdown, rewritten after every shape and
//! network run so that a run cut short still leaves what it measured.
//!
//! The CPU side of each check is the crate's fast CPU path (which the test suite checks
//! against the f64 reference): a wrong kernel on a real driver shows as a relative error far
//! above [`F32_TOLERANCE`] / [`F16_TOLERANCE`], a cell marked `WRONG`, and exit status 3
//! once everything has been measured and written.
//!
//!     cargo run --release --example gpu_check -- [--small] [--allow-cpu]
//!         [--cudnn cudnn.json] [--fp32-peak-tflops T]
//!         [--json benches/gpu_check.json] [--md benches/gpu_check.md]
//!
//! Last comes a table of the targets the real-GPU figures are held to, each with what was
//! measured and whether it was met: the tuned f32 kernel at 50% or more of the card's fp32
//! peak, and within 1.5x cuDNN's fp32 time, on the fc6-like layer and conv3x3 512->512; the
//! whole network in 150 ms (f32) and 80 ms (f16); and tuning it in under half a forward pass.
//! The peak comes from `--fp32-peak-tflops` or from the cuDNN file (`fp32_peak`, which
//! `cudnn_reference.py` works out from the SM count, the FP32 lanes per SM and the highest SM
//! clock); with `--small` the sizes are not the targets' and nothing is judged.
//!
//! `--small` (or `DILATED_CHECK_SMALL=1`) divides channels by 4 and sizes by 2, and runs the
//! network with widths / 8 at 420x420: minutes on a software adapter. The full sizes are
//! refused on an adapter that runs shaders on the CPU (such as lavapipe, where one f32 pass
//! of the full-size network alone takes minutes) unless `--allow-cpu` is given. Kernel
//! choices are measured into a fresh temporary cache directory, so earlier runs do not count.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dilated::gpu::tune::{CandidateTime, Tuning, measure_conv_alone, time_dispatches};
use dilated::gpu::{ConvChoice, GpuTensor, Io, Kernel};
use dilated::net::{Model, PresetOptions};
use dilated::plan::{CpuPlan, GpuPlan};
use dilated::{Conv2d, ConvAlgorithm, Gpu, GpuConv2d, GpuOptions, Precision, Shape};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Timed runs per kernel and shape (after a warm-up).
const RUNS: usize = 5;

/// Largest relative error (`max |gpu - cpu| / max |cpu|`) an f32 kernel may show against the
/// CPU before it is marked wrong: f32 sums in another order differ by far less, a kernel
/// that computes the wrong thing by far more.
const F32_TOLERANCE: f64 = 1e-4;

/// The same for f16 storage (inputs, weights and outputs each rounded to 11 significant bits).
const F16_TOLERANCE: f64 = 1e-2;

/// The same for whole networks' outputs (class probabilities after 20+ layers).
const NETWORK_F32_TOLERANCE: f64 = 1e-3;
const NETWORK_F16_TOLERANCE: f64 = 5e-2;

struct Args {
    small: bool,
    allow_cpu: bool,
    peak_tflops: Option<f64>,
    cudnn: Option<PathBuf>,
    json: Option<PathBuf>,
    md: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        small: std::env::var("DILATED_CHECK_SMALL").is_ok_and(|v| v == "1"),
        allow_cpu: false,
        peak_tflops: None,
        cudnn: None,
        json: None,
        md: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut path = || {
            it.next()
                .map(PathBuf::from)
                .ok_or(format!("{arg} needs a path"))
        };
        match arg.as_str() {
            "--small" => a.small = true,
            "--allow-cpu" => a.allow_cpu = true,
            "--fp32-peak-tflops" => {
                let v = it.next().ok_or("--fp32-peak-tflops needs a number")?;
                a.peak_tflops = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|t| *t > 0.0 && t.is_finite())
                        .ok_or(format!(
                            "--fp32-peak-tflops: {v:?} is not a positive number"
                        ))?,
                );
            }
            "--cudnn" => a.cudnn = Some(path()?),
            "--json" => a.json = Some(path()?),
            "--md" => a.md = Some(path()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// The shapes of `benches/ops.rs` this check times: (name, spec, input).
fn shapes(small: bool) -> Vec<(&'static str, Conv2d, Shape)> {
    let (c, s) = if small { (4, 2) } else { (1, 1) };
    let conv3 = |d| Conv2d::new(256 / c, 256 / c, 3).dilation(d).pad(d);
    vec![
        (
            "conv3x3_256_d1",
            conv3(1),
            Shape::new(1, 256 / c, 64 / s, 64 / s),
        ),
        (
            "conv3x3_256_d4",
            conv3(4),
            Shape::new(1, 256 / c, 64 / s, 64 / s),
        ),
        (
            "conv3x3_256_d16",
            conv3(16),
            Shape::new(1, 256 / c, 64 / s, 64 / s),
        ),
        (
            "conv1x1_1024",
            Conv2d::new(1024 / c, 1024 / c, 1),
            Shape::new(1, 1024 / c, 64 / s, 64 / s),
        ),
        (
            "fc6_7x7_d4_512_1024",
            Conv2d::new(512 / c, 1024 / c, 7).dilation(4),
            Shape::new(1, 512 / c, 24 + 32 / s, 24 + 32 / s),
        ),
        (
            "conv3x3_512_d2",
            Conv2d::new(512 / c, 512 / c, 3).dilation(2).pad(2),
            Shape::new(1, 512 / c, 64 / s, 64 / s),
        ),
    ]
}

/// The kernels timed on every shape (a choice the device cannot run falls back, see
/// `GpuConv2d::with_algorithm`; the table names the kernel that ran): the fixed kernels, then
/// every generated tiled variant.
fn choices() -> Vec<&'static str> {
    let mut v = vec![
        "auto",
        "direct",
        "tiled",
        "tiled-nosplit",
        "blocked",
        "blocked-64",
        "blocked-packed",
        "tiled-split4",
    ];
    v.extend(dilated::gpu::TiledVariant::ALL.map(|t| t.name()));
    v
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gflops(flops: u64, t: Duration) -> f64 {
    flops as f64 / 1e9 / t.as_secs_f64().max(1e-12)
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("gpu_check: some outputs disagree with the CPU (cells marked WRONG)");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("gpu_check: {e}");
            std::process::exit(1);
        }
    }
}

/// `max |a - b| / max |b|`, NaN in either (an unwritten, poisoned element) counting as
/// infinite.
fn rel_error(a: &Array4<f32>, reference: &Array4<f32>) -> f64 {
    if a.dim() != reference.dim() {
        return f64::INFINITY;
    }
    let (mut diff, mut max_ref) = (0f64, 0f64);
    for (&x, &r) in a.iter().zip(reference) {
        if x.is_nan() || r.is_nan() {
            return f64::INFINITY;
        }
        diff = diff.max((x as f64 - r as f64).abs());
        max_ref = max_ref.max((r as f64).abs());
    }
    if max_ref == 0.0 {
        if diff == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        diff / max_ref
    }
}

/// The share of pixels whose highest-scoring class (first on ties) is the same in both.
fn label_agreement(a: &Array4<f32>, reference: &Array4<f32>) -> f64 {
    let labels = dilated::cpu::reference::argmax(a.view());
    let labels_ref = dilated::cpu::reference::argmax(reference.view());
    let same = labels
        .iter()
        .zip(&labels_ref)
        .filter(|(a, b)| a == b)
        .count();
    same as f64 / labels_ref.len().max(1) as f64
}

/// `" WRONG"` when `err` is above `tolerance` (or not a number).
fn mark(err: f64, tolerance: f64) -> &'static str {
    if err <= tolerance { "" } else { " WRONG" }
}

/// Runs `dispatches` once into `output`, poisoned with NaN first, and returns what they wrote.
fn run_poisoned(
    gpu: &Gpu,
    dispatches: &[dilated::gpu::Dispatch],
    output: &GpuTensor,
) -> Result<Array4<f32>, Box<dyn std::error::Error>> {
    let shape = output.shape();
    gpu.write_tensor(output, Array4::from_elem(shape.dims(), f32::NAN).view())?;
    gpu.run(dispatches)?;
    Ok(gpu.download(output)?)
}

/// What the check has found so far, written out after every shape and network run.
struct Report {
    json: Option<PathBuf>,
    md_path: Option<PathBuf>,
    adapter: Value,
    small: bool,
    header: String,
    shape_rows: Vec<Value>,
    shape_md: String,
    network: Value,
    network_rows: Vec<Value>,
    network_md: String,
    cudnn: Option<Value>,
    /// The card's fp32 peak in TFLOP/s, where known.
    peak_tflops: Option<f64>,
    all_correct: bool,
}

/// Whether a target was met, or why it cannot be judged.
fn verdict(small: bool, met: Option<bool>, unknown: &str) -> String {
    match (small, met) {
        (true, _) => "not judged (`--small` sizes)".into(),
        (false, Some(true)) => "**met**".into(),
        (false, Some(false)) => "**missed**".into(),
        (false, None) => format!("unknown ({unknown})"),
    }
}

impl Report {
    /// The targets table (Markdown) and its rows (JSON), from what has been measured so far.
    fn targets(&self) -> (String, Vec<Value>) {
        let mut rows = Vec::new();
        let mut md =
            String::from("\n## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
        let mut push = |target: String, measured: String, met: Option<bool>, unknown: &str| {
            let v = verdict(self.small, met, unknown);
            md.push_str(&format!("| {target} | {measured} | {v} |\n"));
            rows.push(json!({"target": target, "measured": measured, "met": met,
                             "judged": !self.small && met.is_some()}));
        };
        for shape in ["fc6_7x7_d4_512_1024", "conv3x3_512_d2"] {
            let Some(row) = self.shape_rows.iter().find(|r| r["shape"] == shape) else {
                continue;
            };
            let (gf, ms) = (row["tuned"]["gflops"].as_f64(), row["tuned"]["ms"].as_f64());
            let (Some(gf), Some(ms)) = (gf, ms) else {
                continue;
            };
            match self.peak_tflops {
                Some(peak) => push(
                    format!("{shape}: tuned f32 at >= 50% of the fp32 peak"),
                    format!(
                        "{gf:.0} GFLOP/s, {:.1}% of {peak:.1} TFLOP/s",
                        gf / peak / 10.0
                    ),
                    Some(gf >= 500.0 * peak),
                    "",
                ),
                None => push(
                    format!("{shape}: tuned f32 at >= 50% of the fp32 peak"),
                    format!("{gf:.0} GFLOP/s"),
                    None,
                    "fp32 peak not known: `--fp32-peak-tflops`",
                ),
            }
            match row["cudnn"]["fp32_ms"].as_f64() {
                Some(cd) => push(
                    format!("{shape}: tuned f32 within 1.5x cuDNN fp32 (TF32 off)"),
                    format!("{ms:.3} ms vs {cd:.3} ms: {:.2}x", ms / cd),
                    Some(ms <= 1.5 * cd),
                    "",
                ),
                None => push(
                    format!("{shape}: tuned f32 within 1.5x cuDNN fp32 (TF32 off)"),
                    format!("{ms:.3} ms"),
                    None,
                    "no cuDNN figure",
                ),
            }
        }
        let runs = |precision: &str| -> Vec<&Value> {
            self.network_rows
                .iter()
                .filter(|r| r["precision"] == precision && r["forward_ms"].is_number())
                .collect()
        };
        for (precision, limit) in [("f32", 150.0), ("f16", 80.0)] {
            let rows_p = runs(precision);
            let best = rows_p
                .iter()
                .filter_map(|r| Some((r["forward_ms"].as_f64()?, r["kernels"].as_str()?)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((ms, kernels)) = best {
                push(
                    format!(
                        "whole `dilation10_cityscapes` at 1396x1396 in <= {limit:.0} ms, \
                         {precision} (upload and read-back included)"
                    ),
                    format!("{ms:.1} ms ({kernels} kernels)"),
                    Some(ms <= limit),
                    "",
                );
            }
            let plan = |kernels: &str| {
                rows_p
                    .iter()
                    .find(|r| r["kernels"] == kernels)
                    .and_then(|r| Some((r["plan_build_ms"].as_f64()?, r["forward_ms"].as_f64()?)))
            };
            if let (Some((heuristic_build, _)), Some((tuned_build, tuned_forward))) =
                (plan("heuristic"), plan("tuned"))
            {
                let passes = (tuned_build - heuristic_build).max(0.0) / tuned_forward;
                push(
                    format!(
                        "tuning the whole network ({precision}) in a small fraction of a forward \
                         pass (read here as under half a pass)"
                    ),
                    format!(
                        "{:.0} ms more to build than the heuristic's plan: {passes:.1} passes",
                        tuned_build - heuristic_build
                    ),
                    Some(passes < 0.5),
                    "",
                );
            }
        }
        (md, rows)
    }

    /// Writes the JSON and Markdown files (`complete`: whether every section has run).
    fn save(&self, complete: bool) -> Result<(), Box<dyn std::error::Error>> {
        let (targets_md, targets_json) = self.targets();
        let report = json!({
            "adapter": self.adapter, "small": self.small, "runs": RUNS, "complete": complete,
            "all_outputs_match_cpu": self.all_correct,
            "tolerances": {"f32": F32_TOLERANCE, "f16": F16_TOLERANCE,
                           "network_f32": NETWORK_F32_TOLERANCE,
                           "network_f16": NETWORK_F16_TOLERANCE},
            "shapes": self.shape_rows,
            "network": {"runs": self.network_rows, "about": self.network},
            "cudnn": self.cudnn,
            "fp32_peak_tflops": self.peak_tflops,
            "targets": targets_json,
        });
        if let Some(p) = &self.json {
            dilated::io::write_file(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
        }
        if let Some(p) = &self.md_path {
            let mut md = self.header.clone();
            md.push_str(&self.shape_md);
            md.push_str(&self.network_md);
            md.push_str(&targets_md);
            if !complete {
                md.push_str("\n**Incomplete: the check stopped before the sections above were all written.**\n");
            }
            dilated::io::write_file(p, md.as_bytes())?;
        }
        Ok(())
    }
}

/// Returns whether every output matched the CPU.
fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let cache = tempfile::tempdir()?;
    let gpu = Gpu::with_options(&GpuOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..GpuOptions::from_env()
    })?;
    let a = gpu.adapter();
    let info = &a.info;
    println!("{a}");
    if !args.small && !args.allow_cpu && info.device_type == wgpu::DeviceType::Cpu {
        return Err(format!(
            "{} runs shaders on the CPU, where every pass of the full-size network takes \
             minutes and the whole check many times that: pass --small (or --allow-cpu to \
             run the full sizes anyway)",
            info.name
        )
        .into());
    }
    let f16 = gpu.supports(Precision::F16);
    let cudnn: Option<Value> = match &args.cudnn {
        Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    let mut report = Report {
        json: args.json.clone(),
        md_path: args.md.clone(),
        adapter: json!({
            "name": info.name, "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type), "vendor": info.vendor,
            "device": info.device, "driver": info.driver, "driver_info": info.driver_info,
            "timestamps": a.timestamps, "subgroups": a.subgroups,
            "subgroup_sizes": [info.subgroup_min_size, info.subgroup_max_size],
            "pipeline_cache": a.pipeline_cache, "shader_f16": f16,
            "cooperative_matrix": gpu.cooperative_matrix(),
            "cooperative_matrix_offered": a.cooperative_matrix,
            "cooperative_matrix_rejected": gpu.cooperative_matrix_rejected(),
        }),
        small: args.small,
        header: String::new(),
        shape_rows: Vec::new(),
        shape_md: String::new(),
        network: Value::Null,
        network_rows: Vec::new(),
        network_md: String::new(),
        cudnn: cudnn.clone(),
        peak_tflops: args.peak_tflops.or_else(|| {
            cudnn
                .as_ref()
                .and_then(|c| c["fp32_peak"]["tflops"].as_f64())
        }),
        all_correct: true,
    };
    let cudnn_row = |case: &str| -> Option<Value> {
        cudnn.as_ref()?["results"]
            .as_array()?
            .iter()
            .find(|r| r["case"] == case)
            .cloned()
    };

    report.header = format!(
        "Adapter: {} ({:?}, {:?}), driver {} {}{}; f16 cooperative matrices: {}\n\n",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        if args.small { "; `--small` sizes" } else { "" },
        match (a.cooperative_matrix, gpu.cooperative_matrix_rejected()) {
            (None, _) => "none offered".to_string(),
            (Some(side), None) => format!("{side}x{side}x{side}, used"),
            (Some(side), Some(why)) => format!("{side}x{side}x{side}, left unused: {why}"),
        }
    );
    report.header.push_str(&format!(
        "GFLOP/s per kernel (median of timed runs; the kernel that ran in brackets where a choice fell back). \
         Every output was poisoned with NaN, then compared with the CPU's: `WRONG` marks a relative error above \
         {F32_TOLERANCE:e} (f32) or {F16_TOLERANCE:e} (f16); \"max err\" is the largest over the row's f32 kernels, then the f16 choice's; \
         \"coop f16\" is the cooperative-matrix kernel in f16, where the device has f16 cooperative matrices.\n\n"
    ));
    let mut table = String::from("| shape | GFLOP | ");
    table.push_str(&choices().join(" | "));
    table.push_str(" | tuned (choice) | tuned f16 (choice) | coop f16 | max err f32 / f16 | cuDNN fp32 | cuDNN f16 |\n|---|---:|");
    table.push_str(&"---:|".repeat(choices().len() + 6));
    table.push('\n');
    report.shape_md = table;
    report.save(false)?;

    let mut rng = StdRng::seed_from_u64(7);
    for (name, spec, input) in shapes(args.small) {
        let out = spec.output_shape(input, name)?;
        let flops = spec.flops(out);
        let w =
            Array4::from_shape_simple_fn(spec.weight_shape(), || rng.random_range(-0.05f32..0.05));
        let b = Array1::from_shape_simple_fn(spec.out_channels, || rng.random_range(-1f32..1.0));
        let x = Array4::from_shape_simple_fn(input.dims(), || rng.random_range(-1f32..1.0));
        let reference = dilated::cpu::fast::conv2d(x.view(), &spec, w.view(), Some(b.view()))?;
        let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view()))?;
        let xg = gpu.upload(x.view())?;
        let yg = gpu.empty(out)?;
        let io = Io::tensors(&xg, &yg);
        let mut kernels = serde_json::Map::new();
        let mut cells = Vec::new();
        let mut worst = 0f64;
        for choice_name in choices() {
            let choice = ConvChoice::from_name(choice_name).ok_or("choice")?;
            let measured = (|| -> Result<_, Box<dyn std::error::Error>> {
                let dispatches = conv.prepare_as(&gpu, &io, choice)?;
                // The convolution, not the weight packing that may run before it.
                let kernel = dispatches
                    .iter()
                    .map(|d| d.kernel())
                    .find(|&k| k != Kernel::ConvPackBlocked)
                    .ok_or("no dispatch")?;
                let err = rel_error(&run_poisoned(&gpu, &dispatches, &yg)?, &reference);
                let (times, from_timestamps) = time_dispatches(&gpu, &dispatches, RUNS)?;
                Ok((kernel, err, median(times), from_timestamps))
            })();
            match measured {
                Ok((kernel, err, t, from_timestamps)) => {
                    worst = worst.max(err);
                    kernels.insert(
                        choice_name.into(),
                        json!({"kernel": format!("{kernel:?}"), "ms": t.as_secs_f64() * 1e3,
                               "gflops": gflops(flops, t), "timestamps": from_timestamps,
                               "rel_error": err, "correct": err <= F32_TOLERANCE}),
                    );
                    cells.push(format!(
                        "{:.1} ({kernel:?}){}",
                        gflops(flops, t),
                        mark(err, F32_TOLERANCE)
                    ));
                }
                // A kernel this device cannot run is a finding too; the rest still run.
                Err(e) if !gpu.is_lost() => {
                    eprintln!("{name}: {choice_name} FAILED: {e}");
                    report.all_correct = false;
                    kernels.insert(choice_name.into(), json!({"error": e.to_string()}));
                    cells.push("FAILED".into());
                }
                Err(e) => return Err(e),
            }
        }
        let tuned = tune_and_check(&gpu, &conv, &xg, &yg, &reference)?;
        worst = worst.max(tuned.error);
        let (tuned16, coop16) = if f16 {
            let conv16 = GpuConv2d::new_as(&gpu, spec, w.view(), Some(b.view()), Precision::F16)?;
            let x16 = gpu.upload_as(x.view(), Precision::F16)?;
            let y16 = gpu.empty_as(out, Precision::F16)?;
            let tuned = tune_and_check(&gpu, &conv16, &x16, &y16, &reference)?;
            // The cooperative-matrix kernel on its own, where the device has one.
            let coop = match gpu.cooperative_matrix() {
                Some(side) => {
                    let measured = (|| -> Result<_, Box<dyn std::error::Error>> {
                        let d = conv16.prepare_as(
                            &gpu,
                            &Io::tensors(&x16, &y16),
                            ConvChoice::new(ConvAlgorithm::Coop, true),
                        )?;
                        let err = rel_error(&run_poisoned(&gpu, &d, &y16)?, &reference);
                        let (times, _) = time_dispatches(&gpu, &d, RUNS)?;
                        Ok((gflops(flops, median(times)), d[0].kernel(), err))
                    })();
                    match measured {
                        Ok(m) => Some(m),
                        // Shown as a wrong cell (infinite error); the rest still run.
                        Err(e) if !gpu.is_lost() => {
                            eprintln!("{name}: coop f16 FAILED: {e}");
                            let kernel = Kernel::coop_for(side).ok_or("coop side")?;
                            Some((0.0, kernel, f64::INFINITY))
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => None,
            };
            (Some(tuned), coop)
        } else {
            (None, None)
        };
        let correct = worst <= F32_TOLERANCE
            && tuned16.as_ref().is_none_or(|t| t.error <= F16_TOLERANCE)
            && coop16.is_none_or(|c| c.2 <= F16_TOLERANCE);
        report.all_correct &= correct;
        let cd = cudnn_row(name);
        let cd_cell = |key: &str| {
            cd.as_ref()
                .and_then(|r| r[key].as_f64())
                .map_or("-".to_string(), |g| format!("{g:.0}"))
        };
        let tuned_cell = |t: &Tuned, tolerance| {
            format!(
                "{:.1} ({}){}",
                gflops(flops, t.best.time),
                t.best.choice.name(),
                mark(t.error, tolerance)
            )
        };
        println!(
            "{name:<22} {:>7.2} GFLOP  {}  tuned {}{}{}  max err {worst:.1e}{}",
            flops as f64 / 1e9,
            cells.join("  "),
            tuned_cell(&tuned, F32_TOLERANCE),
            tuned16.as_ref().map_or(String::new(), |t| format!(
                "  tuned f16 {} err {:.1e}",
                tuned_cell(t, F16_TOLERANCE),
                t.error
            )),
            coop16.map_or(String::new(), |(g, k, err)| format!(
                "  coop f16 {g:.1} ({k:?}) err {err:.1e}"
            )),
            if correct { "" } else { "  WRONG" }
        );
        let coop_cell = coop16.map_or("-".into(), |(g, k, err)| {
            format!("{g:.1} ({k:?}){}", mark(err, F16_TOLERANCE))
        });
        report.shape_md.push_str(&format!(
            "| {name} | {:.2} | {} | {} | {} | {coop_cell} | {worst:.1e} / {} | {} | {} |\n",
            flops as f64 / 1e9,
            cells.join(" | "),
            tuned_cell(&tuned, F32_TOLERANCE),
            tuned16
                .as_ref()
                .map_or("-".into(), |t| tuned_cell(t, F16_TOLERANCE)),
            tuned16
                .as_ref()
                .map_or("-".into(), |t| format!("{:.1e}", t.error)),
            cd_cell("fp32_gflops"),
            cd_cell("f16_gflops"),
        ));
        report.shape_rows.push(json!({
            "shape": name, "input": input.dims(), "output": out.dims(), "gflop": flops as f64 / 1e9,
            "kernels": kernels, "max_rel_error_f32": worst,
            "tuned": tuned.json(flops),
            "tuned_f16": tuned16.as_ref().map(|t| t.json(flops)),
            "coop_f16": coop16.map(|(g, k, err)| json!({
                "kernel": format!("{k:?}"), "gflops": g, "rel_error": err})),
            "cudnn": cd,
        }));
        report.save(false)?;
    }

    network_section(&gpu, &args, &mut report, &cudnn_row, f16, &mut rng)?;
    report.save(true)?;
    print!("{}", report.targets().0);
    for p in [&args.json, &args.md].into_iter().flatten() {
        println!("wrote {}", p.display());
    }
    Ok(report.all_correct)
}

/// A convolution's kernels measured on the device, and the winner's output checked.
struct Tuned {
    best: CandidateTime,
    candidates: Vec<CandidateTime>,
    tuning_ms: f64,
    error: f64,
}

impl Tuned {
    fn json(&self, flops: u64) -> Value {
        json!({"choice": self.best.choice.name(), "kernel": format!("{:?}", self.best.kernel),
               "ms": self.best.time.as_secs_f64() * 1e3, "gflops": gflops(flops, self.best.time),
               "tuning_ms": self.tuning_ms, "rel_error": self.error,
               "candidates": self.candidates.iter().map(|c| json!({
                   "choice": c.choice.name(), "ms": c.time.as_secs_f64() * 1e3, "runs": c.runs,
                   "error": c.error}))
                   .collect::<Vec<_>>()})
    }
}

/// Measures `conv`'s candidates as a plan would, then runs the fastest from `x` into `output`
/// (poisoned first) and compares what it wrote with `reference`.
fn tune_and_check(
    gpu: &Gpu,
    conv: &GpuConv2d,
    x: &GpuTensor,
    output: &GpuTensor,
    reference: &Array4<f32>,
) -> Result<Tuned, Box<dyn std::error::Error>> {
    let input = x.shape();
    let start = Instant::now();
    let candidates = measure_conv_alone(gpu, conv, input, true)?;
    let tuning_ms = start.elapsed().as_secs_f64() * 1e3;
    let best = candidates.first().ok_or("no candidate")?.clone();
    let dispatches = conv.prepare_as(gpu, &Io::tensors(x, output), best.choice)?;
    let error = rel_error(&run_poisoned(gpu, &dispatches, output)?, reference);
    Ok(Tuned {
        best,
        candidates,
        tuning_ms,
        error,
    })
}

/// The whole network, f32 then f16, with the heuristic's kernels and with kernels measured as
/// the plan is built: build time, forward time, memory, and the class scores against the CPU.
fn network_section(
    gpu: &Gpu,
    args: &Args,
    report: &mut Report,
    cudnn_row: &dyn Fn(&str) -> Option<Value>,
    f16: bool,
    rng: &mut StdRng,
) -> Result<(), Box<dyn std::error::Error>> {
    let (divisor, size) = if args.small { (8, 420) } else { (1, 1396) };
    let net = Model::Cityscapes.build(&PresetOptions {
        width_divisor: divisor,
        ..Default::default()
    })?;
    // The class scores: the network without its final softmax, which saturates to 0 and 1
    // on scores from random weights and would hide differences.
    let layers = net.layers().len();
    let scores_net = match net.layers().last().map(|l| &l.op) {
        Some(dilated::net::Op::Softmax) => net.sub_network(0..layers - 1)?,
        _ => net.clone(),
    };
    let shape = Shape::new(1, 3, size, size);
    let flops: u64 = net.report(shape)?.iter().map(|r| r.flops).sum();
    let x = Array4::from_shape_simple_fn(shape.dims(), || rng.random_range(-100f32..100.0));
    let start = Instant::now();
    let reference = CpuPlan::new(&scores_net)?.forward(x.view())?;
    let cpu_ms = start.elapsed().as_secs_f64() * 1e3;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "dilation10_cityscapes /{divisor} {size}x{size}: CPU scores in {cpu_ms:.0} ms ({cores} cores)"
    );
    report.network = json!({"model": "dilation10_cityscapes", "width_divisor": divisor,
        "size": size, "gflop": flops as f64 / 1e9, "cpu_reference_ms": cpu_ms,
        "cpu_cores": cores});
    report.network_md = format!(
        "\n`dilation10_cityscapes` (widths / {divisor}) at {size}x{size}, {:.1} GFLOP, one forward pass \
         of the whole network including upload and read-back (median of {RUNS}). The class scores \
         (the same plan without the final softmax, kernels chosen the same way) are compared \
         with the CPU plan's: `max |gpu - cpu| / max |cpu|` and the share of pixels with the \
         same best class; `WRONG` marks an error above {NETWORK_F32_TOLERANCE:e} (f32) or \
         {NETWORK_F16_TOLERANCE:e} (f16).\n\n\
         | precision | kernels | plan built in ms | forward ms | GFLOP/s | peak MiB | max rel err | labels agree |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        flops as f64 / 1e9
    );
    report.save(false)?;
    let precisions: &[Precision] = if f16 {
        &[Precision::F32, Precision::F16]
    } else {
        &[Precision::F32]
    };
    for &precision in precisions {
        let tolerance = match precision {
            Precision::F32 => NETWORK_F32_TOLERANCE,
            Precision::F16 => NETWORK_F16_TOLERANCE,
        };
        for (label, tuning) in [("heuristic", Tuning::Off), ("tuned", Tuning::Retune)] {
            let run = run_network(gpu, &net, &scores_net, &x, precision, tuning);
            let r = match run {
                Ok(r) => r,
                // A plan this device cannot build or run is a finding too; the rest still run.
                Err(e) if !gpu.is_lost() => {
                    eprintln!("dilation10_cityscapes {precision} {label}: FAILED: {e}");
                    report.all_correct = false;
                    report
                        .network_md
                        .push_str(&format!("| {precision} | {label} | FAILED: {e} |\n"));
                    report.network_rows.push(json!({
                        "precision": precision.to_string(), "kernels": label,
                        "error": e.to_string(),
                    }));
                    report.save(false)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (err, agree) = (
                rel_error(&r.scores, &reference),
                label_agreement(&r.scores, &reference),
            );
            report.all_correct &= err <= tolerance;
            println!(
                "dilation10_cityscapes /{divisor} {size}x{size} {precision} {label}: plan built in {:.0} ms, forward {:.1} ms ({:.0} GFLOP/s), {:.1} MiB, scores vs CPU {err:.2e}, labels agree {:.3}%{}",
                r.build.as_secs_f64() * 1e3,
                r.forward.as_secs_f64() * 1e3,
                gflops(flops, r.forward),
                r.peak as f64 / (1 << 20) as f64,
                100.0 * agree,
                mark(err, tolerance)
            );
            report.network_md.push_str(&format!(
                "| {precision} | {label} | {:.0} | {:.1} | {:.1} | {:.1} | {err:.2e}{} | {:.3}% |\n",
                r.build.as_secs_f64() * 1e3,
                r.forward.as_secs_f64() * 1e3,
                gflops(flops, r.forward),
                r.peak as f64 / (1 << 20) as f64,
                mark(err, tolerance),
                100.0 * agree,
            ));
            report.network_rows.push(json!({
                "precision": precision.to_string(), "kernels": label,
                "plan_build_ms": r.build.as_secs_f64() * 1e3,
                "forward_ms": r.forward.as_secs_f64() * 1e3, "gflops": gflops(flops, r.forward),
                "peak_memory_bytes": r.peak, "scores_rel_error": err, "labels_agree": agree,
                "correct": err <= tolerance, "choices": r.choices,
            }));
            report.save(false)?;
        }
    }
    if let Some(row) = cudnn_row(&format!("dilation10_cityscapes_{size}x{size}")) {
        report.network_md.push_str(&format!(
            "| cuDNN fp32 / f16 | - | - | {:.1} / {} | {:.0} / {} | - | - | - |\n",
            row["fp32_ms"].as_f64().unwrap_or(f64::NAN),
            row["f16_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            row["fp32_gflops"].as_f64().unwrap_or(f64::NAN),
            row["f16_gflops"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.0}")),
        ));
    }
    Ok(())
}

/// One network run of the check: the plan's build time, its median forward time, peak
/// memory and kernel choices, and the class scores of the same plan without the softmax.
struct NetworkRun {
    build: Duration,
    forward: Duration,
    peak: u64,
    choices: Vec<Value>,
    scores: Array4<f32>,
}

/// Builds the whole network's plan with `tuning` (timing the build), times [`RUNS`] forward
/// passes after a warm one, then runs the scores network with the same kernels.
fn run_network(
    gpu: &Gpu,
    net: &dilated::net::Network,
    scores_net: &dilated::net::Network,
    x: &Array4<f32>,
    precision: Precision,
    tuning: Tuning,
) -> Result<NetworkRun, Box<dyn std::error::Error>> {
    let shape = Shape::new(x.dim().0, x.dim().1, x.dim().2, x.dim().3);
    let start = Instant::now();
    let plan = GpuPlan::with_precision(gpu, net, shape, ConvAlgorithm::Auto, tuning, precision)?;
    let build = start.elapsed();
    plan.forward(x.view())?;
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        plan.forward(x.view())?;
        times.push(start.elapsed());
    }
    let choices = plan
        .conv_choices()
        .iter()
        .map(|c| {
            json!({"layer": c.layer, "choice": c.choice.name(),
                   "kernel": format!("{:?}", c.kernel)})
        })
        .collect();
    let peak = plan.peak_memory();
    drop(plan);
    // The tuned plan recorded its choices: `Cached` builds the scores plan with them.
    let scores_tuning = match tuning {
        Tuning::Off => Tuning::Off,
        _ => Tuning::Cached,
    };
    let scores_plan = GpuPlan::with_precision(
        gpu,
        scores_net,
        shape,
        ConvAlgorithm::Auto,
        scores_tuning,
        precision,
    )?;
    let scores = scores_plan.forward(x.view())?;
    Ok(NetworkRun {
        build,
        forward: median(times),
        peak,
        choices,
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(small: bool, peak: Option<f64>) -> Report {
        let shape = |name: &str, gflops: f64, ms: f64, cudnn_ms: Option<f64>| {
            json!({"shape": name, "tuned": {"gflops": gflops, "ms": ms},
                   "cudnn": cudnn_ms.map(|c| json!({"fp32_ms": c}))})
        };
        let run = |precision: &str, kernels: &str, build: f64, forward: f64| {
            json!({"precision": precision, "kernels": kernels, "plan_build_ms": build,
                   "forward_ms": forward})
        };
        Report {
            json: None,
            md_path: None,
            adapter: Value::Null,
            small,
            header: String::new(),
            shape_rows: vec![
                shape("conv3x3_256_d1", 1.0, 1.0, None),
                shape("fc6_7x7_d4_512_1024", 40_000.0, 1.3, Some(1.0)),
                shape("conv3x3_512_d2", 20_000.0, 0.9, None),
            ],
            shape_md: String::new(),
            network: Value::Null,
            network_rows: vec![
                run("f32", "heuristic", 100.0, 160.0),
                run("f32", "tuned", 150.0, 140.0),
                run("f16", "heuristic", 100.0, 90.0),
                json!({"precision": "f16", "kernels": "tuned", "error": "failed"}),
            ],
            network_md: String::new(),
            cudnn: None,
            peak_tflops: peak,
            all_correct: true,
        }
    }

    fn verdicts(r: &Report) -> Vec<(String, Option<bool>, bool)> {
        r.targets()
            .1
            .iter()
            .map(|t| {
                (
                    t["target"].as_str().unwrap().to_string(),
                    t["met"].as_bool(),
                    t["judged"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn targets_are_judged_from_the_figures() {
        let r = report(false, Some(66.9));
        let v = verdicts(&r);
        let met = |prefix: &str| {
            v.iter()
                .filter(|(t, _, _)| t.starts_with(prefix))
                .map(|(_, m, _)| *m)
                .collect::<Vec<_>>()
        };
        // 40 of 66.9 TFLOP/s is 59.8%; 1.3 ms is 1.3x cuDNN's 1.0.
        assert_eq!(met("fc6_7x7_d4_512_1024"), [Some(true), Some(true)]);
        // 20 TFLOP/s is 29.9%; no cuDNN figure.
        assert_eq!(met("conv3x3_512_d2"), [Some(false), None]);
        // f32: the tuned plan's 140 ms; f16: the heuristic's 90 ms (the tuned one failed).
        assert_eq!(met("whole"), [Some(true), Some(false)]);
        // f32 tuning took 50 ms more, 0.36 of a 140 ms pass; f16 has no tuned run.
        assert_eq!(met("tuning"), [Some(true)]);
        assert!(v.iter().all(|(_, m, judged)| *judged == m.is_some()));
        let (md, _) = r.targets();
        assert!(md.contains("59.8% of 66.9 TFLOP/s"), "{md}");
        assert!(md.contains("1.30x"), "{md}");
        assert!(md.contains("0.4 passes"), "{md}");
    }

    #[test]
    fn targets_are_not_judged_without_a_peak_or_at_small_sizes() {
        let v = verdicts(&report(false, None));
        assert_eq!(
            v.iter()
                .filter(|(t, _, _)| t.contains("fp32 peak"))
                .map(|(_, m, _)| *m)
                .collect::<Vec<_>>(),
            [None, None]
        );
        let small = report(true, Some(66.9));
        assert!(verdicts(&small).iter().all(|(_, _, judged)| !judged));
        assert!(!small.targets().0.contains("**met**"));
    }
}
