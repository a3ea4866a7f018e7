//! `dilated demo` (and `dilated` alone): a real network topology run on the GPU and the CPU on
//! a generated input, compared layer by layer.

use std::time::{Duration, Instant};

use dilated::gpu::tune::Tuning;
use dilated::net::Network;
use dilated::plan::{CpuPlan, GpuPlan};
use dilated::timing::LayerTimes;
use dilated::{ConvAlgorithm, Error, Gpu, Precision, Shape};
use ndarray::Array4;

use super::args::{DeviceArgs, ModelArgs, parse_precision, parse_size};
use super::device::{self, Device};
use super::network::{self, generated_input};
use super::report::{Agreement, mib, ms};

/// Arguments of `dilated demo`.
#[derive(clap::Args)]
#[command(
    mut_arg("model", |a| a.required(false).default_value("dilation8_pascal_voc")),
    mut_arg("width_divisor", |a| a.default_value("8")),
)]
pub struct DemoArgs {
    /// The preset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input height and width, e.g. 500x500; the default is VOC's deploy size (at least 373 per side).
    #[arg(long, default_value = "900x900", value_parser = parse_size)]
    pub size: (usize, usize),
    /// Seed of the weights and the input.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How the GPU stores weights and activations: f32, or f16 (half the memory, arithmetic
    /// still in f32; needs an adapter with SHADER_F16).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,
    /// Where it runs: `--cpu` runs the CPU side only, and without `--gpu` the CPU side alone
    /// runs when the GPU is missing or fails.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl DemoArgs {
    /// The arguments of a bare `dilated demo`, which `dilated` without a command runs.
    pub fn defaults() -> Self {
        use clap::{Args, FromArgMatches};
        let matches = Self::augment_args(clap::Command::new("demo")).get_matches_from(["demo"]);
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// What the GPU side measured: a first (cold) pass, in which drivers finish compiling each
/// pipeline on its first dispatch, and a second (warm) one.
struct GpuRun {
    output: Array4<f32>,
    cold: LayerTimes,
    warm: LayerTimes,
    compile: Duration,
    cold_total: Duration,
    total: Duration,
    peak_memory: u64,
}

/// Runs the network on both backends and prints the per-layer times and how far they agree.
pub fn execute(args: &DemoArgs) -> Result<(), Error> {
    let (model, net) = network::build(&args.model, args.seed)?;
    let shape = Shape::new(1, 3, args.size.0, args.size.1);
    let report = net.report(shape)?;
    let device = Device::open(&args.device)?;
    let executor = device.executor(net);
    let net = executor.network();
    if let Some(gpu) = executor.device() {
        println!("adapter: {} ({:?})", gpu.name(), gpu.adapter().info.backend);
    }
    println!(
        "network: {} (front-end widths / {}), {} layers, {:.2} M parameters, input {shape}",
        model.name(),
        args.model.width_divisor,
        net.layers().len(),
        net.params() as f64 / 1e6
    );
    let x = generated_input(shape, args.seed);
    let gpu = device::run(
        &executor,
        "running the demo",
        |gpu| run_gpu(gpu, net, &x, args.precision).map(Some),
        || Ok(None),
    )?;

    let cpu = CpuPlan::new(net)?;
    let t = Instant::now();
    let (cpu_out, cpu_times) = cpu.forward_profiled(x.view())?;
    let cpu_total = t.elapsed();

    print!(
        "\n{:<12} {:<8} {:>18} {:>6} {:>9}",
        "layer", "op", "output", "RF", "GFLOP"
    );
    if gpu.is_some() {
        print!(" {:>12} {:>10}", "GPU cold ms", "GPU ms");
    }
    println!(" {:>10}", "CPU ms");
    let rows = report.len().min(cpu_times.layers.len()).min(
        gpu.as_ref()
            .map_or(usize::MAX, |g| g.warm.layers.len().min(g.cold.layers.len())),
    );
    for (i, (r, (_, c))) in report.iter().zip(&cpu_times.layers).take(rows).enumerate() {
        print!(
            "{:<12} {:<8} {:>18} {:>6} {:>9.3}",
            r.name,
            r.kind,
            r.output.to_string(),
            r.receptive_field,
            r.flops as f64 / 1e9
        );
        if let Some(g) = &gpu {
            print!(
                " {:>12.2} {:>10.2}",
                ms(g.cold.layers[i].1),
                ms(g.warm.layers[i].1)
            );
        }
        println!(" {:>10.2}", ms(*c));
    }
    let flops: u64 = report.iter().map(|r| r.flops).sum();
    let gflops = flops as f64 / 1e9;
    let cpu_summary = format!(
        "CPU {:.1} ms ({:.2} GFLOP/s)",
        ms(cpu_total),
        gflops / cpu_total.as_secs_f64()
    );
    let Some(g) = gpu else {
        println!("\ntotal {gflops:.2} GFLOP; {cpu_summary}");
        return Ok(());
    };
    println!(
        "\ntotal {gflops:.2} GFLOP; GPU {:.1} ms ({:.2} GFLOP/s; first pass {:.1} ms, plan built in {:.0} ms, peak GPU memory {:.1} MiB); {cpu_summary}",
        ms(g.total),
        gflops / g.total.as_secs_f64(),
        ms(g.cold_total),
        ms(g.compile),
        mib(g.peak_memory),
    );
    let a = Agreement::of(&g.output, &cpu_out);
    println!(
        "GPU vs CPU: max |gpu - cpu| / max |cpu| = {:.2e} over {} scores; labels agree on {}/{} pixels ({})",
        a.relative_error,
        a.scores,
        a.same_labels,
        a.pixels,
        if g.warm.from_timestamps {
            "GPU layer times from timestamp queries"
        } else {
            "GPU layer times measured layer by layer"
        }
    );
    Ok(())
}

/// Builds the GPU plan (storing `precision`) and runs two profiled passes, cold and warm.
fn run_gpu(
    gpu: &Gpu,
    net: &Network,
    x: &Array4<f32>,
    precision: Precision,
) -> Result<GpuRun, Error> {
    let d = x.dim();
    let t = Instant::now();
    let plan = GpuPlan::with_precision(
        gpu,
        net,
        Shape::new(d.0, d.1, d.2, d.3),
        ConvAlgorithm::Auto,
        Tuning::default(),
        precision,
    )?;
    let compile = t.elapsed();
    let t = Instant::now();
    let (_, cold) = plan.forward_profiled(x.view())?;
    let cold_total = t.elapsed();
    let t = Instant::now();
    let (output, warm) = plan.forward_profiled(x.view())?;
    let total = t.elapsed();
    Ok(GpuRun {
        output,
        cold,
        warm,
        compile,
        cold_total,
        total,
        peak_memory: plan.peak_memory(),
    })
}
