//! A network compiled for the GPU at one input shape: weights uploaded, pipelines, bind groups
//! and buffers created once; a forward pass is one queue submission and one read-back.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use web_time::Instant;

use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::context::block_on;
use crate::gpu::layer::named_after;
use crate::gpu::tune::{ChoiceSource, ConvTuning, Tuning, geometry_key, measure_conv};
use crate::gpu::{
    ConvAlgorithm, ConvChoice, Dispatch, Gpu, GpuConv2d, GpuLayer, Io, Kernel, LayerOptions,
    Precision, layer_for,
};
use crate::net::{Network, Op};
use crate::plan::memory::{buffer_bytes, estimate_layers};
use crate::spec::Shape;
use crate::timing::LayerTimes;

struct PlannedLayer {
    name: String,
    output: Shape,
    dispatches: Vec<Dispatch>,
    /// The layer's weights, bound by the dispatches (which hold them too; this documents it).
    _op: Box<dyn GpuLayer>,
}

struct Timestamps {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// A convolution layer with its kernel chosen: forced, recorded for this adapter, measured now
/// or by the heuristic, as `tuning` and the forced `conv.choice()` say. A geometry measured
/// earlier in the same plan (`earlier`) is not measured again.
fn choose_kernel(
    gpu: &Gpu,
    conv: GpuConv2d,
    layer: &str,
    io: &Io<'_>,
    tuning: Tuning,
    split: bool,
    earlier: &[ConvTuning],
) -> Result<(GpuConv2d, ConvTuning)> {
    let geometry = geometry_key(conv.spec(), io.input_shape, split, conv.precision());
    let flops = 2
        * io.output_shape.len() as u64
        * (conv.spec().in_channels * conv.spec().kernel.0 * conv.spec().kernel.1) as u64;
    let mut candidates = Vec::new();
    let (conv, source) = if conv.choice().algorithm != ConvAlgorithm::Auto {
        (conv, ChoiceSource::Forced)
    } else if tuning == Tuning::Off {
        (conv, ChoiceSource::Heuristic)
    } else if let Some(done) = earlier
        .iter()
        .find(|t| t.geometry == geometry && t.source == ChoiceSource::Measured)
    {
        (conv.with_choice(done.choice), ChoiceSource::Measured)
    } else {
        let recorded = match tuning {
            Tuning::Retune => None,
            _ => gpu.recorded_choice(&geometry)?,
        };
        match recorded {
            Some(choice) => (
                conv.with_choice(ConvChoice {
                    split: choice.split && split,
                    ..choice
                }),
                ChoiceSource::Cached,
            ),
            None if tuning == Tuning::Cached => (conv, ChoiceSource::Heuristic),
            None => {
                candidates = measure_conv(gpu, &conv, io, split)?;
                let best = candidates
                    .first()
                    .ok_or_else(|| Error::Internal(format!("{layer}: no kernel candidate")))?;
                gpu.record_choice(&geometry, best.choice, best.time)?;
                (conv.with_choice(best.choice), ChoiceSource::Measured)
            }
        }
    };
    let tuning = ConvTuning {
        layer: layer.to_string(),
        geometry,
        flops,
        choice: conv.choice(),
        kernel: conv.kernel_for(io.output_shape),
        source,
        candidates,
    };
    Ok((conv, tuning))
}

/// A network compiled for one GPU and one input shape.
///
/// Activations live in two buffers used in turn (each as large as the largest activation), so
/// peak memory is the weights plus the input plus two activations, plus the partial sums of
/// the largest split reduction (layers with too few output tiles to fill a GPU split their
/// reduction; they share one scratch buffer).
///
/// Weights, biases, the input and the activations are stored as the plan's [`Precision`]
/// (f32 unless built with [`GpuPlan::with_precision`]); with f16 the input is rounded to f16
/// on the host, every kernel accumulates in f32, and the scores are widened to f32 on the
/// host after the read-back.
///
/// # Threads
///
/// `GpuPlan` is `Send + Sync`. [`GpuPlan::forward`] may be called from several threads at once:
/// the passes of one plan are serialised by a mutex (they share the plan's buffers), so each
/// gives exactly the result of a serial call; separate plans on the same [`Gpu`] run
/// independently. A pass on a lost device, or one whose wait runs out, returns
/// [`Error::Device`] (see [`Gpu`]'s fault handling).
pub struct GpuPlan<'g> {
    gpu: &'g Gpu,
    input_shape: Shape,
    input: wgpu::Buffer,
    activations: Vec<wgpu::Buffer>,
    staging: wgpu::Buffer,
    layers: Vec<PlannedLayer>,
    timestamps: Option<Timestamps>,
    weight_bytes: u64,
    peak_bytes: u64,
    pass: Mutex<()>,
    _scratch: Option<wgpu::Buffer>,
    tuning: Vec<ConvTuning>,
    precision: Precision,
}

impl<'g> GpuPlan<'g> {
    /// Compiles `network` for inputs of shape `input_shape`.
    /// Layers run the kernels recorded for this adapter ([`Tuning::Cached`]).
    pub fn new(gpu: &'g Gpu, network: &Network, input_shape: Shape) -> Result<Self> {
        Self::build(
            gpu,
            network,
            input_shape,
            ConvAlgorithm::Auto,
            Tuning::default(),
            true,
            Precision::F32,
        )
    }

    /// Compiles `network` with weights and activations stored as `precision` elements
    /// (kernels chosen as in [`GpuPlan::with_tuning`]). F16 needs the adapter's
    /// `SHADER_F16`: without it this is an
    /// [`Error::UnsupportedPrecision`].
    pub fn with_precision(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        algorithm: ConvAlgorithm,
        tuning: Tuning,
        precision: Precision,
    ) -> Result<Self> {
        Self::build(
            gpu,
            network,
            input_shape,
            algorithm,
            tuning,
            true,
            precision,
        )
    }

    /// Compiles `network` with convolution kernels forced (`algorithm` other than `Auto`) or
    /// chosen as `tuning` says (see [`crate::gpu::tune`]); [`GpuPlan::conv_choices`] tells
    /// what each layer runs and why.
    pub fn with_tuning(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        algorithm: ConvAlgorithm,
        tuning: Tuning,
    ) -> Result<Self> {
        Self::build(
            gpu,
            network,
            input_shape,
            algorithm,
            tuning,
            true,
            Precision::F32,
        )
    }

    /// Compiles `network` with every convolution forced to one kernel choice (see
    /// [`GpuConv2d::with_algorithm`]); [`GpuPlan::new`] lets each layer choose.
    pub fn with_algorithm(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        algorithm: ConvAlgorithm,
    ) -> Result<Self> {
        Self::build(
            gpu,
            network,
            input_shape,
            algorithm,
            Tuning::default(),
            true,
            Precision::F32,
        )
    }

    /// Compiles `network`; `split`: whether convolutions may split their reductions (see
    /// [`GpuConv2d::with_split`]); weights and activations stored as `precision`.
    pub(crate) fn build(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        algorithm: ConvAlgorithm,
        tuning: Tuning,
        split: bool,
        precision: Precision,
    ) -> Result<Self> {
        gpu.check_precision(precision)?;
        let shapes = network.shapes(input_shape)?;
        if shapes.is_empty() {
            return Err(Error::InvalidSpec {
                context: network.name().into(),
                reason: "the network has no layers".into(),
            });
        }
        let bytes = |s: &Shape| buffer_bytes(s.len(), precision);
        let largest = shapes.iter().map(bytes).max().unwrap_or(4);
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let input = gpu.create_buffer("plan input", bytes(&input_shape), usage)?;
        let ping_pong = if shapes.len() > 1 { 2 } else { 1 };
        let activations = (0..ping_pong)
            .map(|i| gpu.create_buffer(&format!("plan activation {i}"), largest, usage))
            .collect::<Result<Vec<_>>>()?;
        let output_shape = shapes[shapes.len() - 1];
        let staging = gpu.create_buffer(
            "plan read-back",
            bytes(&output_shape),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;

        // Every layer built (weights uploaded) before any is recorded, so the scratch buffer
        // the layers share for split reductions is sized first.
        let options = LayerOptions {
            algorithm,
            split,
            precision,
        };
        let mut built = Vec::with_capacity(shapes.len());
        let mut weight_bytes = 0;
        let mut scratch_len = 0;
        let mut in_shape = input_shape;
        let mut choices = Vec::new();
        for (i, (layer, &out_shape)) in network.layers().iter().zip(&shapes).enumerate() {
            let named = |e| named_after(&layer.name, e);
            let op: Box<dyn GpuLayer> = match &layer.op {
                Op::Conv { spec, weight, bias } => {
                    let conv = GpuConv2d::new_as(
                        gpu,
                        *spec,
                        weight.view(),
                        bias.as_ref().map(|b| b.view()),
                        precision,
                    )
                    .map_err(named)?
                    .with_algorithm(algorithm)
                    .with_split(split);
                    let io = Io {
                        input: if i == 0 {
                            &input
                        } else {
                            &activations[(i - 1) % ping_pong]
                        },
                        input_shape: in_shape,
                        output: &activations[i % ping_pong],
                        output_shape: out_shape,
                        scratch: None,
                        precision,
                    };
                    let (conv, choice) =
                        choose_kernel(gpu, conv, &layer.name, &io, tuning, split, &choices)
                            .map_err(named)?;
                    choices.push(choice);
                    Box::new(conv)
                }
                op => layer_for(gpu, op, options).map_err(named)?,
            };
            weight_bytes += op.weight_bytes();
            scratch_len = scratch_len.max(op.scratch_bytes(gpu, in_shape).map_err(named)?);
            built.push((layer.name.clone(), in_shape, out_shape, op));
            in_shape = out_shape;
        }
        let scratch = match scratch_len {
            0 => None,
            bytes => Some(gpu.create_buffer(
                "plan split partial sums",
                bytes,
                wgpu::BufferUsages::STORAGE,
            )?),
        };
        let mut layers = Vec::with_capacity(built.len());
        for (i, (name, input_shape, output_shape, op)) in built.into_iter().enumerate() {
            let io = Io {
                input: if i == 0 {
                    &input
                } else {
                    &activations[(i - 1) % ping_pong]
                },
                input_shape,
                output: &activations[i % ping_pong],
                output_shape,
                scratch: scratch.as_ref(),
                precision,
            };
            let dispatches = op.prepare(gpu, &io).map_err(|e| named_after(&name, e))?;
            layers.push(PlannedLayer {
                name,
                output: output_shape,
                dispatches,
                _op: op,
            });
        }

        let timestamps = if gpu.has_timestamps() {
            let count = 2 * layers.len() as u32;
            let queries = gpu.scoped("timestamp queries", 0, || {
                gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("plan timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                })
            })?;
            let bytes = count as u64 * 8;
            let resolved = gpu.create_buffer(
                "timestamps",
                bytes,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            )?;
            let staging = gpu.create_buffer(
                "timestamp read-back",
                bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?;
            Some(Timestamps {
                queries,
                resolved,
                staging,
            })
        } else {
            None
        };

        let peak_bytes = input.size()
            + scratch.as_ref().map_or(0, |b| b.size())
            + activations.iter().map(|b| b.size()).sum::<u64>()
            + staging.size()
            + weight_bytes
            + timestamps
                .as_ref()
                .map_or(0, |t| t.resolved.size() + t.staging.size());
        #[cfg(feature = "fs")]
        if let Err(e) = gpu.save_pipeline_cache() {
            log::warn!("could not write the pipeline cache: {e}");
        }
        Ok(Self {
            gpu,
            input_shape,
            input,
            activations,
            staging,
            layers,
            timestamps,
            weight_bytes,
            peak_bytes,
            pass: Mutex::new(()),
            _scratch: scratch,
            tuning: choices,
            precision,
        })
    }

    /// The element type of the plan's weights and activations.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The kernel choice of each convolution layer, in order: the choice, the kernel it runs,
    /// where it came from and, for geometries measured while the plan was built, every
    /// candidate's time.
    pub fn conv_choices(&self) -> &[ConvTuning] {
        &self.tuning
    }

    /// GPU memory a plan for `network` at `input_shape` will hold, computed without a device:
    /// weights (4 bytes for the placeholder bias of a bias-free layer), the input, the two
    /// activation buffers, the read-back buffer and the largest split reduction's partial sums
    /// as the tiled kernel would split it (an upper bound: adapters whose kernels do not split
    /// hold none; timestamp buffers, a few bytes per layer, aside).
    pub fn estimate_memory(network: &Network, input_shape: Shape) -> Result<u64> {
        Self::estimate_memory_as(network, input_shape, Precision::F32)
    }

    /// [`GpuPlan::estimate_memory`] for a plan storing `precision` elements (f16: about half).
    pub fn estimate_memory_as(
        network: &Network,
        input_shape: Shape,
        precision: Precision,
    ) -> Result<u64> {
        let shapes = network.shapes(input_shape)?;
        Ok(estimate_layers(
            network.layers(),
            input_shape,
            &shapes,
            true,
            precision,
        ))
    }

    /// The input shape the plan was compiled for.
    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    /// The output shape.
    pub fn output_shape(&self) -> Shape {
        self.layers.last().map_or(self.input_shape, |l| l.output)
    }

    /// Bytes of GPU memory the plan holds: weights, the input, the activation buffers, the
    /// read-back buffer, the split reductions' shared scratch and the timestamp buffers.
    pub fn peak_memory(&self) -> u64 {
        self.peak_bytes
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The kernels each layer dispatches, in order, by layer name.
    pub fn layer_kernels(&self) -> Vec<(&str, Vec<Kernel>)> {
        self.layers
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.dispatches.iter().map(|d| d.kernel).collect(),
                )
            })
            .collect()
    }

    /// Runs the network on an input of the compiled shape (blocking; in a browser use
    /// [`GpuPlan::forward_async`]).
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        Ok(block_on(self.run(input, false))?.0)
    }

    /// [`GpuPlan::forward`] as a future: one submission, and a read-back that a browser
    /// answers when the GPU is done.
    pub async fn forward_async(&self, input: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        Ok(self.run(input, false).await?.0)
    }

    /// Runs the network and measures each layer: with GPU timestamp queries where the adapter
    /// has them (still one submission), otherwise layer by layer with a wait after each.
    pub fn forward_profiled(&self, input: ArrayView4<f32>) -> Result<(Array4<f32>, LayerTimes)> {
        block_on(self.forward_profiled_async(input))
    }

    /// [`GpuPlan::forward_profiled`] as a future (for browsers, where nothing may block and
    /// layers are timed by awaiting the queue after each).
    pub async fn forward_profiled_async(
        &self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Array4<f32>, LayerTimes)> {
        if self.timestamps.is_none() {
            return self.run_layer_by_layer(input).await;
        }
        let (out, times) = self.run(input, true).await?;
        Ok((
            out,
            times.unwrap_or(LayerTimes {
                layers: Vec::new(),
                from_timestamps: true,
            }),
        ))
    }

    fn check_input(&self, input: &ArrayView4<f32>) -> Result<()> {
        let d = input.dim();
        let got = Shape::new(d.0, d.1, d.2, d.3);
        if got != self.input_shape {
            return Err(Error::ShapeMismatch {
                context: "plan input".into(),
                left_name: "input",
                left: got.dims().to_vec(),
                right_name: "compiled input shape",
                right: self.input_shape.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Checks the input, takes the plan's buffers for one pass and uploads the input.
    fn begin_pass(&self, input: &ArrayView4<f32>) -> Result<MutexGuard<'_, ()>> {
        self.check_input(input)?;
        // In a browser there is one thread: a second pass started while one awaits its
        // read-back would wait for itself, so it is refused instead.
        #[cfg(target_arch = "wasm32")]
        let pass = self.pass.try_lock().map_err(|_| {
            Error::Device("a forward pass of this plan is still running; await it first".into())
        })?;
        #[cfg(not(target_arch = "wasm32"))]
        let pass = self
            .pass
            .lock()
            .map_err(|_| Error::Internal("a previous forward pass of this plan panicked".into()))?;
        self.upload(input)?;
        Ok(pass)
    }

    fn upload(&self, input: &ArrayView4<f32>) -> Result<()> {
        let p = self.precision;
        match input.as_slice() {
            Some(s) => self.gpu.write_as(&self.input, 0, s, p),
            None => {
                let data = input.iter().copied().collect::<Vec<_>>();
                self.gpu.write_as(&self.input, 0, &data, p)
            }
        }
    }

    fn output_buffer(&self) -> &wgpu::Buffer {
        &self.activations[(self.layers.len() - 1) % self.activations.len()]
    }

    // Natively the read-back is ready when first polled, so the pass lock is never held
    // across a real suspension; in a browser there is a single thread.
    #[allow(clippy::await_holding_lock)]
    async fn run(
        &self,
        input: ArrayView4<'_, f32>,
        timed: bool,
    ) -> Result<(Array4<f32>, Option<LayerTimes>)> {
        let _pass = self.begin_pass(&input)?;
        let gpu = self.gpu;
        let ts = if timed {
            self.timestamps.as_ref()
        } else {
            None
        };
        let out_len = self.output_shape().len();
        let out_bytes = buffer_bytes(out_len, self.precision);
        let commands = gpu.scoped("recording the forward pass", 0, || {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            for (i, layer) in self.layers.iter().enumerate() {
                let timestamp_writes = ts.map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&layer.name),
                    timestamp_writes,
                });
                gpu.record(&mut pass, &layer.dispatches);
            }
            encoder.copy_buffer_to_buffer(self.output_buffer(), 0, &self.staging, 0, out_bytes);
            if let Some(t) = ts {
                encoder.resolve_query_set(
                    &t.queries,
                    0..2 * self.layers.len() as u32,
                    &t.resolved,
                    0,
                );
                encoder.copy_buffer_to_buffer(&t.resolved, 0, &t.staging, 0, t.resolved.size());
            }
            encoder.finish()
        })?;
        gpu.submit_and_wait(commands)?;
        let data = gpu.read_mapped_async(&self.staging, out_bytes).await?;
        let values = match self.precision {
            Precision::F32 => bytemuck::cast_slice::<u8, f32>(&data).to_vec(),
            Precision::F16 => data
                .chunks_exact(2)
                .take(out_len)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        let out = Array4::from_shape_vec(self.output_shape().dims(), values)
            .map_err(|e| Error::Internal(format!("read-back: {e}")))?;
        let times = match ts {
            Some(t) => {
                let raw = gpu.read_mapped_async(&t.staging, t.staging.size()).await?;
                let ticks: &[u64] = bytemuck::cast_slice(&raw);
                let period = gpu.queue.get_timestamp_period() as f64;
                let layers = self
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
                        (l.name.clone(), Duration::from_nanos(dt as u64))
                    })
                    .collect();
                Some(LayerTimes {
                    layers,
                    from_timestamps: true,
                })
            }
            None => None,
        };
        Ok((out, times))
    }

    // As in `run`: natively every wait is ready when first polled; a browser has one thread.
    #[allow(clippy::await_holding_lock)]
    async fn run_layer_by_layer(
        &self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Array4<f32>, LayerTimes)> {
        let _pass = self.begin_pass(&input)?;
        self.gpu.submit_and_wait(
            self.gpu
                .device
                .create_command_encoder(&Default::default())
                .finish(),
        )?;
        self.gpu.wait_async().await?;
        let mut times = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let start = Instant::now();
            self.gpu.run(&layer.dispatches)?;
            self.gpu.wait_async().await?;
            times.push((layer.name.clone(), start.elapsed()));
        }
        let raw = self
            .gpu
            .read_as_async(
                self.output_buffer(),
                0,
                self.output_shape().len(),
                self.precision,
            )
            .await?;
        let out = Array4::from_shape_vec(self.output_shape().dims(), raw)
            .map_err(|e| Error::Internal(format!("read-back: {e}")))?;
        Ok((
            out,
            LayerTimes {
                layers: times,
                from_timestamps: false,
            },
        ))
    }
}
