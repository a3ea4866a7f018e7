//! Training a network on the GPU: the front-end (convolutions with or without a fused ReLU,
//! max pooling, separate ReLUs, dropout on named layers), the context module (trained from
//! its identity initialisation on cached front-end scores), or the two joined, the scores
//! going into Caffe's softmax cross-entropy. A forward pass keeps every layer's output; the
//! backward pass runs through every layer down to the first convolution; Caffe's SGD step
//! updates every convolution. All of it is recorded once and run as one submission per
//! iteration, the same computation as the CPU reference's [`crate::train::train_step`] and
//! [`crate::train::SgdSolver`].
//!
//! Dropout masks come from the host with each step ([`Dropout`] entries, as the CPU reference
//! takes them), so a GPU step and a CPU step on the same masks can be compared exactly.
//!
//! Memory: the batch and every layer's output, two alternating buffers for the gradients of
//! the layers' outputs and one for the gradients before fused ReLUs (each as large as the
//! largest it holds), the weights, their gradients and momentum, and scratch (labels,
//! per-pixel losses, the partial sums of split reductions, flipped weights, dropout masks); see
//! [`TrainingMemory`]. Every buffer is bound in windows that fit one storage binding, so
//! fc6's 411 MB of weights, gradients and momentum train on adapters that cap a binding at
//! 128 MiB.

use std::fmt;

use ndarray::{ArrayView3, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::dispatch::expect_shape;
use crate::gpu::layer::named_after;
use crate::gpu::ops::conv_chunks::split_scratch_bytes;
use crate::gpu::ops::train::conv_grad::input_gradient_spec;
use crate::gpu::ops::train::dropout::mask_bytes;
use crate::gpu::ops::train::softmax_loss::mean_loss;
use crate::gpu::{
    ConvGrads, Dispatch, Gpu, GpuConv2d, GpuDropout, GpuLayer, GpuMask, GpuMaxPool2d, GpuRelu,
    GpuReluGrad, GpuSoftmaxLoss, GpuTensor, Io, Kernel, Precision, SgdHyper,
};
use crate::net::{Network, Op};
use crate::plan::PlanOptions;
use crate::spec::Shape;
use crate::train::Dropout;
use crate::weights::LayerWeights;

/// A convolution with its parameters' gradients and momentum.
struct TrainConv {
    conv: GpuConv2d,
    grads: ConvGrads,
    velocity: ConvGrads,
}

/// What one layer of the trained network does on the GPU.
enum TrainOp {
    /// A convolution.
    Conv(Box<TrainConv>),
    /// Max pooling.
    MaxPool(GpuMaxPool2d),
    /// A separate ReLU.
    Relu,
}

/// One layer of the network with what its training keeps on the GPU.
struct TrainLayer {
    name: String,
    op: TrainOp,
    /// The layer's output (after its fused ReLU and its dropout), kept for the backward pass.
    output: GpuTensor,
    /// The layer's dropout mask, allocated the first time a step drops the layer out.
    mask: Option<GpuMask>,
}

/// What one training iteration measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch's non-ignored pixels, before the update.
    pub loss: f64,
    /// Non-ignored pixels in the batch.
    pub valid_pixels: usize,
}

/// GPU memory of a training plan by kind, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainingMemory {
    /// The batch and every layer's output, kept for the backward pass.
    pub activations: u64,
    /// Gradients of the layers' outputs: two alternating buffers and one for the gradients
    /// before fused ReLUs, each as large as the largest gradient it holds.
    pub activation_gradients: u64,
    /// Weights and biases (4 bytes for the placeholder bias of a layer without one).
    pub weights: u64,
    /// Gradients of the weights and biases.
    pub weight_gradients: u64,
    /// Momentum of the weights and biases.
    pub momentum: u64,
    /// Labels, per-pixel losses, the partial sums of split reductions, the flipped weights of
    /// the input gradients (as large as the largest layer's that runs as a convolution; see
    /// [`crate::gpu::ConvGradAlgorithm`]) and dropout masks (one bit a unit).
    pub scratch: u64,
}

impl TrainingMemory {
    /// Every kind together.
    pub fn total(&self) -> u64 {
        self.activations
            + self.activation_gradients
            + self.weights
            + self.weight_gradients
            + self.momentum
            + self.scratch
    }
}

impl fmt::Display for TrainingMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{:.1} MiB (activations {:.1}, activation gradients {:.1}, weights {:.1}, \
             weight gradients {:.1}, momentum {:.1}, scratch {:.1})",
            mib(self.total()),
            mib(self.activations),
            mib(self.activation_gradients),
            mib(self.weights),
            mib(self.weight_gradients),
            mib(self.momentum),
            mib(self.scratch)
        )
    }
}

/// How a network trains: its score layers (every layer but a final softmax) with their output
/// shapes, where the backward pass stops, and the sizes of the gradient buffers.
struct Layout {
    /// Output shape of every score layer.
    shapes: Vec<Shape>,
    /// Index of the first convolution: layers before it need no gradient.
    first_param: usize,
    /// Bytes of the two alternating output-gradient buffers and of the pre-ReLU one.
    grad_bytes: [u64; 3],
}

impl Layout {
    fn new(network: &Network, input_shape: Shape) -> Result<Self> {
        let layers = network.layers();
        for (i, l) in layers.iter().enumerate() {
            let reason = match &l.op {
                Op::Conv { .. } | Op::MaxPool(_) | Op::Relu => continue,
                Op::Softmax if i + 1 == layers.len() => continue,
                Op::Softmax => "a softmax is only supported as the last layer, where it becomes \
                                the loss"
                    .to_string(),
                other => format!(
                    "training on the GPU supports convolution, max pooling, ReLU and a final \
                     softmax, not {}",
                    other.kind()
                ),
            };
            return Err(Error::Layer {
                layer: l.name.clone(),
                reason,
            });
        }
        let mut shapes = network.shapes(input_shape)?;
        if matches!(layers.last().map(|l| &l.op), Some(Op::Softmax)) {
            shapes.pop();
        }
        let body = shapes.len();
        let first_param = layers[..body]
            .iter()
            .position(|l| matches!(l.op, Op::Conv { .. }))
            .ok_or_else(|| Error::InvalidSpec {
                context: network.name().into(),
                reason: "a network to train needs at least one convolution".into(),
            })?;
        let mut grad_bytes = [0u64; 3];
        for i in first_param..body {
            let bytes = shapes[i].bytes();
            let slot = &mut grad_bytes[Self::grad_slot(body, i)];
            *slot = (*slot).max(bytes);
            if matches!(&layers[i].op, Op::Conv { spec, .. } if spec.relu) {
                grad_bytes[2] = grad_bytes[2].max(bytes);
            }
        }
        Ok(Self {
            shapes,
            first_param,
            grad_bytes,
        })
    }

    /// Which of the two alternating buffers holds the gradient of layer `i`'s output (the
    /// scores' gradient in the first).
    fn grad_slot(body: usize, i: usize) -> usize {
        (body - 1 - i) % 2
    }

    /// The scores' shape.
    fn scores(&self) -> Shape {
        self.shapes[self.shapes.len() - 1]
    }
}

/// Errors unless `needed` bytes fit the budget.
fn check_budget(budget: Option<u64>, needed: u64, what: impl FnOnce() -> String) -> Result<()> {
    match budget {
        Some(budget) if needed > budget => Err(Error::MemoryBudget {
            budget,
            needed,
            reason: what(),
        }),
        _ => Ok(()),
    }
}

/// A network trained on the GPU at one batch shape: convolutions (with or without a fused
/// ReLU), max pooling and ReLUs, dropout on named layers, and a final softmax as the loss.
pub struct GpuTrainer<'g> {
    gpu: &'g Gpu,
    input: GpuTensor,
    labels: GpuTensor,
    losses: GpuTensor,
    layers: Vec<TrainLayer>,
    first_param: usize,
    /// The two alternating output-gradient buffers and the pre-ReLU one (NaN until written).
    grad_buffers: [Option<GpuTensor>; 3],
    /// Partial sums of the convolutions whose reductions split (shared: layers run in turn).
    scratch: Option<wgpu::Buffer>,
    /// The flipped weights of the input gradients that run as convolutions (shared likewise).
    flipped: Option<wgpu::Buffer>,
    max_memory: Option<u64>,
    /// The dropout ratio of every layer the passes were recorded with.
    recorded_dropout: Vec<Option<f32>>,
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    loss: GpuSoftmaxLoss,
    /// The loss dispatch for a batch of this many non-ignored pixels (its scale), re-recorded
    /// only when the count changes.
    loss_dispatch: Option<(usize, Dispatch)>,
    /// The SGD dispatches for these settings, re-recorded only when they change (each
    /// iteration under a `step` or `poly` learning-rate policy, once under `fixed`).
    update: Option<(SgdHyper, Vec<Dispatch>)>,
}

impl<'g> GpuTrainer<'g> {
    /// Uploads `network`'s weights and records its passes for batches of `input_shape`
    /// (default options: no memory budget, each convolution choosing its kernel).
    ///
    /// Errors: as [`GpuTrainer::with_options`].
    pub fn new(gpu: &'g Gpu, network: &Network, input_shape: Shape) -> Result<Self> {
        Self::with_options(gpu, network, input_shape, &PlanOptions::default())
    }

    /// Uploads `network`'s weights and records its passes for batches of `input_shape`, within
    /// `options.max_memory` (checked against [`GpuTrainer::estimate_memory`] before anything
    /// is allocated, and again when a step first needs dropout masks) and with
    /// `options.algorithm` for the convolutions' forward passes. Every layer must be a
    /// convolution, a max pooling or a ReLU; a final softmax is the loss's and is skipped.
    ///
    /// Errors: unsupported layers ([`Error::Layer`]), a network without convolutions, an
    /// input the network does not accept, a budget too small ([`Error::MemoryBudget`]),
    /// `options.precision` other than f32 ([`Error::UnsupportedPrecision`]: training runs in
    /// f32), and the device's errors.
    pub fn with_options(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        options: &PlanOptions,
    ) -> Result<Self> {
        if options.precision != Precision::F32 {
            return Err(Error::UnsupportedPrecision {
                precision: options.precision.wgsl(),
                adapter: "the GPU trainer".into(),
                reason: "training keeps weights, activations and gradients in f32".into(),
            });
        }
        let layout = Layout::new(network, input_shape)?;
        let estimate = Self::estimate_memory(network, input_shape, &[])?;
        check_budget(options.max_memory, estimate.total(), || {
            format!(
                "training {} on batches of {input_shape} needs {estimate}",
                network.name()
            )
        })?;
        let body = layout.shapes.len();
        let mut layers = Vec::with_capacity(body);
        let mut scratch_bytes = 0u64;
        let mut flipped_bytes = 0u64;
        let mut in_shape = input_shape;
        let score_layers = network.layers()[..body].iter().zip(&layout.shapes);
        for (i, (layer, &shape)) in score_layers.enumerate() {
            let named = |e| named_after(&layer.name, e);
            let op = match &layer.op {
                Op::Conv { spec, weight, bias } => {
                    let conv =
                        GpuConv2d::new(gpu, *spec, weight.view(), bias.as_ref().map(|b| b.view()))
                            .map_err(named)?
                            .with_algorithm(options.algorithm)
                            .without_packed();
                    scratch_bytes =
                        scratch_bytes.max(conv.scratch_bytes(gpu, in_shape).map_err(named)?);
                    if i > layout.first_param {
                        flipped_bytes = flipped_bytes.max(conv.grad_input_scratch_bytes(gpu));
                    }
                    // NaN until a step writes them, so that an element it fails to write shows.
                    let grads = ConvGrads::filled(gpu, &conv, f32::NAN).map_err(named)?;
                    TrainOp::Conv(Box::new(TrainConv {
                        velocity: ConvGrads::zeros(gpu, &conv).map_err(named)?,
                        grads,
                        conv,
                    }))
                }
                Op::MaxPool(spec) => TrainOp::MaxPool(GpuMaxPool2d::new(*spec)),
                Op::Relu => TrainOp::Relu,
                other => {
                    return Err(Error::Internal(format!(
                        "layer {} ({}) reached the GPU trainer",
                        layer.name,
                        other.kind()
                    )));
                }
            };
            layers.push(TrainLayer {
                name: layer.name.clone(),
                op,
                output: gpu.empty(shape).map_err(named)?,
                mask: None,
            });
            in_shape = shape;
        }
        let grad_buffer = |bytes: u64| -> Result<Option<GpuTensor>> {
            if bytes == 0 {
                return Ok(None);
            }
            Ok(Some(gpu.filled(
                Shape::new(1, 1, 1, (bytes / 4) as usize),
                f32::NAN,
            )?))
        };
        let [g0, g1, pre] = layout.grad_bytes;
        let pixels = Shape {
            c: 1,
            ..layout.scores()
        };
        let mut trainer = Self {
            gpu,
            input: gpu.empty(input_shape)?,
            labels: gpu.empty(pixels)?,
            losses: gpu.empty(pixels)?,
            first_param: layout.first_param,
            grad_buffers: [grad_buffer(g0)?, grad_buffer(g1)?, grad_buffer(pre)?],
            scratch: match scratch_bytes {
                0 => None,
                bytes => Some(gpu.create_buffer(
                    "training split partial sums",
                    bytes,
                    wgpu::BufferUsages::STORAGE,
                )?),
            },
            flipped: match flipped_bytes {
                0 => None,
                bytes => Some(gpu.create_buffer(
                    "training flipped weights",
                    bytes,
                    wgpu::BufferUsages::STORAGE,
                )?),
            },
            max_memory: options.max_memory,
            recorded_dropout: vec![None; layers.len()],
            layers,
            forward: Vec::new(),
            backward: Vec::new(),
            loss: GpuSoftmaxLoss::default(),
            loss_dispatch: None,
            update: None,
        };
        let (forward, backward) = trainer.record(&vec![None; body])?;
        trainer.forward = forward;
        trainer.backward = backward;
        Ok(trainer)
    }

    /// GPU memory a trainer for `network` at `input_shape` will hold, computed without a
    /// device, with dropout masks for the layers named in `dropout_layers`. The scratch
    /// counts the partial sums of convolutions as the tiled kernel would split them, and the
    /// flipped weights of every input gradient that may run as a convolution (upper bounds:
    /// adapters whose kernels do not split hold no partial sums, and those whose storage
    /// bindings hold less than a layer's weights gather its input gradient without flipping
    /// them); every other kind is exact.
    ///
    /// Errors: unsupported layers, a network without convolutions, an input the network does
    /// not accept, or a dropout layer that is not one of the score layers.
    pub fn estimate_memory(
        network: &Network,
        input_shape: Shape,
        dropout_layers: &[&str],
    ) -> Result<TrainingMemory> {
        let layout = Layout::new(network, input_shape)?;
        let layers = &network.layers()[..layout.shapes.len()];
        let mut m = TrainingMemory {
            activations: input_shape.bytes() + layout.shapes.iter().map(|s| s.bytes()).sum::<u64>(),
            activation_gradients: layout.grad_bytes.iter().sum(),
            ..TrainingMemory::default()
        };
        let mut split = 0u64;
        let mut flipped = 0u64;
        for (i, (l, &out)) in layers.iter().zip(&layout.shapes).enumerate() {
            if let Op::Conv { spec, .. } = &l.op {
                let weight = 4 * spec.weight_len() as u64;
                let bias = if spec.bias {
                    4 * spec.out_channels as u64
                } else {
                    0
                };
                m.weights += weight + bias.max(4);
                m.weight_gradients += weight + bias;
                m.momentum += weight + bias;
                split = split.max(split_scratch_bytes(spec, out));
                if i > layout.first_param && input_gradient_spec(spec).is_some() {
                    flipped = flipped.max(weight);
                }
            }
        }
        let pixels = Shape {
            c: 1,
            ..layout.scores()
        };
        m.scratch = 2 * pixels.bytes() + split + flipped;
        for name in dropout_layers {
            let i = layers
                .iter()
                .position(|l| l.name == *name)
                .ok_or_else(|| not_a_score_layer(name))?;
            m.scratch += mask_bytes(layout.shapes[i]);
        }
        Ok(m)
    }

    /// The GPU memory the trainer holds now (dropout masks once a step has used them).
    pub fn memory(&self) -> TrainingMemory {
        let mut m = TrainingMemory {
            activations: self.input.buffer.size()
                + self
                    .layers
                    .iter()
                    .map(|l| l.output.buffer.size())
                    .sum::<u64>(),
            activation_gradients: self
                .grad_buffers
                .iter()
                .flatten()
                .map(|t| t.buffer.size())
                .sum(),
            scratch: self.labels.buffer.size()
                + self.losses.buffer.size()
                + self.scratch.as_ref().map_or(0, |b| b.size())
                + self.flipped.as_ref().map_or(0, |b| b.size()),
            ..TrainingMemory::default()
        };
        let size =
            |g: &ConvGrads| g.weight.buffer.size() + g.bias.as_ref().map_or(0, |b| b.buffer.size());
        for l in &self.layers {
            if let TrainOp::Conv(c) = &l.op {
                let TrainConv {
                    conv,
                    grads,
                    velocity,
                } = &**c;
                m.weights += conv.weight_bytes();
                m.weight_gradients += size(grads);
                m.momentum += size(velocity);
            }
            m.scratch += l.mask.as_ref().map_or(0, |k| k.bytes());
        }
        m
    }

    /// The batch shape the trainer was built for.
    pub fn input_shape(&self) -> Shape {
        self.input.shape()
    }

    /// The input of layer `i`: the batch, or the previous layer's output.
    fn input_of(&self, i: usize) -> &GpuTensor {
        if i == 0 {
            &self.input
        } else {
            &self.layers[i - 1].output
        }
    }

    /// The gradient of layer `i`'s output, in its alternating buffer.
    fn grad_of(&self, i: usize) -> Result<GpuTensor> {
        let slot = Layout::grad_slot(self.layers.len(), i);
        self.grad_view(slot, self.layers[i].output.shape())
    }

    fn grad_view(&self, slot: usize, shape: Shape) -> Result<GpuTensor> {
        match &self.grad_buffers[slot] {
            Some(t) => GpuTensor::view(&t.buffer, shape),
            None => Err(Error::Internal(format!("gradient buffer {slot} missing"))),
        }
    }

    /// Records the forward and backward passes with dropout at `ratios` (one per layer).
    fn record(&self, ratios: &[Option<f32>]) -> Result<(Vec<Dispatch>, Vec<Dispatch>)> {
        let gpu = self.gpu;
        let dropout = |i: usize| -> Result<Option<(GpuDropout, &GpuMask)>> {
            match (ratios[i], &self.layers[i].mask) {
                (None, _) => Ok(None),
                (Some(r), Some(mask)) => Ok(Some((GpuDropout::new(r)?, mask))),
                (Some(_), None) => Err(Error::Internal(format!(
                    "no dropout mask for layer {}",
                    self.layers[i].name
                ))),
            }
        };
        let mut forward = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let named = |e| named_after(&l.name, e);
            let io = Io {
                scratch: self.scratch.as_ref(),
                ..Io::tensors(self.input_of(i), &l.output)
            };
            forward.extend(
                match &l.op {
                    TrainOp::Conv(c) => c.conv.prepare(gpu, &io),
                    TrainOp::MaxPool(pool) => pool.prepare(gpu, &io),
                    TrainOp::Relu => GpuRelu.prepare(gpu, &io),
                }
                .map_err(named)?,
            );
            if let Some((d, mask)) = dropout(i)? {
                forward.extend(d.prepare(gpu, mask, &l.output).map_err(named)?);
            }
        }
        let mut backward = Vec::new();
        for i in (self.first_param..self.layers.len()).rev() {
            let l = &self.layers[i];
            let named = |e| named_after(&l.name, e);
            let grad = self.grad_of(i)?;
            if let Some((d, mask)) = dropout(i)? {
                backward.extend(d.prepare(gpu, mask, &grad).map_err(named)?);
            }
            let below = if i > self.first_param {
                Some(self.grad_of(i - 1)?)
            } else {
                None
            };
            let x = self.input_of(i);
            match &l.op {
                TrainOp::Conv(c) => {
                    let TrainConv { conv, grads, .. } = &**c;
                    let pre;
                    let grad = if conv.spec().relu {
                        pre = self.grad_view(2, grad.shape())?;
                        backward.extend(
                            GpuReluGrad
                                .prepare(gpu, &grad, &l.output, &pre)
                                .map_err(named)?,
                        );
                        &pre
                    } else {
                        &grad
                    };
                    backward.extend(
                        conv.prepare_grad_params(gpu, x, grad, grads)
                            .map_err(named)?,
                    );
                    if let Some(below) = &below {
                        backward.extend(
                            conv.prepare_grad_input_in(gpu, grad, below, self.flipped.as_ref())
                                .map_err(named)?,
                        );
                    }
                }
                TrainOp::MaxPool(pool) => {
                    if let Some(below) = &below {
                        backward.extend(
                            pool.prepare_grad_input(gpu, x, &grad, below)
                                .map_err(named)?,
                        );
                    }
                }
                TrainOp::Relu => {
                    if let Some(below) = &below {
                        backward.extend(
                            GpuReluGrad
                                .prepare(gpu, &grad, &l.output, below)
                                .map_err(named)?,
                        );
                    }
                }
            }
        }
        Ok((forward, backward))
    }

    /// The dropout ratio of every layer from a step's entries, checking that each names a
    /// layer of the scores once, with a valid ratio and a mask of the layer's output shape.
    fn dropout_ratios(&self, dropout: &[Dropout]) -> Result<Vec<Option<f32>>> {
        let mut ratios = vec![None; self.layers.len()];
        for d in dropout {
            let i = self
                .layers
                .iter()
                .position(|l| l.name == d.layer)
                .ok_or_else(|| not_a_score_layer(&d.layer))?;
            let in_layer = |e: Error| Error::Layer {
                layer: d.layer.clone(),
                reason: e.to_string(),
            };
            if ratios[i].is_some() {
                return Err(Error::Layer {
                    layer: d.layer.clone(),
                    reason: "two dropout entries for the same layer".into(),
                });
            }
            GpuDropout::new(d.ratio).map_err(in_layer)?;
            let m = d.mask.dim();
            expect_shape(
                "dropout mask",
                Shape::new(m.0, m.1, m.2, m.3),
                self.layers[i].output.shape(),
            )
            .map_err(in_layer)?;
            ratios[i] = Some(d.ratio);
        }
        Ok(ratios)
    }

    /// One iteration on a batch `x` with `labels` `[n, h, w]` at the scores' resolution
    /// (class ids, 255 ignored), without dropout: forward, loss, backward, then the SGD step
    /// with `hyper`. The loss is that of the weights before the step.
    pub fn step(
        &mut self,
        x: ArrayView4<f32>,
        labels: ArrayView3<u32>,
        hyper: &SgdHyper,
    ) -> Result<StepStats> {
        self.step_with_dropout(x, labels, &[], hyper)
    }

    /// One iteration as [`GpuTrainer::step`], with dropout applied to the outputs of the
    /// layers `dropout` names (after their fused ReLU), each with its mask and ratio, in the
    /// forward pass and to their gradients in the backward pass: the step the CPU reference's
    /// [`crate::train::train_step`] takes with the same entries. The passes are re-recorded
    /// when the dropped-out layers or their ratios differ from the previous step's.
    ///
    /// Errors: a batch or labels of the wrong shape, a label that is neither a class nor 255,
    /// a dropout entry naming no layer of the scores (or one twice), a ratio outside
    /// `[0, 1)`, a mask of another shape than the layer's output, masks that would exceed the
    /// memory budget, and the device's errors.
    pub fn step_with_dropout(
        &mut self,
        x: ArrayView4<f32>,
        labels: ArrayView3<u32>,
        dropout: &[Dropout],
        hyper: &SgdHyper,
    ) -> Result<StepStats> {
        let gpu = self.gpu;
        let d = x.dim();
        expect_shape(
            "training batch",
            Shape::new(d.0, d.1, d.2, d.3),
            self.input.shape(),
        )?;
        let last = self.layers.len() - 1;
        let scores = self.layers[last].output.shape();
        let valid = self.loss.valid_pixels(scores, labels)?;
        let ratios = self.dropout_ratios(dropout)?;
        // Masks for layers dropped out for the first time, within the budget.
        let new_masks: u64 = dropout
            .iter()
            .filter_map(|d| self.layers.iter().find(|l| l.name == d.layer))
            .filter(|l| l.mask.is_none())
            .map(|l| mask_bytes(l.output.shape()))
            .sum();
        if new_masks > 0 {
            let now = self.memory();
            check_budget(self.max_memory, now.total() + new_masks, || {
                format!("dropout masks of {new_masks} bytes on top of {now}")
            })?;
        }
        for d in dropout {
            let Some(l) = self.layers.iter_mut().find(|l| l.name == d.layer) else {
                return Err(not_a_score_layer(&d.layer));
            };
            if l.mask.is_none() {
                l.mask = Some(GpuMask::new(gpu, l.output.shape())?);
            }
            if let Some(mask) = &l.mask {
                mask.write(gpu, d.mask.view())?;
            }
        }
        if ratios != self.recorded_dropout {
            let (forward, backward) = self.record(&ratios)?;
            self.forward = forward;
            self.backward = backward;
            self.recorded_dropout = ratios;
        }
        gpu.write_tensor(&self.input, x)?;
        let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l)).collect();
        gpu.write_f32(&self.labels.buffer, 0, &bits)?;
        if self.loss_dispatch.as_ref().is_none_or(|(v, _)| *v != valid) {
            let dispatch = self.loss.prepare(
                gpu,
                &self.layers[last].output,
                &self.labels,
                valid,
                &self.grad_of(last)?,
                &self.losses,
            )?;
            self.loss_dispatch = Some((valid, dispatch));
        }
        if self.update.as_ref().is_none_or(|(h, _)| h != hyper) {
            let mut update = Vec::new();
            for l in &self.layers {
                if let TrainOp::Conv(c) = &l.op {
                    update.extend(
                        c.conv
                            .prepare_sgd_step(gpu, &c.grads, &c.velocity, hyper)
                            .map_err(|e| named_after(&l.name, e))?,
                    );
                }
            }
            self.update = Some((*hyper, update));
        }
        let (Some((_, loss)), Some((_, update))) = (&self.loss_dispatch, &self.update) else {
            return Err(Error::Internal("training dispatches not recorded".into()));
        };
        let mut commands =
            Vec::with_capacity(self.forward.len() + self.backward.len() + update.len() + 1);
        commands.extend(self.forward.iter());
        commands.push(loss);
        commands.extend(self.backward.iter());
        commands.extend(update.iter());
        gpu.run_all(&commands)?;
        Ok(StepStats {
            loss: mean_loss(gpu, &self.losses, valid)?,
            valid_pixels: valid,
        })
    }

    /// The kernels one step runs, in order: the forward pass, the loss, the backward pass and
    /// the SGD step (the loss and the SGD step once a step has recorded them).
    pub fn kernels(&self) -> Vec<Kernel> {
        let loss = self.loss_dispatch.iter().map(|(_, d)| d);
        let update = self.update.iter().flat_map(|(_, u)| u.iter());
        self.forward
            .iter()
            .chain(loss)
            .chain(self.backward.iter())
            .chain(update)
            .map(|d| d.kernel())
            .collect()
    }

    /// The convolutions' parameters and what training keeps of them, by layer.
    fn convs(&self) -> impl Iterator<Item = (&str, &GpuConv2d, &ConvGrads, &ConvGrads)> {
        self.layers.iter().filter_map(|l| match &l.op {
            TrainOp::Conv(c) => Some((l.name.as_str(), &c.conv, &c.grads, &c.velocity)),
            _ => None,
        })
    }

    /// The gradients of the last step, by convolution: weights `[out, in, kh, kw]` and bias.
    pub fn gradients(&self) -> Result<Vec<(String, LayerWeights)>> {
        self.convs()
            .map(|(name, _, grads, _)| {
                let (w, b) = grads.download(self.gpu)?;
                Ok((name.to_string(), LayerWeights::new(name, w, b)?))
            })
            .collect()
    }

    /// The momentum buffers, by convolution, in the layout of the weights
    /// (`[out, in, kh, kw]`).
    pub fn momentum(&self) -> Result<Vec<(String, LayerWeights)>> {
        self.convs()
            .map(|(name, _, _, velocity)| {
                let (w, b) = velocity.download(self.gpu)?;
                Ok((name.to_string(), LayerWeights::new(name, w, b)?))
            })
            .collect()
    }

    /// Replaces a convolution's momentum (to resume a run); shapes must be the layer's.
    pub fn set_momentum(&self, layer: &str, momentum: &LayerWeights) -> Result<()> {
        let (_, _, _, velocity) =
            self.convs()
                .find(|(name, ..)| *name == layer)
                .ok_or_else(|| Error::Layer {
                    layer: layer.to_string(),
                    reason: "no such convolution in the trained network".into(),
                })?;
        velocity.upload(self.gpu, momentum)
    }

    /// Writes the current weights into `network` (the one the trainer was built from).
    pub fn download_into(&self, network: &mut Network) -> Result<()> {
        for (name, conv, _, _) in self.convs() {
            let (w, b) = conv.download_params(self.gpu)?;
            network.set_weights(name, w, b)?;
        }
        Ok(())
    }
}

/// The error of a dropout entry naming no layer of the scores.
fn not_a_score_layer(name: &str) -> Error {
    Error::Layer {
        layer: name.to_string(),
        reason: "dropout applies to a layer of the trained network's scores, and there is no \
                 such layer (a final softmax is the loss's)"
            .into(),
    }
}
