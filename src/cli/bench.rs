//! `dilated bench`: a whole network timed on the GPU and the CPU, with a per-layer table, or
//! only the plan's description (`--plan-only`).

use std::time::{Duration, Instant};

use dilated::cpu::fast::{ConvMethod, CpuPrecision};
use dilated::gpu::tune::Tuning;
use dilated::gpu::{Kernel, TiledVariant};
use dilated::net::{LayerReport, Model, Network, Op, PresetOptions};
use dilated::plan::{BandedLayout, CpuPlan, GpuPlan, Plan, PlanOptions};
use dilated::timing::LayerTimes;
use dilated::{ConvAlgorithm, Error, Gpu, Precision, Shape};
use ndarray::Array4;

use super::args::{CpuPrecisionArgs, DeviceArgs, MemoryArgs, ModelArgs, parse_size};
use super::device::{self, Device};
use super::network::{self, generated_input};
use super::report::{Agreement, median, mib, ms};

/// Arguments of `dilated bench`.
#[derive(clap::Args)]
#[command(mut_arg("model", |a| a.required(false).default_value("dilation10_cityscapes")))]
pub struct BenchArgs {
    /// The preset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input height and width; defaults to the model's deploy size.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Timed forward passes per backend (after one warm-up pass).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the CPU side.
    #[arg(long, conflicts_with = "cpu")]
    pub no_cpu: bool,
    /// Only build the plan's description: shapes, costs and peak GPU memory, no arithmetic and
    /// no device needed.
    #[arg(long)]
    pub plan_only: bool,
    /// Compare reduced precision with f32 instead of timing the network: per model (every
    /// preset with `--model all`), the largest difference of the class scores (before the
    /// final softmax) relative to the largest f32 score and the share of pixels whose label
    /// agrees. On the GPU f16 storage, with both plans' peak GPU memory; with `--cpu` the
    /// CPU's bf16, with both plans' convolution weight memory and time per pass.
    #[arg(long, conflicts_with = "plan_only")]
    pub compare_precision: bool,
    /// The GPU memory budget.
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Convolution kernel for every layer; `auto` lets each layer choose (the table names the
    /// choice).
    #[arg(long, value_enum, default_value_t = Algorithm::Auto)]
    pub algorithm: Algorithm,
    /// Kernel choice by measurement: `cached` runs the choices recorded for this adapter (else
    /// the heuristic), `on` also measures and records the missing ones, `retune` measures every
    /// layer again, `off` runs the heuristic; `--algorithm` other than auto overrides it.
    #[arg(long, value_enum, default_value_t = TuneArg::Cached)]
    pub tune: TuneArg,
    /// CPU convolution method for every layer it can compute (`auto`: each layer's fastest at
    /// `--cpu-precision`; `direct`, `gemm`, `winograd-f2`, `winograd-f4`, `direct-bf16`).
    #[arg(long, default_value = "auto", value_parser = parse_cpu_method)]
    pub cpu_method: CpuMethod,
    /// The CPU's arithmetic (for `--cpu-method auto`).
    #[command(flatten)]
    pub precision: CpuPrecisionArgs,
    /// Where it runs: `--cpu` times the CPU only, and without `--gpu` the CPU alone is timed
    /// when the GPU is missing or fails.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `--cpu-method`: `None` for each layer's automatic choice.
#[derive(Clone, Copy, Debug)]
pub struct CpuMethod(pub Option<ConvMethod>);

fn parse_cpu_method(s: &str) -> Result<CpuMethod, String> {
    if s == "auto" {
        return Ok(CpuMethod(None));
    }
    s.parse()
        .map(|m| CpuMethod(Some(m)))
        .map_err(|e: Error| e.to_string())
}

/// `--algorithm` values: each layer's own choice, or the direct, workgroup-tiled (or one of
/// its generated tile shapes), register-blocked or (f16 only) cooperative-matrix kernel for
/// every layer.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Algorithm {
    // No doc comments here: clap would list them in the help.
    Auto,
    Direct,
    Tiled,
    Blocked,
    #[value(name = "blocked-64")]
    BlockedWide,
    #[value(name = "blocked-packed")]
    BlockedPacked,
    #[value(name = "tiled-64-4x4-k16")]
    Tiled64x4,
    #[value(name = "tiled-64-8x8-k8")]
    Tiled64x8,
    #[value(name = "tiled-32-4x4-k8")]
    Tiled32x4,
    #[value(name = "tiled-128x64-8x4-k8")]
    Tiled128x64,
    #[value(name = "tiled-64x128-4x8-k8")]
    Tiled64x128,
    #[value(name = "tiled-64-8x8-k8-v4")]
    Tiled64x8V4,
    #[value(name = "tiled-128x64-8x4-k8-v4")]
    Tiled128x64V4,
    Coop,
}

impl From<Algorithm> for ConvAlgorithm {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::Auto => ConvAlgorithm::Auto,
            Algorithm::Direct => ConvAlgorithm::Direct,
            Algorithm::Tiled => ConvAlgorithm::Tiled,
            Algorithm::Blocked => ConvAlgorithm::Blocked,
            Algorithm::BlockedWide => ConvAlgorithm::BlockedWide,
            Algorithm::BlockedPacked => ConvAlgorithm::BlockedPacked,
            Algorithm::Tiled64x4 => ConvAlgorithm::TiledVariant(TiledVariant::T64x4),
            Algorithm::Tiled64x8 => ConvAlgorithm::TiledVariant(TiledVariant::T64x8),
            Algorithm::Tiled32x4 => ConvAlgorithm::TiledVariant(TiledVariant::T32x4),
            Algorithm::Tiled128x64 => ConvAlgorithm::TiledVariant(TiledVariant::T128x64),
            Algorithm::Tiled64x128 => ConvAlgorithm::TiledVariant(TiledVariant::T64x128),
            Algorithm::Tiled64x8V4 => ConvAlgorithm::TiledVariant(TiledVariant::T64x8V4),
            Algorithm::Tiled128x64V4 => ConvAlgorithm::TiledVariant(TiledVariant::T128x64V4),
            Algorithm::Coop => ConvAlgorithm::Coop,
        }
    }
}

/// `--tune` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TuneArg {
    // No doc comments here: clap would list them in the help.
    Cached,
    On,
    Off,
    Retune,
}

impl From<TuneArg> for Tuning {
    fn from(t: TuneArg) -> Self {
        match t {
            TuneArg::Cached => Tuning::Cached,
            TuneArg::On => Tuning::On,
            TuneArg::Off => Tuning::Off,
            TuneArg::Retune => Tuning::Retune,
        }
    }
}

/// What the GPU side measured.
struct GpuTimes<'g> {
    gpu: &'g Gpu,
    total: Duration,
    layers: LayerTimes,
    peak_memory: u64,
    /// (bands, stages) when the plan runs in bands.
    bands: Option<(usize, usize)>,
    kernels: Vec<(String, Vec<Kernel>)>,
}

/// Times the network, describes its plan with `--plan-only`, or compares f16 with f32 with
/// `--compare-precision`.
pub fn execute(args: &BenchArgs) -> Result<(), Error> {
    if args.compare_precision {
        return if args.device.cpu {
            compare_cpu_precision(args)
        } else {
            compare_precision(args)
        };
    }
    let (model, net) = network::build(&args.model, PresetOptions::default().seed)?;
    let (h, w) = args.size.unwrap_or(model.info().input_size);
    let shape = Shape::new(1, 3, h, w);
    let report = net.report(shape)?;
    let flops: u64 = report.iter().map(|r| r.flops).sum();
    let largest = report.iter().map(|r| r.activation_bytes).max().unwrap_or(0);
    println!(
        "{} (widths / {}) at {h}x{w}: {:.1} GFLOP, {:.2} M parameters, largest activation {:.0} MiB",
        model.name(),
        args.model.width_divisor,
        flops as f64 / 1e9,
        net.params() as f64 / 1e6,
        mib(largest)
    );
    if args.plan_only {
        return describe_plan(args, &net, shape, &report);
    }
    let runs = args.runs.max(1);
    let x = generated_input(shape, 1);
    let device = Device::open(&args.device)?;
    let executor = device.executor(net);
    let net = executor.network();
    let options = PlanOptions {
        max_memory: args.memory.max_memory,
        algorithm: args.algorithm.into(),
        tuning: args.tune.into(),
        precision: args.memory.precision,
        ..Default::default()
    };
    let gpu = device::run(
        &executor,
        "timing",
        |gpu| time_gpu(gpu, net, &x, runs, &options).map(Some),
        || Ok(None),
    )?;
    // A GPU that is missing or failed leaves the CPU to time, whatever --no-cpu says.
    let cpu = if args.no_cpu && gpu.is_some() {
        None
    } else {
        let plan = match args.cpu_method.0 {
            Some(m) => CpuPlan::with_method(net, Some(m))?,
            None => CpuPlan::with_precision(net, args.precision.cpu_precision)?,
        };
        Some(time_cpu(&plan, &x, runs)?)
    };
    if let Some(g) = &gpu {
        println!(
            "adapter: {} ({:?}); peak GPU memory {:.1} MiB{}",
            g.gpu.name(),
            g.gpu.adapter().info.backend,
            mib(g.peak_memory),
            match g.bands {
                Some((bands, stages)) => format!(" in {bands} bands over {stages} stages"),
                None => String::new(),
            }
        );
        println!(
            "GPU layer times: {}",
            if g.layers.from_timestamps {
                "timestamp queries"
            } else {
                "host clock, one layer per submission"
            }
        );
    }
    let sum = |l: &LayerTimes| -> f64 { l.layers.iter().map(|(_, d)| ms(*d)).sum() };
    let gpu_sum = gpu.as_ref().map_or(0.0, |g| sum(&g.layers));
    let cpu_sum = cpu.as_ref().map_or(0.0, |(_, l)| sum(l));
    print!("\n{:<14} {:>20} {:>9} |", "layer", "output", "GFLOP");
    if gpu.is_some() {
        print!(
            " {:<13} {:>10} {:>8} {:>6} |",
            "GPU kernel", "GPU ms", "GFLOP/s", "share"
        );
    }
    println!(" {:>10} {:>8} {:>6}", "CPU ms", "GFLOP/s", "share");
    for (i, r) in report.iter().enumerate() {
        let gf = r.flops as f64 / 1e9;
        print!("{:<14} {:>20} {:>9.2} |", r.name, r.output.to_string(), gf);
        if let Some(g) = &gpu {
            let t = ms(g.layers.layers[i].1);
            let kernel = g
                .kernels
                .iter()
                .find(|(n, _)| *n == r.name)
                .map_or(String::new(), |(_, k)| kernel_label(k));
            print!(
                " {:<13} {:>10.2} {:>8.1} {:>5.1}% |",
                kernel,
                t,
                gf / t * 1e3,
                100.0 * t / gpu_sum
            );
        }
        match &cpu {
            // A pool taken into the convolution before it (its time counts there).
            Some((_, l)) if l.layers[i].1.is_zero() => {
                println!(" {:>10} {:>8} {:>6}", "fused", "-", "-")
            }
            Some((_, l)) => {
                let t = ms(l.layers[i].1);
                println!(
                    " {:>10.2} {:>8.1} {:>5.1}%",
                    t,
                    gf / t * 1e3,
                    100.0 * t / cpu_sum
                );
            }
            None => println!(),
        }
    }
    let gf = flops as f64 / 1e9;
    println!();
    if let Some(g) = &gpu {
        println!(
            "GPU: {:.1} ms per forward pass (median of {runs}), {:.1} GFLOP/s on {}",
            ms(g.total),
            gf / g.total.as_secs_f64(),
            g.gpu.name()
        );
    }
    if let Some((t, _)) = &cpu {
        println!(
            "CPU: {:.1} ms per forward pass (median of {runs}), {:.1} GFLOP/s on {} threads",
            ms(*t),
            gf / t.as_secs_f64(),
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// `--plan-only`: the per-layer shapes and costs, the plan's peak GPU memory and, under a
/// budget, the bands it would run in.
fn describe_plan(
    args: &BenchArgs,
    net: &Network,
    shape: Shape,
    report: &[LayerReport],
) -> Result<(), Error> {
    let peak = GpuPlan::estimate_memory_as(net, shape, args.memory.precision)?;
    println!(
        "{:<14} {:>20} {:>10} {:>12}",
        "layer", "output", "GFLOP", "activation"
    );
    for r in report {
        println!(
            "{:<14} {:>20} {:>10.2} {:>9.1} MiB",
            r.name,
            r.output.to_string(),
            r.flops as f64 / 1e9,
            mib(r.activation_bytes)
        );
    }
    println!(
        "peak GPU memory of the plan ({} storage): {:.1} MiB ({peak} bytes)",
        args.memory.precision,
        mib(peak)
    );
    if let Some(budget) = args.memory.max_memory {
        match BandedLayout::for_budget_as(net, shape, budget, args.memory.precision)? {
            None => println!(
                "within the budget of {:.1} MiB: the whole image in one pass",
                mib(budget)
            ),
            Some(l) => println!(
                "budget {:.1} MiB: in stages of horizontal bands, {:.1} GFLOP in all\n{}\n\
                 peak GPU memory of the banded plan: {:.1} MiB ({} bytes)",
                mib(budget),
                l.flops(net)? as f64 / 1e9,
                l.describe(net),
                mib(l.peak_memory),
                l.peak_memory
            ),
        }
    }
    Ok(())
}

/// `--compare-precision`: each model's class scores (the network without its final softmax,
/// which would squash score errors) computed once with f32 and once with f16 storage on the
/// GPU (same generated input, kernel options and budget), compared.
fn compare_precision(args: &BenchArgs) -> Result<(), Error> {
    let models = compared_models(args)?;
    let gpu = Gpu::new()?;
    gpu.check_precision(Precision::F16)?;
    println!(
        "adapter: {} ({:?}); f16 storage against f32, widths / {}",
        gpu.name(),
        gpu.adapter().info.backend,
        args.model.width_divisor
    );
    println!(
        "{:<22} {:>10} {:>13} {:>13} {:>13} {:>13} {:>7}",
        "model", "input", "max rel err", "labels agree", "f32 MiB", "f16 MiB", "ratio"
    );
    for model in models {
        let net = scores_network(model, args.model.width_divisor)?;
        let (h, w) = args.size.unwrap_or(model.info().input_size);
        let shape = Shape::new(1, 3, h, w);
        let x = generated_input(shape, 1);
        let run = |precision| -> Result<(Array4<f32>, u64), Error> {
            let options = PlanOptions {
                max_memory: args.memory.max_memory,
                algorithm: args.algorithm.into(),
                tuning: args.tune.into(),
                precision,
                ..Default::default()
            };
            let plan = Plan::new(&gpu, &net, shape, &options)?;
            Ok((plan.forward(x.view())?, plan.peak_memory()))
        };
        let (a, mem32) = run(Precision::F32)?;
        let (b, mem16) = run(Precision::F16)?;
        let agreement = Agreement::of(&b, &a);
        println!(
            "{:<22} {:>10} {:>13.2e} {:>12.3}% {:>13.2} {:>13.2} {:>7.3}",
            model.name(),
            format!("{h}x{w}"),
            agreement.relative_error,
            100.0 * agreement.same_labels as f64 / agreement.pixels.max(1) as f64,
            mib(mem32),
            mib(mem16),
            mem16 as f64 / mem32 as f64
        );
    }
    Ok(())
}

/// `--compare-precision --cpu`: as [`compare_precision`] on the CPU, bf16 against f32, with
/// the convolutions' weight memory as laid out and the median time of `--runs` passes.
fn compare_cpu_precision(args: &BenchArgs) -> Result<(), Error> {
    println!(
        "{}\nCPU: bf16 against f32, widths / {}, {} threads",
        dilated::cpu::fast::CpuInfo::get(),
        args.model.width_divisor,
        rayon::current_num_threads()
    );
    println!(
        "{:<22} {:>10} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "model",
        "input",
        "max rel err",
        "labels agree",
        "f32 MiB",
        "bf16 MiB",
        "f32 ms",
        "bf16 ms",
        "speed"
    );
    for model in compared_models(args)? {
        let net = scores_network(model, args.model.width_divisor)?;
        let (h, w) = args.size.unwrap_or(model.info().input_size);
        let x = generated_input(Shape::new(1, 3, h, w), 1);
        let run = |precision| -> Result<(Array4<f32>, u64, Duration), Error> {
            let plan = CpuPlan::with_precision(&net, precision)?;
            let time = timed(args.runs.max(1), || plan.forward(x.view()).map(drop))?;
            Ok((plan.forward(x.view())?, plan.weight_bytes(), time))
        };
        let (a, mem32, t32) = run(CpuPrecision::F32)?;
        let (b, mem16, t16) = run(CpuPrecision::Bf16)?;
        let agreement = Agreement::of(&b, &a);
        println!(
            "{:<22} {:>10} {:>11.2e} {:>11.3}% {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>5.2}x",
            model.name(),
            format!("{h}x{w}"),
            agreement.relative_error,
            100.0 * agreement.same_labels as f64 / agreement.pixels.max(1) as f64,
            mib(mem32),
            mib(mem16),
            ms(t32),
            ms(t16),
            t32.as_secs_f64() / t16.as_secs_f64()
        );
    }
    Ok(())
}

/// The models `--model` names (every preset for `all`).
fn compared_models(args: &BenchArgs) -> Result<Vec<Model>, Error> {
    Ok(if args.model.model == "all" {
        Model::ALL.to_vec()
    } else {
        vec![Model::from_name(&args.model.model)?]
    })
}

/// The preset without its final softmax (which would squash score errors): the class
/// scores.
fn scores_network(model: Model, width_divisor: usize) -> Result<Network, Error> {
    let net = model.build(&PresetOptions {
        width_divisor,
        ..Default::default()
    })?;
    let n = net.layers().len();
    let scores = match net.layers().last().map(|l| &l.op) {
        Some(Op::Softmax) => n - 1,
        _ => n,
    };
    net.sub_network(0..scores)
}

/// `runs` timed passes `f` after one warm-up pass: their median.
fn timed(runs: usize, f: impl Fn() -> Result<(), Error>) -> Result<Duration, Error> {
    f()?;
    let times = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f().map(|()| t.elapsed())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(median(times))
}

/// Times the network on the GPU: the median pass and one profiled pass.
fn time_gpu<'g>(
    gpu: &'g Gpu,
    net: &Network,
    x: &Array4<f32>,
    runs: usize,
    options: &PlanOptions,
) -> Result<GpuTimes<'g>, Error> {
    let d = x.dim();
    let plan = Plan::new(gpu, net, Shape::new(d.0, d.1, d.2, d.3), options)?;
    let total = timed(runs, || plan.forward(x.view()).map(drop))?;
    let (_, layers) = plan.forward_profiled(x.view())?;
    Ok(GpuTimes {
        gpu,
        total,
        layers,
        peak_memory: plan.peak_memory(),
        bands: plan.layout().map(|l| (l.band_count(), l.stages.len())),
        kernels: plan.layer_kernels(),
    })
}

/// Times `cpu`: the median pass and one profiled pass.
fn time_cpu(cpu: &CpuPlan, x: &Array4<f32>, runs: usize) -> Result<(Duration, LayerTimes), Error> {
    let mut methods: Vec<String> = Vec::new();
    for (_, m) in cpu.conv_methods() {
        if !methods.contains(&m.to_string()) {
            methods.push(m.to_string());
        }
    }
    println!("CPU convolution methods: {}", methods.join(", "));
    let total = timed(runs, || cpu.forward(x.view()).map(drop))?;
    let (_, layers) = cpu.forward_profiled(x.view())?;
    Ok((total, layers))
}

/// Short names of the distinct kernels a layer dispatches, for the table.
fn kernel_label(kernels: &[Kernel]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for k in kernels {
        let name = match k {
            Kernel::ConvDirect => "direct",
            Kernel::ConvTiled => "tiled",
            Kernel::ConvPointwise => "tiled-1x1",
            Kernel::ConvBlocked => "blocked",
            Kernel::ConvBlocked64 => "blocked-64",
            Kernel::ConvBlockedPacked => "blocked-packed",
            Kernel::ConvPackBlocked => "+pack",
            Kernel::ConvSplitReduce => "+split",
            Kernel::ConvCoop8 => "coop-8",
            Kernel::ConvCoop16 => "coop-16",
            other => other.tiled_variant().map_or(other.name(), |v| v.name()),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(" ")
}
