//! `dilated run`: a network on an NCHW float32 .npy, its raw scores written as .npy.

use std::path::PathBuf;

use dilated::Error;
use dilated::io::{read_npy4, write_npy};
use dilated::plan::executor::RanOn;

use super::args::{CpuPrecisionArgs, DeviceArgs, MemoryArgs, ModelArgs, WeightsArgs};
use super::device::{self, Device};
use super::network;
use super::report::warn_non_finite;

/// Arguments of `dilated run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The preset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Its weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Input: NCHW float32 .npy with 3 channels (BGR, mean already subtracted).
    #[arg(long)]
    pub input: PathBuf,
    /// Output: the network's scores as NCHW float32 .npy.
    #[arg(long)]
    pub output: PathBuf,
    /// Where it runs.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The GPU memory budget.
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// The CPU's arithmetic.
    #[command(flatten)]
    pub precision: CpuPrecisionArgs,
}

/// Runs the network on the input and writes the scores, warning about NaN or infinite values
/// in either.
pub fn execute(args: &RunArgs) -> Result<(), Error> {
    let (_, net) = network::load(&args.model, args.weights.weights.as_deref())?;
    let x = read_npy4(&args.input)?;
    warn_non_finite(&args.input.display().to_string(), x.iter().copied());
    let device = Device::open(&args.device)?;
    let executor = device
        .executor(net)
        .with_plan_options(args.precision.apply(args.memory.plan_options()));
    let run = device::forward(&executor, x.view())?;
    warn_non_finite("the output", run.output.iter().copied());
    write_npy(&args.output, &run.output)?;
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
