//! The `dilated` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use dilated::gpu::Kernel;
use dilated::net::{Model, PresetOptions};
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::plan::{BandedLayout, Plan, PlanOptions};
use dilated::{ConvAlgorithm, Gpu, Shape};
use ndarray::Array4;

#[derive(Parser)]
#[command(
    name = "dilated",
    version,
    about = "Dilated-convolution networks on any GPU, checked against the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a real network topology on the GPU and the CPU on a generated input and compares
    /// them (the default when no command is given).
    Demo(DemoArgs),
    /// Lists every adapter wgpu sees, with the limits that matter here.
    Info,
    /// Times a whole network on the GPU and the CPU with a per-layer table.
    Bench(BenchArgs),
    /// Converts weights between .caffemodel and .safetensors, checking them against a model.
    Convert(ConvertArgs),
    /// Runs a network on an NCHW float32 .npy and writes the raw scores as .npy (on the GPU,
    /// or on the CPU with a warning when there is none or it fails).
    Run(RunArgs),
    /// Segments an image into a colour-coded label PNG, as the reference predictor does (on the
    /// GPU, or on the CPU with a warning when there is none or it fails).
    Segment(SegmentArgs),
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// Input weights (.caffemodel or .safetensors).
    input: PathBuf,
    /// Output weights (.safetensors or .caffemodel).
    output: PathBuf,
    /// Preset the weights must fit.
    #[arg(long)]
    model: String,
    /// Width divisor of the preset the weights belong to.
    #[arg(long, default_value_t = 1)]
    width_divisor: usize,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Preset to run.
    #[arg(long)]
    model: String,
    /// Divides every front-end width by this (1 = the released size).
    #[arg(long, default_value_t = 1)]
    width_divisor: usize,
    /// Weights (.safetensors or .caffemodel).
    #[arg(long)]
    weights: PathBuf,
    /// Input: NCHW float32 .npy with 3 channels (BGR, mean already subtracted).
    #[arg(long)]
    input: PathBuf,
    /// Output: the network's scores as NCHW float32 .npy.
    #[arg(long)]
    output: PathBuf,
    /// Run on the CPU instead of the GPU.
    #[arg(long)]
    cpu: bool,
    /// Require the GPU: fail instead of running on the CPU when there is no adapter or the GPU
    /// run fails.
    #[arg(long, conflicts_with = "cpu")]
    gpu: bool,
    /// GPU memory budget, e.g. 512M or 1.5G (binary units): the image is processed in
    /// horizontal bands as needed so the plan stays under it; results are unchanged.
    #[arg(long, value_parser = parse_memory)]
    max_memory: Option<u64>,
}

#[derive(clap::Args)]
struct SegmentArgs {
    /// Image to segment (PNG, JPEG or BMP).
    image: PathBuf,
    /// Output label PNG in the dataset's palette.
    #[arg(short, long)]
    output: PathBuf,
    /// Preset to run.
    #[arg(long, default_value = "dilation8_pascal_voc")]
    model: String,
    /// Weights (.caffemodel or .safetensors); without them the network's initial (random)
    /// weights are used and the result is meaningless.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Divides every front-end width by this (1 = the released size; weights must match).
    #[arg(long, default_value_t = 1)]
    width_divisor: usize,
    /// Blend the label colours over the image instead of writing bare labels.
    #[arg(long)]
    overlay: bool,
    /// Also write the class probabilities as a [classes, height, width] float32 .npy.
    #[arg(long)]
    probs: Option<PathBuf>,
    /// Run on the CPU instead of the GPU.
    #[arg(long)]
    cpu: bool,
    /// Require the GPU: fail instead of running on the CPU when there is no adapter or the GPU
    /// run fails.
    #[arg(long, conflicts_with = "cpu")]
    gpu: bool,
    /// Tile size HxW (default: the model's deploy input size); each side must be 372 plus a
    /// multiple of 8.
    #[arg(long, value_parser = parse_size)]
    tile: Option<(usize, usize)>,
    /// GPU memory budget, e.g. 512M or 1.5G (binary units): the image is processed in
    /// horizontal bands as needed so the plan stays under it; results are unchanged.
    #[arg(long, value_parser = parse_memory)]
    max_memory: Option<u64>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Preset to run.
    #[arg(long, default_value = "dilation10_cityscapes")]
    model: String,
    /// Divides every front-end width by this (1 = the released size).
    #[arg(long, default_value_t = 1)]
    width_divisor: usize,
    /// Input height and width; defaults to the model's deploy size.
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
    /// Timed forward passes per backend (after one warm-up pass).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip the CPU side.
    #[arg(long)]
    no_cpu: bool,
    /// Only build the plan's description: shapes, costs and peak GPU memory, no arithmetic and
    /// no device needed.
    #[arg(long)]
    plan_only: bool,
    /// GPU memory budget, e.g. 512M or 1.5G (binary units): the image is processed in
    /// horizontal bands as needed so the plan stays under it; results are unchanged.
    #[arg(long, value_parser = parse_memory)]
    max_memory: Option<u64>,
    /// Convolution kernel for every layer; `auto` lets each layer choose (the table names the
    /// choice).
    #[arg(long, value_enum, default_value_t = Algorithm::Auto)]
    algorithm: Algorithm,
}

/// `--algorithm` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Algorithm {
    Auto,
    Direct,
    Tiled,
    Blocked,
}

impl From<Algorithm> for ConvAlgorithm {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::Auto => ConvAlgorithm::Auto,
            Algorithm::Direct => ConvAlgorithm::Direct,
            Algorithm::Tiled => ConvAlgorithm::Tiled,
            Algorithm::Blocked => ConvAlgorithm::Blocked,
        }
    }
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Preset to run.
    #[arg(long, default_value = "dilation8_pascal_voc")]
    model: String,
    /// Divides every front-end width by this (1 = the released size).
    #[arg(long, default_value_t = 8)]
    width_divisor: usize,
    /// Input height and width, e.g. 500x500; the default is VOC's deploy size (at least 373 per side).
    #[arg(long, default_value = "900x900", value_parser = parse_size)]
    size: (usize, usize),
    /// Seed of the weights and the input.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            model: "dilation8_pascal_voc".into(),
            width_divisor: 8,
            size: (900, 900),
            seed: 1,
        }
    }
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected HxW, got {s:?}"))?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    Ok((parse(h)?, parse(w)?))
}

fn parse_memory(s: &str) -> Result<u64, String> {
    dilated::plan::parse_memory_size(s).map_err(|e| e.to_string())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() -> ExitCode {
    // The executor's fallback warnings are printed by the commands themselves, once.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,dilated::executor=error"),
    )
    .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo(DemoArgs::default())) {
        Command::Demo(args) => demo(&args),
        Command::Info => info(),
        Command::Bench(args) => bench(&args),
        Command::Convert(args) => convert(&args),
        Command::Run(args) => run(&args),
        Command::Segment(args) => segment(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> Result<(), dilated::Error> {
    let adapters = dilated::gpu::list_adapters(wgpu::Backends::all());
    if adapters.is_empty() {
        return Err(dilated::Error::NoAdapter {
            detail: String::new(),
        });
    }
    for a in adapters {
        println!("{a}\n");
    }
    Ok(())
}

/// A deterministic image-like input: smooth gradients plus seeded noise, in the 0..255 range
/// minus a mean, as the models expect.
fn generated_input(shape: Shape, seed: u64) -> Array4<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array4::from_shape_fn(shape.dims(), |(_, c, y, x)| {
        let base = 127.0 * ((y as f32 / 37.0 + c as f32).sin() * (x as f32 / 53.0).cos());
        base + rng.random_range(-20.0..20.0)
    })
}

fn demo(args: &DemoArgs) -> Result<(), dilated::Error> {
    let model = Model::from_name(&args.model)?;
    let options = PresetOptions {
        width_divisor: args.width_divisor,
        seed: args.seed,
        ..Default::default()
    };
    let net = model.build(&options)?;
    let shape = Shape::new(1, 3, args.size.0, args.size.1);
    let report = net.report(shape)?;
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.name(), gpu.adapter().info.backend);
    println!(
        "network: {} (front-end widths / {}), {} layers, {:.2} M parameters, input {shape}",
        model.name(),
        args.width_divisor,
        net.layers().len(),
        net.params() as f64 / 1e6
    );
    let x = generated_input(shape, args.seed);

    let t = Instant::now();
    let plan = GpuPlan::new(&gpu, &net, shape)?;
    let compile = t.elapsed();
    let t = Instant::now();
    let (gpu_out, gpu_times) = plan.forward_profiled(x.view())?;
    let gpu_total = t.elapsed();

    let cpu = CpuPlan::new(&net)?;
    let t = Instant::now();
    let (cpu_out, cpu_times) = cpu.forward_profiled(x.view())?;
    let cpu_total = t.elapsed();

    println!(
        "\n{:<12} {:<8} {:>18} {:>6} {:>9} {:>10} {:>10}",
        "layer", "op", "output", "RF", "GFLOP", "GPU ms", "CPU ms"
    );
    for ((r, (_, g)), (_, c)) in report.iter().zip(&gpu_times.layers).zip(&cpu_times.layers) {
        println!(
            "{:<12} {:<8} {:>18} {:>6} {:>9.3} {:>10.2} {:>10.2}",
            r.name,
            r.kind,
            r.output.to_string(),
            r.receptive_field,
            r.flops as f64 / 1e9,
            g.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3
        );
    }
    let flops: u64 = report.iter().map(|r| r.flops).sum();
    let max_ref = cpu_out.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let max_diff = gpu_out
        .iter()
        .zip(&cpu_out)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    let labels_gpu = dilated::cpu::reference::argmax(gpu_out.view());
    let labels_cpu = dilated::cpu::reference::argmax(cpu_out.view());
    let same = labels_gpu
        .iter()
        .zip(&labels_cpu)
        .filter(|(a, b)| a == b)
        .count();
    println!(
        "\ntotal {:.2} GFLOP; GPU {:.1} ms ({:.2} GFLOP/s, plan built in {:.0} ms, peak GPU memory {:.1} MiB); CPU {:.1} ms ({:.2} GFLOP/s)",
        flops as f64 / 1e9,
        gpu_total.as_secs_f64() * 1e3,
        flops as f64 / 1e9 / gpu_total.as_secs_f64(),
        compile.as_secs_f64() * 1e3,
        plan.peak_memory() as f64 / (1 << 20) as f64,
        cpu_total.as_secs_f64() * 1e3,
        flops as f64 / 1e9 / cpu_total.as_secs_f64()
    );
    println!(
        "GPU vs CPU: max |gpu - cpu| / max |cpu| = {:.2e} over {} scores; labels agree on {}/{} pixels ({})",
        max_diff / max_ref.max(f64::MIN_POSITIVE),
        cpu_out.len(),
        same,
        labels_cpu.len(),
        if gpu_times.from_timestamps {
            "GPU layer times from timestamp queries"
        } else {
            "GPU layer times measured layer by layer"
        }
    );
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(args: &BenchArgs) -> Result<(), dilated::Error> {
    let model = Model::from_name(&args.model)?;
    let (h, w) = args.size.unwrap_or(model.info().input_size);
    let shape = Shape::new(1, 3, h, w);
    let options = PresetOptions {
        width_divisor: args.width_divisor,
        ..Default::default()
    };
    let net = model.build(&options)?;
    let report = net.report(shape)?;
    let flops: u64 = report.iter().map(|r| r.flops).sum();
    let largest = report.iter().map(|r| r.activation_bytes).max().unwrap_or(0);
    println!(
        "{} (widths / {}) at {h}x{w}: {:.1} GFLOP, {:.2} M parameters, largest activation {:.0} MiB",
        model.name(),
        args.width_divisor,
        flops as f64 / 1e9,
        net.params() as f64 / 1e6,
        largest as f64 / (1 << 20) as f64
    );
    if args.plan_only {
        let peak = GpuPlan::estimate_memory(&net, shape)?;
        println!(
            "{:<14} {:>20} {:>10} {:>12}",
            "layer", "output", "GFLOP", "activation"
        );
        for r in &report {
            println!(
                "{:<14} {:>20} {:>10.2} {:>9.1} MiB",
                r.name,
                r.output.to_string(),
                r.flops as f64 / 1e9,
                r.activation_bytes as f64 / (1 << 20) as f64
            );
        }
        println!(
            "peak GPU memory of the plan: {:.1} MiB ({peak} bytes)",
            peak as f64 / (1 << 20) as f64
        );
        if let Some(budget) = args.max_memory {
            match BandedLayout::for_budget(&net, shape, budget)? {
                None => println!(
                    "within the budget of {:.1} MiB: the whole image in one pass",
                    mib(budget)
                ),
                Some(l) => println!(
                    "budget {:.1} MiB: in stages of horizontal bands, {:.1} GFLOP in all\n{}\n\
                     peak GPU memory of the banded plan: {:.1} MiB ({} bytes)",
                    mib(budget),
                    l.flops(&net)? as f64 / 1e9,
                    l.describe(&net),
                    mib(l.peak_memory),
                    l.peak_memory
                ),
            }
        }
        return Ok(());
    }
    let runs = args.runs.max(1);
    let x = generated_input(shape, 1);
    let gpu = Gpu::new()?;
    let plan = Plan::new(
        &gpu,
        &net,
        shape,
        &PlanOptions {
            max_memory: args.max_memory,
            algorithm: args.algorithm.into(),
        },
    )?;
    plan.forward(x.view())?;
    let gpu_runs = (0..runs)
        .map(|_| {
            let t = Instant::now();
            plan.forward(x.view()).map(|_| t.elapsed())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (_, gpu_layers) = plan.forward_profiled(x.view())?;
    let gpu_total = median(gpu_runs);
    let cpu = if args.no_cpu {
        None
    } else {
        let cpu = CpuPlan::new(&net)?;
        cpu.forward(x.view())?;
        let cpu_runs = (0..runs)
            .map(|_| {
                let t = Instant::now();
                cpu.forward(x.view()).map(|_| t.elapsed())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (_, layers) = cpu.forward_profiled(x.view())?;
        Some((median(cpu_runs), layers))
    };
    println!(
        "adapter: {} ({:?}); peak GPU memory {:.1} MiB{}",
        gpu.name(),
        gpu.adapter().info.backend,
        plan.peak_memory() as f64 / (1 << 20) as f64,
        match plan.layout() {
            Some(l) => format!(
                " in {} bands over {} stages",
                l.band_count(),
                l.stages.len()
            ),
            None => String::new(),
        }
    );
    println!(
        "GPU layer times: {}",
        if gpu_layers.from_timestamps {
            "timestamp queries"
        } else {
            "host clock, one layer per submission"
        }
    );
    let gpu_sum: f64 = gpu_layers.layers.iter().map(|(_, d)| ms(*d)).sum();
    let cpu_sum: f64 = cpu
        .as_ref()
        .map_or(0.0, |(_, l)| l.layers.iter().map(|(_, d)| ms(*d)).sum());
    let kernels = plan.layer_kernels();
    println!(
        "\n{:<14} {:>20} {:>9} | {:<13} {:>10} {:>8} {:>6} | {:>10} {:>8} {:>6}",
        "layer",
        "output",
        "GFLOP",
        "GPU kernel",
        "GPU ms",
        "GFLOP/s",
        "share",
        "CPU ms",
        "GFLOP/s",
        "share"
    );
    for (i, r) in report.iter().enumerate() {
        let g = ms(gpu_layers.layers[i].1);
        let gf = r.flops as f64 / 1e9;
        let kernel = kernels
            .iter()
            .find(|(n, _)| *n == r.name)
            .map_or(String::new(), |(_, k)| kernel_label(k));
        print!(
            "{:<14} {:>20} {:>9.2} | {:<13} {:>10.2} {:>8.1} {:>5.1}% |",
            r.name,
            r.output.to_string(),
            gf,
            kernel,
            g,
            gf / g * 1e3,
            100.0 * g / gpu_sum
        );
        match &cpu {
            Some((_, l)) => {
                let c = ms(l.layers[i].1);
                println!(
                    " {:>10.2} {:>8.1} {:>5.1}%",
                    c,
                    gf / c * 1e3,
                    100.0 * c / cpu_sum
                );
            }
            None => println!(),
        }
    }
    let gf = flops as f64 / 1e9;
    println!(
        "\nGPU: {:.1} ms per forward pass (median of {runs}), {:.1} GFLOP/s on {}",
        ms(gpu_total),
        gf / gpu_total.as_secs_f64(),
        gpu.name()
    );
    if let Some((t, _)) = cpu {
        println!(
            "CPU: {:.1} ms per forward pass (median of {runs}), {:.1} GFLOP/s on {} threads",
            ms(t),
            gf / t.as_secs_f64(),
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// Short names of the distinct kernels a layer dispatches, for the bench table.
fn kernel_label(kernels: &[Kernel]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for k in kernels {
        let name = match k {
            Kernel::ConvDirect => "direct",
            Kernel::ConvTiled => "tiled",
            Kernel::ConvPointwise => "tiled-1x1",
            Kernel::ConvBlocked => "blocked",
            Kernel::ConvSplitReduce => "+split",
            other => other.name(),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(" ")
}

/// Builds a preset and loads weights into it.
fn load_model(
    model: &str,
    width_divisor: usize,
    weights: Option<&PathBuf>,
) -> Result<(Model, dilated::net::Network), dilated::Error> {
    let model = Model::from_name(model)?;
    let mut net = model.build(&PresetOptions {
        width_divisor,
        ..Default::default()
    })?;
    if let Some(path) = weights {
        net.load_weights(&dilated::weights::WeightSet::load(path)?)?;
        for layer in net.layers() {
            match &layer.op {
                dilated::net::Op::Conv { weight, bias, .. } => warn_non_finite(
                    &format!("{}: the weights of layer {}", path.display(), layer.name),
                    weight.iter().chain(bias.iter().flatten()).copied(),
                ),
                dilated::net::Op::Deconv { weight, .. } => warn_non_finite(
                    &format!("{}: the weights of layer {}", path.display(), layer.name),
                    weight.iter().copied(),
                ),
                _ => {}
            }
        }
    }
    Ok((model, net))
}

fn convert(args: &ConvertArgs) -> Result<(), dilated::Error> {
    let set = dilated::weights::WeightSet::load(&args.input)?;
    let (model, net) = load_model(&args.model, args.width_divisor, None)?;
    set.check(&net.required_weights())?;
    match args.output.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => dilated::weights::write_safetensors(&args.output, &set)?,
        Some("caffemodel") => dilated::weights::write_caffemodel(&args.output, &set, false)?,
        _ => {
            return Err(dilated::Error::Weights(format!(
                "{}: the output must end in .safetensors or .caffemodel",
                args.output.display()
            )));
        }
    }
    println!(
        "wrote {} ({} layers, {:.2} M parameters, checked against {})",
        args.output.display(),
        set.len(),
        set.num_parameters() as f64 / 1e6,
        model.name()
    );
    Ok(())
}

/// Warns (on stderr) about NaN or infinite input values; they propagate through the network
/// the same way on both backends.
fn warn_non_finite(what: &str, values: impl Iterator<Item = f32>) {
    let bad = values.filter(|v| !v.is_finite()).count();
    if bad > 0 {
        eprintln!(
            "warning: {what} has {bad} NaN or infinite values; they propagate into the output"
        );
    }
}

/// Opens the GPU unless the CPU was asked for: `None` for `--cpu`, the error itself (to be
/// answered by a CPU run) unless `--gpu` requires the device.
fn open_gpu(
    cpu: bool,
    require: bool,
) -> Result<Option<Result<Gpu, dilated::Error>>, dilated::Error> {
    Ok(match (cpu, require) {
        (true, _) => None,
        (false, true) => Some(Ok(Gpu::new()?)),
        (false, false) => Some(Gpu::new()),
    })
}

fn run(args: &RunArgs) -> Result<(), dilated::Error> {
    use dilated::plan::executor::{Executor, RanOn};
    let (_, net) = load_model(&args.model, args.width_divisor, Some(&args.weights))?;
    let x = dilated::weights::read_npy4(&args.input)?;
    warn_non_finite(&args.input.display().to_string(), x.iter().copied());
    let gpu = open_gpu(args.cpu, args.gpu)?;
    let options = PlanOptions {
        max_memory: args.max_memory,
        ..Default::default()
    };
    let executor = match &gpu {
        None => Executor::cpu(&net),
        Some(Ok(g)) if args.gpu => Executor::gpu(&net, g),
        Some(g) => Executor::gpu_or_cpu(&net, g.as_ref()),
    }
    .with_plan_options(options);
    let run = executor.forward(x.view())?;
    if let (Some(why), Some(_)) = (&run.fallback_reason, &gpu) {
        eprintln!("warning: ran on the CPU instead of the GPU: {why}");
    }
    warn_non_finite("the output", run.output.iter().copied());
    dilated::weights::write_npy(&args.output, &run.output)?;
    println!(
        "wrote {} {:?} (computed on the {})",
        args.output.display(),
        run.output.dim(),
        match run.ran_on {
            RanOn::Gpu => "GPU",
            RanOn::Cpu => "CPU",
        }
    );
    Ok(())
}

fn segment(args: &SegmentArgs) -> Result<(), dilated::Error> {
    use dilated::segment::{Backend, colorize, load_image_bgr, overlay, palette, save_png};
    let image = load_image_bgr(&args.image)?;
    // Pixels of 8-bit images are always finite: NaN or infinite values can only come from the
    // weights, which `load_model` checks.
    let (model, net) = load_model(&args.model, args.width_divisor, args.weights.as_ref())?;
    if args.weights.is_none() {
        eprintln!(
            "warning: no --weights given: using randomly initialised weights; the labels are meaningless"
        );
    }
    let gpu = match open_gpu(args.cpu, args.gpu)? {
        Some(Err(e)) => {
            eprintln!("warning: no GPU ({e}); segmenting on the CPU");
            None
        }
        Some(Ok(g)) => Some(g),
        None => None,
    };
    let on_gpu = |g: &Gpu| -> Result<_, dilated::Error> {
        segment_on(args, &image, model, &net, Backend::Gpu(g), g.name())
    };
    let result = match &gpu {
        Some(g) => match on_gpu(g) {
            Err(e) if e.is_gpu_failure() && !args.gpu => {
                eprintln!("warning: the GPU run failed ({e}); segmenting on the CPU");
                segment_on(args, &image, model, &net, Backend::Cpu, "the CPU")?
            }
            other => other?,
        },
        None => segment_on(args, &image, model, &net, Backend::Cpu, "the CPU")?,
    };
    let (result, tiles, tile) = result;
    let (h, w, _) = image.dim();
    let colored = colorize(&result.labels, &palette(model));
    let picture = if args.overlay {
        overlay(&image, &colored, 0.5)
    } else {
        colored
    };
    if let (Some(path), Some(p)) = (&args.probs, &result.probabilities) {
        dilated::weights::write_npy(path, p)?;
    }
    save_png(&args.output, &picture)?;
    println!(
        "wrote {} ({w}x{h}, {tiles} tile(s) of {}x{})",
        args.output.display(),
        tile.0,
        tile.1
    );
    Ok(())
}

/// Segments `image` on one backend: the result, the number of tiles and the tile size.
fn segment_on(
    args: &SegmentArgs,
    image: &ndarray::Array3<f32>,
    model: Model,
    net: &dilated::net::Network,
    backend: dilated::segment::Backend<'_>,
    device: &str,
) -> Result<(dilated::segment::Segmentation, usize, (usize, usize)), dilated::Error> {
    use dilated::segment::Segmenter;
    let options = PlanOptions {
        max_memory: args.max_memory,
        ..Default::default()
    };
    let segmenter = Segmenter::with_options(model, net, backend, args.tile, &options)?;
    if let (Some(budget), Some(bytes)) = (args.max_memory, segmenter.gpu_memory()) {
        println!(
            "GPU memory of the plan: {:.1} MiB (budget {:.1} MiB)",
            mib(bytes),
            mib(budget)
        );
    }
    let (h, w, _) = image.dim();
    let (ty, tx) = segmenter.tiles(h, w);
    let bar = (ty * tx > 1).then(|| {
        let bar = indicatif::ProgressBar::new((ty * tx) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} tiles, {elapsed} elapsed, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} on {device}", model.name()));
        bar
    });
    let result = segmenter.segment(image.view(), args.probs.is_some(), &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish();
    }
    Ok((result?, ty * tx, segmenter.tile()))
}
