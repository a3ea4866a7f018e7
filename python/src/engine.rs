//! The model behind `dilated.Model`, in plain Rust: a preset with its weights, bound to the
//! GPU or the CPU the way the command-line tool binds it, segmenting images as
//! `dilated segment` does and running raw forward passes as `dilated run` does.
//!
//! Nothing here knows about Python; `lib.rs` converts arrays and errors and releases the
//! interpreter around every call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dilated::net::{LayerReport, Model as Preset, ModelInfo, Network, Op, PresetOptions};
use dilated::plan::executor::{Execution, Executor, RanOn};
use dilated::segment::{Backend, Segmentation, Segmenter};
use dilated::weights::WeightSet;
use dilated::{Error, Gpu, GpuOptions, PlanOptions, Shape};
use ndarray::{ArrayView3, ArrayView4};
use self_cell::self_cell;

/// Where a model may run, as the command-line tool's flags say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The GPU, or the CPU when there is no GPU or the GPU fails (no flag).
    Auto,
    /// The GPU only: any GPU failure is an error (`--gpu`).
    Gpu,
    /// The CPU only (`--cpu`).
    Cpu,
}

impl Device {
    /// `"auto"`, `"gpu"` or `"cpu"` (any case).
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            _ => Err(format!(
                "device must be \"auto\", \"gpu\" or \"cpu\", got {name:?}"
            )),
        }
    }
}

/// Everything that defines a model: the preset, its weights and where it runs.
pub struct Settings {
    /// The preset.
    pub preset: Preset,
    /// Weights file (`.caffemodel` or `.safetensors`); `None` keeps the initial weights.
    pub weights: Option<PathBuf>,
    /// Divisor of the front-end's widths (1 = the released size).
    pub width_divisor: usize,
    /// Seed of the initial weights (the command-line tool uses the default, 0).
    pub seed: u64,
    /// Where it runs.
    pub device: Device,
    /// How to pick the GPU adapter.
    pub gpu: GpuOptions,
    /// Tile size (height, width) of `segment`; `None`: the model's deploy input size.
    pub tile: Option<(usize, usize)>,
    /// Plan options (the GPU memory budget, the CPU's precision).
    pub plan: PlanOptions,
}

/// What the GPU side holds: the executor of raw forward passes and the segmenter, both
/// borrowing the device.
struct OnGpu<'g> {
    executor: Executor<'g>,
    segmenter: Segmenter<'g>,
}

self_cell!(
    /// A GPU device and the plans that borrow it, kept together.
    struct GpuSide {
        owner: Gpu,

        #[not_covariant]
        dependent: OnGpu,
    }
);

/// The backend a model was bound to.
enum Bound {
    /// On a GPU (with the CPU as a fallback for [`Device::Auto`]).
    Gpu(GpuSide),
    /// On the CPU: asked for, or no GPU could be opened for [`Device::Auto`].
    Cpu(Executor<'static>),
}

/// A model ready to segment images and run forward passes.
pub struct Engine {
    preset: Preset,
    info: ModelInfo,
    weights: Option<PathBuf>,
    width_divisor: usize,
    device: Device,
    tile: Option<(usize, usize)>,
    plan: PlanOptions,
    bound: Bound,
    /// Why the model runs on the CPU although the GPU was wanted ([`Device::Auto`]).
    no_gpu: Option<String>,
    /// The CPU segmenter, made on first use (the CPU backend, or a fallback).
    cpu_segmenter: Mutex<Option<Arc<Segmenter<'static>>>>,
    /// Warnings about the weights (NaN or infinite values), as the command-line tool words them.
    warnings: Vec<String>,
}

/// A result and where it was computed.
pub struct Ran<T> {
    /// The result.
    pub output: T,
    /// Whether the GPU computed it.
    pub on_gpu: bool,
    /// Why the CPU computed it when the GPU was wanted.
    pub fallback_reason: Option<String>,
}

impl<T> From<Execution<T>> for Ran<T> {
    fn from(run: Execution<T>) -> Self {
        Self {
            output: run.output,
            on_gpu: run.ran_on == RanOn::Gpu,
            fallback_reason: run.fallback_reason,
        }
    }
}

impl Engine {
    /// Builds the preset, loads its weights and binds it to its backend, as `dilated segment`
    /// and `dilated run` do (the same seed, the same checks, the same fallback to the CPU).
    pub fn open(settings: Settings) -> Result<Self, Error> {
        let Settings {
            preset,
            weights,
            width_divisor,
            seed,
            device,
            gpu,
            tile,
            plan,
        } = settings;
        let mut network = preset.build(&PresetOptions {
            width_divisor,
            seed,
            ..Default::default()
        })?;
        let mut warnings = Vec::new();
        if let Some(path) = &weights {
            network.load_weights(&WeightSet::load(path)?)?;
            warnings = non_finite_weights(&network, path);
        }
        let (bound, no_gpu) = match device {
            Device::Cpu => (
                Bound::Cpu(Executor::cpu(&network).with_plan_options(plan)),
                None,
            ),
            Device::Gpu => {
                let side = GpuSide::try_new(Gpu::with_options(&gpu)?, |g| {
                    Ok::<_, Error>(OnGpu {
                        executor: Executor::gpu(&network, g).with_plan_options(plan),
                        segmenter: Segmenter::with_options(
                            preset,
                            &network,
                            Backend::Gpu(g),
                            tile,
                            &plan,
                        )?,
                    })
                })?;
                (Bound::Gpu(side), None)
            }
            Device::Auto => {
                let opened = Gpu::with_options(&gpu).and_then(|device| {
                    GpuSide::try_new(device, |g| {
                        Ok::<_, Error>(OnGpu {
                            executor: Executor::gpu_or_cpu(&network, Ok(g)).with_plan_options(plan),
                            segmenter: Segmenter::with_options(
                                preset,
                                &network,
                                Backend::Gpu(g),
                                tile,
                                &plan,
                            )?,
                        })
                    })
                });
                match opened {
                    Ok(side) => (Bound::Gpu(side), None),
                    // No GPU, or one too small for the model: the CPU answers, as in the CLI.
                    Err(e) if e.is_gpu_failure() => {
                        let executor =
                            Executor::gpu_or_cpu(&network, Err(&e)).with_plan_options(plan);
                        (Bound::Cpu(executor), Some(e.to_string()))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let engine = Self {
            preset,
            info: preset.info(),
            weights,
            width_divisor,
            device,
            tile,
            plan,
            bound,
            no_gpu,
            cpu_segmenter: Mutex::new(None),
            warnings,
        };
        if let Bound::Cpu(_) = engine.bound {
            // Tile sizes are checked when a segmenter is made: fail now, not at first use.
            engine.cpu_segmenter()?;
        }
        Ok(engine)
    }

    /// The preset.
    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The preset's facts.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The weights file, if one was loaded.
    pub fn weights(&self) -> Option<&Path> {
        self.weights.as_deref()
    }

    /// The width divisor.
    pub fn width_divisor(&self) -> usize {
        self.width_divisor
    }

    /// The device asked for.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Warnings found while loading the weights.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Why the model runs on the CPU although a GPU was wanted, if it does.
    pub fn no_gpu(&self) -> Option<&str> {
        self.no_gpu.as_deref()
    }

    /// The GPU the model is bound to, if any.
    pub fn gpu(&self) -> Option<&Gpu> {
        match &self.bound {
            Bound::Gpu(side) => Some(side.borrow_owner()),
            Bound::Cpu(_) => None,
        }
    }

    /// The network with its weights.
    pub fn network(&self) -> &Network {
        match &self.bound {
            Bound::Gpu(side) => side.with_dependent(|_, on| on.executor.network()),
            Bound::Cpu(executor) => executor.network(),
        }
    }

    /// The tile size `segment` uses.
    pub fn tile(&self) -> (usize, usize) {
        self.tile.unwrap_or(self.info.input_size)
    }

    /// Bytes of GPU memory the segmenter's plan holds (`None` on the CPU).
    pub fn gpu_memory(&self) -> Option<u64> {
        match &self.bound {
            Bound::Gpu(side) => side.with_dependent(|_, on| on.segmenter.gpu_memory()),
            Bound::Cpu(_) => None,
        }
    }

    /// The per-layer report for an input of `height` x `width` (default: the tile size).
    pub fn report(&self, size: Option<(usize, usize)>) -> Result<Vec<LayerReport>, Error> {
        let (h, w) = size.unwrap_or_else(|| self.tile());
        self.network().report(Shape::new(1, 3, h, w))
    }

    /// The CPU segmenter, made on first use.
    fn cpu_segmenter(&self) -> Result<Arc<Segmenter<'static>>, Error> {
        // A panic while building one leaves at worst no segmenter cached.
        let mut cached = self
            .cpu_segmenter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(segmenter) = &*cached {
            return Ok(segmenter.clone());
        }
        let segmenter = Arc::new(Segmenter::with_options(
            self.preset,
            self.network(),
            Backend::Cpu,
            self.tile,
            &self.plan,
        )?);
        *cached = Some(segmenter.clone());
        Ok(segmenter)
    }

    /// Segments an image given as `[height, width, 3]` BGR values in 0..255, exactly as
    /// `dilated segment` does (on the GPU with the CPU as the fallback its device allows).
    pub fn segment(
        &self,
        image_bgr: ArrayView3<f32>,
        want_probabilities: bool,
    ) -> Result<Ran<Segmentation>, Error> {
        let on_cpu = |_: Option<&str>| {
            self.cpu_segmenter()?
                .segment(image_bgr.view(), want_probabilities, &mut |_, _| {})
        };
        let run = match &self.bound {
            Bound::Gpu(side) => side.with_dependent(|_, on| {
                on.executor.run(
                    |_| {
                        on.segmenter
                            .segment(image_bgr.view(), want_probabilities, &mut |_, _| {})
                    },
                    on_cpu,
                )
            }),
            Bound::Cpu(executor) => executor.run(
                |_| Err(Error::Internal("a CPU model has no GPU segmenter".into())),
                on_cpu,
            ),
        }?;
        Ok(run.into())
    }

    /// The network's raw output for an NCHW input (BGR, mean subtracted), exactly as
    /// `dilated run` computes it.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Ran<ndarray::Array4<f32>>, Error> {
        let run = match &self.bound {
            Bound::Gpu(side) => side.with_dependent(|_, on| on.executor.forward(input)),
            Bound::Cpu(executor) => executor.forward(input),
        }?;
        Ok(run.into())
    }

    /// Writes the network's current weights (`.safetensors` or `.caffemodel`, by extension).
    pub fn save_weights(&self, path: &Path) -> Result<(), Error> {
        let set = self.network().weight_set()?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => dilated::weights::write_safetensors(path, &set),
            Some("caffemodel") => dilated::weights::write_caffemodel(path, &set, false),
            _ => Err(Error::Weights(format!(
                "{}: the output must end in .safetensors or .caffemodel",
                path.display()
            ))),
        }
    }
}

/// The command-line tool's warnings about NaN or infinite weights, one per layer that has
/// them.
fn non_finite_weights(network: &Network, path: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    for layer in network.layers() {
        let bad = match &layer.op {
            Op::Conv { weight, bias, .. } => weight
                .iter()
                .chain(bias.iter().flatten())
                .filter(|v| !v.is_finite())
                .count(),
            Op::Deconv { weight, .. } => weight.iter().filter(|v| !v.is_finite()).count(),
            _ => 0,
        };
        if bad > 0 {
            warnings.push(format!(
                "{}: the weights of layer {} has {bad} NaN or infinite values; they propagate \
                 into the output",
                path.display(),
                layer.name
            ));
        }
    }
    warnings
}

/// Whether `Engine` may be shared between Python threads (checked at compile time).
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Engine>();
}
