//! Running a network on the GPU with the CPU as a fallback.
//!
//! [`Executor`] runs a [`Network`] where the caller asks: on the GPU only, on the CPU only, or
//! on the GPU falling back to the CPU when there is no adapter, the device is lost, or a GPU run
//! fails for reasons of the GPU's own ([`Error::is_gpu_failure`]). A fallback is logged as a
//! warning and reported in the [`Execution`], so callers always know which backend produced a
//! result. [`Executor::run`] makes the same choice for work of the caller's own (a whole
//! segmentation, a timed benchmark) given as one closure per backend.
//!
//! ```no_run
//! use dilated::plan::executor::{Executor, RanOn};
//! use dilated::net::{Model, PresetOptions};
//! use dilated::{Gpu, Shape};
//! use ndarray::Array4;
//!
//! let net = Model::PascalVoc.build(&PresetOptions::default())?;
//! let gpu = Gpu::new(); // may fail: no adapter
//! let executor = Executor::gpu_or_cpu(&net, gpu.as_ref());
//! let x = Array4::<f32>::zeros((1, 3, 500, 500));
//! let run = executor.forward(x.view())?;
//! if run.ran_on == RanOn::Cpu {
//!     eprintln!("ran on the CPU: {}", run.fallback_reason.unwrap_or_default());
//! }
//! # Ok::<(), dilated::Error>(())
//! ```

use std::sync::{Arc, Mutex};

use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::net::Network;
use crate::plan::banded::Plan;
use crate::plan::cpu::CpuPlan;
use crate::plan::options::PlanOptions;
use crate::spec::Shape;

/// Where an [`Executor`] may run a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOn {
    /// On the GPU only: GPU failures are errors.
    Gpu,
    /// On the CPU only.
    Cpu,
    /// On the GPU, falling back to the CPU when the GPU is missing or fails.
    GpuOrCpu,
}

/// Which backend produced a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RanOn {
    /// The GPU.
    Gpu,
    /// The CPU.
    Cpu,
}

/// The output of one forward pass (or of the work given to [`Executor::run`]) and where it
/// ran.
#[derive(Clone, Debug)]
pub struct Execution<T = Array4<f32>> {
    /// The network's output, or what the work returned.
    pub output: T,
    /// The backend that produced it.
    pub ran_on: RanOn,
    /// Why the GPU was not used, when a GPU run was wanted but the CPU ran instead.
    pub fallback_reason: Option<String>,
}

/// A network bound to a backend choice; compiles GPU plans and the CPU plan on first use.
///
/// `Send + Sync`: several threads may call [`Executor::forward`] at once (GPU passes of one
/// plan are serialised by the plan; the CPU plan runs concurrently).
pub struct Executor<'g> {
    network: Network,
    run_on: RunOn,
    gpu: Option<&'g Gpu>,
    no_gpu: Option<String>,
    /// The GPU plan of the most recent input shape (plans hold GPU memory, so only one is
    /// kept).
    plan: Mutex<Option<(Shape, Arc<Plan<'g>>)>>,
    cpu: Mutex<Option<Arc<CpuPlan>>>,
    options: PlanOptions,
}

impl<'g> Executor<'g> {
    fn with(
        network: &Network,
        run_on: RunOn,
        gpu: Option<&'g Gpu>,
        no_gpu: Option<String>,
    ) -> Self {
        Self {
            network: network.clone(),
            run_on,
            gpu,
            no_gpu,
            plan: Mutex::new(None),
            cpu: Mutex::new(None),
            options: PlanOptions::default(),
        }
    }

    /// Sets the plans' options (a memory budget makes the GPU plan process the image in bands;
    /// `cpu_precision` sets the CPU plan's arithmetic).
    pub fn with_plan_options(mut self, options: PlanOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs `network` on the CPU only.
    pub fn cpu(network: &Network) -> Self {
        Self::with(network, RunOn::Cpu, None, None)
    }

    /// Runs `network` on `gpu` only; GPU failures are returned as errors.
    pub fn gpu(network: &Network, gpu: &'g Gpu) -> Self {
        Self::with(network, RunOn::Gpu, Some(gpu), None)
    }

    /// Runs `network` on the GPU when `gpu` holds one (pass `Gpu::new().as_ref()`), and on the
    /// CPU when it holds the error of opening one or when a GPU run fails.
    pub fn gpu_or_cpu(network: &Network, gpu: std::result::Result<&'g Gpu, &Error>) -> Self {
        match gpu {
            Ok(g) => Self::with(network, RunOn::GpuOrCpu, Some(g), None),
            Err(e) => {
                log::warn!("no GPU ({e}); {} runs on the CPU", network.name());
                Self::with(network, RunOn::GpuOrCpu, None, Some(e.to_string()))
            }
        }
    }

    /// Where the executor may run.
    pub fn run_on(&self) -> RunOn {
        self.run_on
    }

    /// The GPU, if the executor has one.
    pub fn device(&self) -> Option<&'g Gpu> {
        self.gpu
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Runs the network on `input` (NCHW, any size the network accepts). Errors in the request
    /// itself (shapes) are returned whatever the backend; GPU failures are returned for
    /// [`RunOn::Gpu`] and answered by a CPU run for [`RunOn::GpuOrCpu`].
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Execution> {
        let d = input.dim();
        let shape = Shape::new(d.0, d.1, d.2, d.3);
        // Request errors first, so they are never mistaken for GPU failures.
        self.network.shapes(shape)?;
        self.run(
            |gpu| self.forward_gpu(gpu, shape, input),
            |_| self.cpu_plan()?.forward(input),
        )
    }

    /// Runs work of the caller's own where [`Executor::forward`] would run the network:
    /// `on_gpu` with the GPU, or `on_cpu` for [`RunOn::Cpu`], and for [`RunOn::GpuOrCpu`] when
    /// there is no GPU, the device was lost, or `on_gpu` fails for reasons of the GPU's own
    /// ([`Error::is_gpu_failure`]). `on_cpu` receives the reason of a fallback (`None` for
    /// [`RunOn::Cpu`]) before it starts; other errors of `on_gpu` are returned as they are.
    pub fn run<T>(
        &self,
        on_gpu: impl FnOnce(&'g Gpu) -> Result<T>,
        on_cpu: impl FnOnce(Option<&str>) -> Result<T>,
    ) -> Result<Execution<T>> {
        let fallback_reason = match (self.run_on, self.gpu) {
            (RunOn::Cpu, _) => None,
            (RunOn::Gpu, None) => {
                return Err(Error::NoAdapter {
                    detail: " (the executor has no GPU)".into(),
                });
            }
            (RunOn::GpuOrCpu, None) => {
                Some(self.no_gpu.clone().unwrap_or_else(|| "no GPU".to_string()))
            }
            (_, Some(gpu)) => match alive(gpu).and_then(|()| on_gpu(gpu)) {
                Ok(output) => {
                    return Ok(Execution {
                        output,
                        ran_on: RanOn::Gpu,
                        fallback_reason: None,
                    });
                }
                Err(e) if self.run_on == RunOn::GpuOrCpu && e.is_gpu_failure() => {
                    log::warn!(
                        "the GPU run of {} failed ({e}); running on the CPU",
                        self.network.name()
                    );
                    Some(e.to_string())
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Execution {
            output: on_cpu(fallback_reason.as_deref())?,
            ran_on: RanOn::Cpu,
            fallback_reason,
        })
    }

    fn forward_gpu(
        &self,
        gpu: &'g Gpu,
        shape: Shape,
        input: ArrayView4<f32>,
    ) -> Result<Array4<f32>> {
        let plan = {
            // A panic while building a plan leaves at worst no plan cached.
            let mut cached = self.plan.lock().unwrap_or_else(|p| p.into_inner());
            match &*cached {
                Some((s, plan)) if *s == shape => plan.clone(),
                _ => {
                    // Free the old plan's memory before building the new one.
                    *cached = None;
                    let plan = Arc::new(Plan::new(gpu, &self.network, shape, &self.options)?);
                    *cached = Some((shape, plan.clone()));
                    plan
                }
            }
        };
        plan.forward(input)
    }

    fn cpu_plan(&self) -> Result<Arc<CpuPlan>> {
        let mut cached = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = &*cached {
            return Ok(plan.clone());
        }
        let plan = Arc::new(CpuPlan::with_precision(
            &self.network,
            self.options.cpu_precision,
        )?);
        *cached = Some(plan.clone());
        Ok(plan)
    }
}

/// `Err` when `gpu` was lost, so no work is queued behind a dead device.
fn alive(gpu: &Gpu) -> Result<()> {
    if gpu.is_lost() {
        return Err(Error::Device(format!(
            "the device was lost ({})",
            gpu.lost_reason().unwrap_or_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> Network {
        Network::builder("relu", 3).relu("relu").build().unwrap()
    }

    #[test]
    fn run_on_the_cpu_only_calls_the_cpu_work_without_a_reason() {
        let net = network();
        let run = Executor::cpu(&net)
            .run(
                |_| -> Result<u32> { unreachable!("no GPU work on the CPU only") },
                |why| {
                    assert_eq!(why, None);
                    Ok(7)
                },
            )
            .unwrap();
        assert_eq!(
            (run.output, run.ran_on, run.fallback_reason),
            (7, RanOn::Cpu, None)
        );
    }

    #[test]
    fn run_without_a_gpu_tells_the_cpu_work_why() {
        let net = network();
        let no_gpu = Error::NoAdapter {
            detail: " (none here)".into(),
        };
        let executor = Executor::gpu_or_cpu(&net, Err(&no_gpu));
        let mut told = None;
        let run = executor
            .run(
                |_| -> Result<u32> { unreachable!("there is no GPU") },
                |why| {
                    told = why.map(str::to_string);
                    Ok(7)
                },
            )
            .unwrap();
        assert_eq!(run.ran_on, RanOn::Cpu);
        assert_eq!(told, Some(no_gpu.to_string()));
        assert_eq!(run.fallback_reason, told);
        // Errors of the CPU work are the caller's.
        let err = executor
            .run(
                |_| -> Result<u32> { unreachable!("there is no GPU") },
                |_| Err(Error::Weights("bad".into())),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Weights(_)), "{err:?}");
    }
}
