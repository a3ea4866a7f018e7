//! The real-GPU check `benches/gpu_check.sh` runs: adapter information; the GFLOP/s of every
//! convolution kernel and of the kernel chosen by measurement on the shapes of
//! `benches/ops.rs`; the whole `dilation10_cityscapes` network at 1396x1396 with the
//! heuristic's kernels and with kernels chosen by measurement; beside them, when given, the
//! cuDNN figures of `benches/cudnn_reference.py --json` from the same machine. Prints a table
//! and writes JSON and Markdown.
//!
//!     cargo run --release --example gpu_check -- [--small] [--cudnn cudnn.json]
//!         [--json benches/gpu_check.json] [--md benches/gpu_check.md]
//!
//! `--small` (or `DILATED_CHECK_SMALL=1`) divides channels by 4 and sizes by 2, and runs the
//! network with widths / 8 at 420x420: minutes on a software adapter. Kernel choices are
//! measured into a fresh temporary cache directory, so earlier runs do not count.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dilated::gpu::tune::{Tuning, measure_conv_alone, time_dispatches};
use dilated::gpu::{ConvChoice, Io, Kernel};
use dilated::net::{Model, PresetOptions};
use dilated::plan::GpuPlan;
use dilated::{Conv2d, ConvAlgorithm, Gpu, GpuConv2d, GpuOptions, Shape};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Timed runs per kernel and shape (after a warm-up).
const RUNS: usize = 5;

struct Args {
    small: bool,
    cudnn: Option<PathBuf>,
    json: Option<PathBuf>,
    md: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        small: std::env::var("DILATED_CHECK_SMALL").is_ok_and(|v| v == "1"),
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
    if let Err(e) = run() {
        eprintln!("gpu_check: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let cache = tempfile::tempdir()?;
    let gpu = Gpu::with_options(&GpuOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..GpuOptions::from_env()
    })?;
    let a = gpu.adapter();
    let info = &a.info;
    println!("{a}");
    let adapter = json!({
        "name": info.name, "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type), "vendor": info.vendor,
        "device": info.device, "driver": info.driver, "driver_info": info.driver_info,
        "timestamps": a.timestamps, "subgroups": a.subgroups,
        "pipeline_cache": a.pipeline_cache,
    });
    let cudnn: Option<Value> = match &args.cudnn {
        Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    let cudnn_row = |case: &str| -> Option<&Value> {
        cudnn.as_ref()?["results"]
            .as_array()?
            .iter()
            .find(|r| r["case"] == case)
    };

    let mut md = String::new();
    md.push_str(&format!(
        "Adapter: {} ({:?}, {:?}), driver {} {}{}\n\n",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        if args.small { "; `--small` sizes" } else { "" }
    ));
    md.push_str("GFLOP/s per kernel (median of timed runs; the kernel that ran in brackets where a choice fell back):\n\n");
    md.push_str("| shape | GFLOP | ");
    md.push_str(&choices().join(" | "));
    md.push_str(" | tuned (choice) | cuDNN fp32 | cuDNN f16 |\n|---|---:|");
    md.push_str(&"---:|".repeat(choices().len() + 3));
    md.push('\n');

    let mut rng = StdRng::seed_from_u64(7);
    let mut shape_rows = Vec::new();
    for (name, spec, input) in shapes(args.small) {
        let out = spec.output_shape(input, name)?;
        let flops = spec.flops(out);
        let w =
            Array4::from_shape_simple_fn(spec.weight_shape(), || rng.random_range(-0.05f32..0.05));
        let b = Array1::from_shape_simple_fn(spec.out_channels, || rng.random_range(-1f32..1.0));
        let x = Array4::from_shape_simple_fn(input.dims(), || rng.random_range(-1f32..1.0));
        let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view()))?;
        let xg = gpu.upload(x.view())?;
        let yg = gpu.empty(out)?;
        let mut kernels = serde_json::Map::new();
        let mut cells = Vec::new();
        for choice_name in choices() {
            let choice = ConvChoice::from_name(choice_name).ok_or("choice")?;
            let dispatches = conv.prepare_as(&gpu, &Io::tensors(&xg, &yg), choice)?;
            // The convolution, not the weight packing that may run before it.
            let kernel = dispatches
                .iter()
                .map(|d| d.kernel())
                .find(|&k| k != Kernel::ConvPackBlocked)
                .ok_or("no dispatch")?;
            gpu.run(&dispatches)?;
            let (times, from_timestamps) = time_dispatches(&gpu, &dispatches, RUNS)?;
            let t = median(times);
            kernels.insert(
                choice_name.into(),
                json!({"kernel": format!("{kernel:?}"), "ms": t.as_secs_f64() * 1e3,
                       "gflops": gflops(flops, t), "timestamps": from_timestamps}),
            );
            cells.push(format!("{:.1} ({kernel:?})", gflops(flops, t)));
        }
        let start = Instant::now();
        let candidates = measure_conv_alone(&gpu, &conv, input, true)?;
        let tuning_ms = start.elapsed().as_secs_f64() * 1e3;
        let best = candidates.first().ok_or("no candidate")?;
        let tuned_gflops = gflops(flops, best.time);
        let cd = cudnn_row(name);
        let cd_cell = |key: &str| {
            cd.and_then(|r| r[key].as_f64())
                .map_or("-".to_string(), |g| format!("{g:.0}"))
        };
        println!(
            "{name:<22} {:>7.2} GFLOP  {}  tuned {} {:.0} GFLOP/s (tuning {tuning_ms:.0} ms)",
            flops as f64 / 1e9,
            cells.join("  "),
            best.choice.name(),
            tuned_gflops
        );
        md.push_str(&format!(
            "| {name} | {:.2} | {} | {:.1} ({}) | {} | {} |\n",
            flops as f64 / 1e9,
            cells.join(" | "),
            tuned_gflops,
            best.choice.name(),
            cd_cell("fp32_gflops"),
            cd_cell("f16_gflops"),
        ));
        shape_rows.push(json!({
            "shape": name, "input": input.dims(), "output": out.dims(), "gflop": flops as f64 / 1e9,
            "kernels": kernels,
            "tuned": {"choice": best.choice.name(), "kernel": format!("{:?}", best.kernel),
                      "ms": best.time.as_secs_f64() * 1e3, "gflops": tuned_gflops,
                      "tuning_ms": tuning_ms},
            "candidates": candidates.iter().map(|c| json!({
                "choice": c.choice.name(), "ms": c.time.as_secs_f64() * 1e3, "runs": c.runs})).collect::<Vec<_>>(),
            "cudnn": cd.cloned(),
        }));
    }

    // The whole network: heuristic kernels, then kernels measured as the plan is built.
    let (divisor, size) = if args.small { (8, 420) } else { (1, 1396) };
    let net = Model::Cityscapes.build(&PresetOptions {
        width_divisor: divisor,
        ..Default::default()
    })?;
    let shape = Shape::new(1, 3, size, size);
    let flops: u64 = net.report(shape)?.iter().map(|r| r.flops).sum();
    let x = Array4::from_shape_simple_fn(shape.dims(), || rng.random_range(-100f32..100.0));
    let mut network_rows = Vec::new();
    md.push_str(&format!(
        "\n`dilation10_cityscapes` (widths / {divisor}) at {size}x{size}, {:.1} GFLOP, one forward pass including upload and read-back (median of {RUNS}):\n\n| kernels | plan built in ms | forward ms | GFLOP/s |\n|---|---:|---:|---:|\n",
        flops as f64 / 1e9
    ));
    for (label, tuning) in [("heuristic", Tuning::Off), ("tuned", Tuning::Retune)] {
        let start = Instant::now();
        let plan = GpuPlan::with_tuning(&gpu, &net, shape, ConvAlgorithm::Auto, tuning)?;
        let build = start.elapsed();
        plan.forward(x.view())?;
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let start = Instant::now();
            plan.forward(x.view())?;
            times.push(start.elapsed());
        }
        let t = median(times);
        println!(
            "dilation10_cityscapes /{divisor} {size}x{size} {label}: plan built in {:.0} ms, forward {:.1} ms ({:.0} GFLOP/s)",
            build.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3,
            gflops(flops, t)
        );
        md.push_str(&format!(
            "| {label} | {:.0} | {:.1} | {:.1} |\n",
            build.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3,
            gflops(flops, t)
        ));
        network_rows.push(json!({
            "kernels": label, "plan_build_ms": build.as_secs_f64() * 1e3,
            "forward_ms": t.as_secs_f64() * 1e3, "gflops": gflops(flops, t),
            "choices": plan.conv_choices().iter().map(|c| json!({
                "layer": c.layer, "choice": c.choice.name(), "kernel": format!("{:?}", c.kernel)})).collect::<Vec<_>>(),
        }));
    }
    if let Some(row) = cudnn_row(&format!("dilation10_cityscapes_{size}x{size}")) {
        md.push_str(&format!(
            "| cuDNN fp32 / f16 | - | {:.1} / {} | {:.0} / {} |\n",
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
    let report = json!({
        "adapter": adapter, "small": args.small, "runs": RUNS,
        "shapes": shape_rows,
        "network": {"model": "dilation10_cityscapes", "width_divisor": divisor, "size": size,
                    "gflop": flops as f64 / 1e9, "runs": network_rows},
        "cudnn": cudnn,
    });
    if let Some(p) = &args.json {
        dilated::io::write_file(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &args.md {
        dilated::io::write_file(p, md.as_bytes())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
