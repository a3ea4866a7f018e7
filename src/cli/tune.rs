//! `dilated tune`: measures the convolution kernels of every layer geometry of a network on
//! this adapter, prints each candidate's time and the winner, and records the winners in the
//! cache directory, where later plans find them (see `dilated::gpu::tune`).

use std::time::Instant;

use dilated::gpu::tune::{ChoiceSource, Tuning};
use dilated::net::PresetOptions;
use dilated::plan::{GpuPlan, Plan, PlanOptions};
use dilated::{ConvAlgorithm, Error, Gpu, Shape};

use super::args::{MemoryArgs, ModelArgs, parse_size};
use super::network;
use super::report::ms;

/// Arguments of `dilated tune`.
#[derive(clap::Args)]
#[command(mut_arg("model", |a| a.required(false).default_value("dilation10_cityscapes")))]
pub struct TuneArgs {
    /// The preset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input height and width; defaults to the model's deploy size.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Measure only the geometries without a recorded choice (default: measure every one
    /// again).
    #[arg(long)]
    pub missing_only: bool,
    /// The GPU memory budget: the plans of a banded run (no split reductions) are tuned.
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// Tunes the network's convolutions and prints the measurements.
pub fn execute(args: &TuneArgs) -> Result<(), Error> {
    let (model, net) = network::build(&args.model, PresetOptions::default().seed)?;
    let (h, w) = args.size.unwrap_or(model.info().input_size);
    let shape = Shape::new(1, 3, h, w);
    let gpu = Gpu::new()?;
    println!(
        "adapter: {} ({:?}, driver {} {})",
        gpu.name(),
        gpu.adapter().info.backend,
        gpu.adapter().info.driver,
        gpu.adapter().info.driver_info
    );
    match gpu.tuning_file() {
        Some(f) => println!("choices file: {}", f.display()),
        None => println!("no cache directory: the choices are not kept"),
    }
    let options = PlanOptions {
        max_memory: args.memory.max_memory,
        precision: args.memory.precision,
        algorithm: ConvAlgorithm::Auto,
        tuning: if args.missing_only {
            Tuning::On
        } else {
            Tuning::Retune
        },
        ..Default::default()
    };
    let start = Instant::now();
    let plan = Plan::new(&gpu, &net, shape, &options)?;
    let tuning_time = start.elapsed();
    println!(
        "{} (widths / {}) at {h}x{w}",
        model.name(),
        args.model.width_divisor
    );
    println!(
        "\n{:<10} {:<44} {:>8}  candidates (ms, GFLOP/s; * = pruned after its warm-up)",
        "layer", "geometry", "GFLOP"
    );
    let mut measured = 0;
    for t in plan.conv_choices() {
        let gflop = t.flops as f64 / 1e9;
        let list = if t.candidates.is_empty() {
            format!(
                "{} ({})",
                t.choice.name(),
                match t.source {
                    ChoiceSource::Measured => "same geometry as above",
                    ChoiceSource::Cached => "recorded earlier",
                    ChoiceSource::Forced => "forced",
                    ChoiceSource::Heuristic => "heuristic",
                }
            )
        } else {
            measured += 1;
            t.candidates
                .iter()
                .map(|c| match &c.error {
                    Some(e) => format!("{} failed ({e})", c.choice.name()),
                    None => format!(
                        "{} {:.2} ({:.1}){}",
                        c.choice.name(),
                        ms(c.time),
                        gflop / c.time.as_secs_f64(),
                        if c.runs == 0 { "*" } else { "" }
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<10} {:<44} {:>8.3}  -> {:<14} {list}",
            t.layer,
            t.geometry,
            gflop,
            format!("{:?}", t.kernel)
        );
    }
    // One forward pass with the chosen kernels, to set the tuning time against.
    let x = network::generated_input(shape, 1);
    plan.forward(x.view())?;
    let start = Instant::now();
    plan.forward(x.view())?;
    let pass = start.elapsed();
    println!(
        "\n{measured} geometries measured; plan built and tuned in {:.0} ms; one forward pass {:.1} ms",
        ms(tuning_time),
        ms(pass)
    );
    // Beside it, the heuristic's choices (whole-image plans only, to stay within a budget).
    let heuristic = args
        .memory
        .max_memory
        .is_none()
        .then(|| GpuPlan::with_tuning(&gpu, &net, shape, ConvAlgorithm::Auto, Tuning::Off));
    if let Some(Ok(heuristic)) = heuristic {
        heuristic.forward(x.view())?;
        let start = Instant::now();
        heuristic.forward(x.view())?;
        println!(
            "the heuristic's choices: one forward pass {:.1} ms",
            ms(start.elapsed())
        );
    }
    Ok(())
}
