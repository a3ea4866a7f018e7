//! The plan users hold: a network compiled for one GPU and one input shape, whole when it fits
//! the memory budget, otherwise in stages of horizontal bands (see [`crate::plan::layout`]).

use std::time::Duration;

use ndarray::{Array4, ArrayView4};

use crate::error::Result;
use crate::gpu::context::block_on;
use crate::gpu::tune::{ConvTuning, Tuning};
use crate::gpu::{ConvAlgorithm, Gpu, Kernel, Precision};
use crate::net::Network;
use crate::plan::compiled::GpuPlan;
use crate::plan::layout::{BandedLayout, Bands};
use crate::plan::memory::timestamp_bytes;
use crate::plan::options::PlanOptions;
use crate::spec::Shape;
use crate::timing::LayerTimes;

struct StagePlan<'g> {
    bands: Bands,
    plan: GpuPlan<'g>,
}

enum Inner<'g> {
    Whole(GpuPlan<'g>),
    Bands {
        layout: BandedLayout,
        stages: Vec<StagePlan<'g>>,
        rest: Option<GpuPlan<'g>>,
    },
}

/// A network compiled for one GPU and one input shape within an optional memory budget: a
/// whole-image [`GpuPlan`] when it fits, otherwise the stages of a [`BandedLayout`], each a
/// plan for one band run band after band (one submission each), and a plan for the remaining
/// layers on the stitched map. Results equal the whole-image run's.
pub struct Plan<'g> {
    inner: Inner<'g>,
    input_shape: Shape,
    output_shape: Shape,
}

impl<'g> Plan<'g> {
    /// Compiles `network` for inputs of `input_shape` within `options.max_memory`, storing
    /// weights and activations as `options.precision` (an
    /// [`Error::UnsupportedPrecision`](crate::Error::UnsupportedPrecision) for f16 on an
    /// adapter without `SHADER_F16`).
    pub fn new(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        options: &PlanOptions,
    ) -> Result<Self> {
        gpu.check_precision(options.precision)?;
        let layout = match options.max_memory {
            Some(budget) => {
                BandedLayout::for_budget_as(network, input_shape, budget, options.precision)?
            }
            None => None,
        };
        match layout {
            Some(layout) => Self::build(
                gpu,
                network,
                layout,
                options.algorithm,
                options.tuning,
                options.precision,
            ),
            None => Ok(Self {
                output_shape: network.output_shape(input_shape)?,
                inner: Inner::Whole(GpuPlan::with_precision(
                    gpu,
                    network,
                    input_shape,
                    options.algorithm,
                    options.tuning,
                    options.precision,
                )?),
                input_shape,
            }),
        }
    }

    fn build(
        gpu: &'g Gpu,
        network: &Network,
        layout: BandedLayout,
        algorithm: ConvAlgorithm,
        tuning: Tuning,
        precision: Precision,
    ) -> Result<Self> {
        let output_shape = network.output_shape(layout.input_shape)?;
        let mut stages = Vec::with_capacity(layout.stages.len());
        for stage in &layout.stages {
            let net = network.sub_network(stage.layers.clone())?;
            let band = Shape {
                h: stage.bands.band_height,
                ..stage.bands.input_shape
            };
            stages.push(StagePlan {
                bands: stage.bands.clone(),
                plan: GpuPlan::build(gpu, &net, band, algorithm, tuning, false, precision)?,
            });
        }
        let n = network.layers().len();
        let rest = if layout.rest_start < n {
            let input = layout
                .stages
                .last()
                .map_or(layout.input_shape, |s| s.bands.stitched_shape);
            let net = network.sub_network(layout.rest_start..n)?;
            Some(GpuPlan::build(
                gpu, &net, input, algorithm, tuning, false, precision,
            )?)
        } else {
            None
        };
        Ok(Self {
            input_shape: layout.input_shape,
            output_shape,
            inner: Inner::Bands {
                layout,
                stages,
                rest,
            },
        })
    }

    /// GPU memory a plan for `network` at `input_shape` within `options` will hold (an upper
    /// bound, computed without a device; see [`BandedLayout::peak_memory`]).
    pub fn estimate_memory(
        network: &Network,
        input_shape: Shape,
        options: &PlanOptions,
    ) -> Result<u64> {
        let p = options.precision;
        let layout = match options.max_memory {
            Some(budget) => BandedLayout::for_budget_as(network, input_shape, budget, p)?,
            None => None,
        };
        match layout {
            Some(l) => Ok(l.peak_memory),
            None => Ok(GpuPlan::estimate_memory_as(network, input_shape, p)?
                + timestamp_bytes(network.layers().len())),
        }
    }

    /// The stages and bands, `None` when the network runs whole.
    pub fn layout(&self) -> Option<&BandedLayout> {
        match &self.inner {
            Inner::Whole(_) => None,
            Inner::Bands { layout, .. } => Some(layout),
        }
    }

    /// Number of bands per forward pass over all stages (1 when the network runs whole).
    pub fn bands(&self) -> usize {
        self.layout().map_or(1, |l| l.band_count())
    }

    /// The input shape the plan was compiled for.
    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    /// The output shape.
    pub fn output_shape(&self) -> Shape {
        self.output_shape
    }

    fn plans(&self) -> Vec<&GpuPlan<'g>> {
        match &self.inner {
            Inner::Whole(p) => vec![p],
            Inner::Bands { stages, rest, .. } => stages
                .iter()
                .map(|s| &s.plan)
                .chain(rest.as_ref())
                .collect(),
        }
    }

    /// The kernels each layer dispatches, by layer name, in order (from the first band that
    /// runs the layer; bands of one stage make the same choices up to their height).
    pub fn layer_kernels(&self) -> Vec<(String, Vec<Kernel>)> {
        let mut out: Vec<(String, Vec<Kernel>)> = Vec::new();
        for plan in self.plans() {
            for (name, kernels) in plan.layer_kernels() {
                if !out.iter().any(|(n, _)| n == name) {
                    out.push((name.to_string(), kernels));
                }
            }
        }
        out
    }

    /// The kernel choice of each convolution layer, by layer name, in order (from the first
    /// band that runs the layer; see [`GpuPlan::conv_choices`]).
    pub fn conv_choices(&self) -> Vec<ConvTuning> {
        let mut out: Vec<ConvTuning> = Vec::new();
        for plan in self.plans() {
            for t in plan.conv_choices() {
                if !out.iter().any(|o| o.layer == t.layer) {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    /// Bytes of GPU memory the plan holds (every stage's plan when banded).
    pub fn peak_memory(&self) -> u64 {
        self.plans().iter().map(|p| p.peak_memory()).sum()
    }

    /// The element type of the plan's weights and activations.
    pub fn precision(&self) -> Precision {
        self.plans()
            .first()
            .map_or(Precision::F32, |p| p.precision())
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.plans().iter().map(|p| p.weight_bytes()).sum()
    }

    /// Runs the network on an input of the compiled shape (blocking; in a browser use
    /// [`Plan::forward_async`]).
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        block_on(self.run(input, None))
    }

    /// [`Plan::forward`] as a future, for browsers (WebGPU), where nothing may block: a
    /// whole-image plan awaits its read-back, a banded plan the read-back of every band.
    pub async fn forward_async(&self, input: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        self.run(input, None).await
    }

    /// Runs the network and measures each layer (see [`GpuPlan::forward_profiled`]); a banded
    /// layer's time is summed over its bands.
    pub fn forward_profiled(&self, input: ArrayView4<f32>) -> Result<(Array4<f32>, LayerTimes)> {
        block_on(self.forward_profiled_async(input))
    }

    /// [`Plan::forward_profiled`] as a future, for browsers: layers are timed without
    /// blocking, band after band when the plan is banded.
    pub async fn forward_profiled_async(
        &self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Array4<f32>, LayerTimes)> {
        let mut times = LayerTimes {
            layers: Vec::new(),
            from_timestamps: true,
        };
        let out = self.run(input, Some(&mut times)).await?;
        Ok((out, times))
    }

    async fn run(
        &self,
        input: ArrayView4<'_, f32>,
        mut times: Option<&mut LayerTimes>,
    ) -> Result<Array4<f32>> {
        let (stages, rest) = match &self.inner {
            Inner::Whole(p) => {
                return match times {
                    None => p.forward_async(input).await,
                    Some(t) => {
                        let (y, pt) = p.forward_profiled_async(input).await?;
                        *t = pt;
                        Ok(y)
                    }
                };
            }
            Inner::Bands { stages, rest, .. } => (stages, rest),
        };
        let mut x: Option<Array4<f32>> = None;
        for stage in stages {
            let mut sums: Vec<(String, Duration)> = Vec::new();
            let view = x.as_ref().map_or(input.view(), |a| a.view());
            let y = stage
                .bands
                .run_async(view, async |band| match times.as_deref_mut() {
                    None => stage.plan.forward_async(band).await,
                    Some(t) => {
                        let (y, bt) = stage.plan.forward_profiled_async(band).await?;
                        t.from_timestamps &= bt.from_timestamps;
                        if sums.is_empty() {
                            sums = bt.layers;
                        } else {
                            for ((_, sum), (_, d)) in sums.iter_mut().zip(bt.layers) {
                                *sum += d;
                            }
                        }
                        Ok(y)
                    }
                })
                .await?;
            if let Some(t) = times.as_deref_mut() {
                t.layers.extend(sums);
            }
            x = Some(y);
        }
        let view = x.as_ref().map_or(input.view(), |a| a.view());
        match (rest, times) {
            (None, _) => Ok(x.unwrap_or_else(|| input.to_owned())),
            (Some(r), None) => r.forward_async(view).await,
            (Some(r), Some(t)) => {
                let (y, rt) = r.forward_profiled_async(view).await?;
                t.from_timestamps &= rt.from_timestamps;
                t.layers.extend(rt.layers);
                Ok(y)
            }
        }
    }
}
