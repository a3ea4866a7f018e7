//! The one place the commands choose their backend. `--cpu` runs on the CPU only; `--gpu`
//! requires the GPU, so that any GPU failure is an error; neither runs on the GPU and falls back
//! to the CPU when there is no GPU or the GPU fails, warning on stderr why. The choice and the
//! fallback are the library's [`Executor`]'s: this module opens the GPU the flags ask for,
//! builds the executor and words the warning.

use dilated::net::Network;
use dilated::plan::executor::{Execution, Executor, RunOn};
use dilated::{Error, Gpu};
use ndarray::ArrayView4;

use super::args::DeviceArgs;

/// The backend the device flags ask for, with the GPU opened unless the CPU was asked for.
pub enum Device {
    /// `--cpu`.
    Cpu,
    /// `--gpu`: the GPU, required.
    Gpu(Gpu),
    /// Neither flag: the GPU, or the error of opening one, to be answered by the CPU.
    GpuOrCpu(Result<Gpu, Error>),
}

impl Device {
    /// Opens the GPU unless `--cpu` was given; with `--gpu`, failing to open one is an error.
    pub fn open(flags: &DeviceArgs) -> Result<Self, Error> {
        Ok(match flags.run_on() {
            RunOn::Cpu => Self::Cpu,
            RunOn::Gpu => Self::Gpu(Gpu::new()?),
            RunOn::GpuOrCpu => Self::GpuOrCpu(Gpu::new()),
        })
    }

    /// An executor of `network` on this backend (it keeps the network: use
    /// [`Executor::network`]).
    pub fn executor(&self, network: Network) -> Executor<'_> {
        match self {
            Self::Cpu => Executor::cpu(&network),
            Self::Gpu(gpu) => Executor::gpu(&network, gpu),
            Self::GpuOrCpu(gpu) => Executor::gpu_or_cpu(&network, gpu.as_ref()),
        }
    }
}

/// Runs a command's own work through `executor`: `on_gpu` with its GPU, or `on_cpu` for
/// `--cpu`, and without `--gpu` when there is no GPU or `on_gpu` fails for reasons of the GPU's
/// own, after warning on stderr that the command is `doing` its work on the CPU and why.
pub fn run<'g, T>(
    executor: &Executor<'g>,
    doing: &str,
    on_gpu: impl FnOnce(&'g Gpu) -> Result<T, Error>,
    on_cpu: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let opened = executor.device().is_some();
    let run = executor.run(on_gpu, |why| {
        if let Some(why) = why {
            if opened {
                eprintln!("warning: the GPU run failed ({why}); {doing} on the CPU");
            } else {
                eprintln!("warning: no GPU ({why}); {doing} on the CPU");
            }
        }
        on_cpu()
    })?;
    Ok(run.output)
}

/// Runs the executor's network on `input`, warning on stderr when it ran on the CPU instead of
/// the GPU and why.
pub fn forward(executor: &Executor<'_>, input: ArrayView4<f32>) -> Result<Execution, Error> {
    let run = executor.forward(input)?;
    if let Some(why) = &run.fallback_reason {
        eprintln!("warning: ran on the CPU instead of the GPU: {why}");
    }
    Ok(run)
}
