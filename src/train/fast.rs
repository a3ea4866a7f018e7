//! Training on the CPU's fast path: [`CpuTrainer`] runs the steps of [`super::train_step`]
//! and [`super::SgdSolver`] in f32 with the multi-threaded kernels of [`crate::cpu::fast`],
//! every buffer allocated once per network and batch shape.
//!
//! * forward: the fast path's convolutions (direct AVX-512 or im2col + SGEMM, bias and ReLU
//!   fused), max pooling and ReLU, keeping every layer's output, dropout with the step's masks;
//! * loss: softmax cross-entropy with `ignore_label` 255 and `VALID` normalisation (per pixel
//!   in f64, as the reference);
//! * backward: dropout, ReLU (fused or not), max pooling to each window's first maximum, and
//!   each convolution's weight, bias and input gradients (`cpu::fast::grad`);
//! * update: Caffe's SGD with momentum and weight decay, element by element exactly as
//!   [`super::SgdSolver::step`] computes it (in f64, stored as f32), so a run can be saved to
//!   and resumed from the solver's state.
//!
//! What it trains is what [`super::train_step`] trains: convolutions of any geometry (any
//! kernel, dilation, padding per side and stride; stride 1 runs the input gradient as a
//! convolution, other strides a slower SGEMM + col2im), max pooling, ReLU, dropout on named
//! layers, and a final softmax as the loss. Results match the f64 reference up to f32
//! rounding (`tests/cpu_training.rs`), and repeat bit for bit from run to run on one machine
//! and thread count.
//!
//! ```
//! use dilated::net::ContextModule;
//! use dilated::train::{CpuTrainer, SgdConfig};
//! use ndarray::{Array3, Array4};
//!
//! let mut net = ContextModule::basic(3).dilations(&[1, 2, 1]).build()?;
//! let scores = Array4::<f32>::from_shape_fn((2, 3, 8, 8), |(n, c, y, x)| (n + c + y + x) as f32 % 3.0);
//! let labels = Array3::<u8>::from_shape_fn((2, 8, 8), |(_, y, x)| ((y * x) % 3) as u8);
//! let mut trainer = CpuTrainer::new(&net, dilated::Shape::new(2, 3, 8, 8), SgdConfig::default())?;
//! for iter in 0..3 {
//!     let stats = trainer.step(scores.view(), labels.view(), &[], iter)?;
//!     assert!(stats.loss.is_finite());
//! }
//! trainer.download_into(&mut net)?;
//! # Ok::<(), dilated::Error>(())
//! ```

use std::time::{Duration, Instant};

use crate::par::*;
use ndarray::{Array1, Array4, ArrayView1, ArrayView3, ArrayView4};

use super::grad::same_shape;
use super::gradients::Gradients;
use super::loss::IGNORE_LABEL;
use super::network::{Dropout, score_layers};
use super::solver::{ParamMults, SgdConfig, SgdSolver};
use crate::cpu::fast::grad::{
    ConvBackward, GradScratch, max_pool2d_backward_slices, relu_backward_inplace, softmax_loss,
};
use crate::cpu::fast::{CpuConv2d, max_pool2d_slices, relu_slice};
use crate::error::{Error, Result};
use crate::net::{Network, Op};
use crate::spec::{Conv2d, MaxPool2d, Shape, shape_of};
use crate::weights::LayerWeights;

/// A dropout mask in standard layout.
type Mask<'a> = ndarray::CowArray<'a, bool, ndarray::Ix4>;

/// Which kernels a [`CpuTrainer`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuKernels {
    /// The fastest this CPU supports (the direct AVX-512 kernels where the CPU has AVX-512F).
    #[default]
    Auto,
    /// im2col + SGEMM everywhere, as on CPUs without AVX-512 (to check that path anywhere).
    Portable,
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuStepStats {
    /// Softmax cross-entropy over the batch's non-ignored pixels, before the update.
    pub loss: f64,
    /// Non-ignored pixels in the batch.
    pub valid_pixels: usize,
}

/// A convolution with its training state.
struct ConvState {
    spec: Conv2d,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    forward: CpuConv2d,
    backward: ConvBackward,
    grad_w: Vec<f32>,
    grad_b: Option<Vec<f32>>,
    vel_w: Vec<f32>,
    vel_b: Option<Vec<f32>>,
}

enum TrainOp {
    Conv(Box<ConvState>),
    MaxPool(MaxPool2d),
    Relu,
}

struct TrainLayer {
    name: String,
    op: TrainOp,
}

/// A network trained on the CPU at one batch shape: weights, momentum, every activation and
/// gradient buffer, prepared once and reused by every step.
pub struct CpuTrainer {
    input: Shape,
    config: SgdConfig,
    layers: Vec<TrainLayer>,
    /// Name of a final softmax (the loss's), if the network has one.
    softmax: Option<String>,
    /// The input, then every score layer's output.
    shapes: Vec<Shape>,
    acts: Vec<Vec<f32>>,
    /// Gradients of the current layer's output and input, swapped layer by layer.
    grads: [Vec<f32>; 2],
    labels: Vec<u32>,
    scratch: GradScratch,
    flipped: Vec<f32>,
    /// Index of the first convolution (no gradient flows below it).
    first_param: usize,
    /// Whether the gradients of a step are held.
    have_grads: bool,
    /// Phase times of the last step, when profiling.
    times: Option<Vec<(String, Duration)>>,
}

/// Appends `(layer phase, time since start)` to the profile, if one is being taken.
fn record(times: &mut Option<Vec<(String, Duration)>>, layer: &str, phase: &str, start: Instant) {
    if let Some(t) = times {
        t.push((format!("{layer} {phase}"), start.elapsed()));
    }
}

impl CpuTrainer {
    /// Prepares `network` (its current weights, zero momentum) for batches of `input_shape`,
    /// with the solver settings `config`, on the fastest kernels of this CPU.
    ///
    /// Errors: layers training does not support (see [`super::train_step`]), an input shape
    /// the network does not accept, or settings [`SgdSolver::new`] rejects.
    pub fn new(network: &Network, input_shape: Shape, config: SgdConfig) -> Result<Self> {
        Self::with_kernels(network, input_shape, config, CpuKernels::Auto)
    }

    /// As [`CpuTrainer::new`], on the given kernels.
    pub fn with_kernels(
        network: &Network,
        input_shape: Shape,
        config: SgdConfig,
        kernels: CpuKernels,
    ) -> Result<Self> {
        SgdSolver::new(config)?;
        let body = score_layers(network)?;
        let out_shapes = network.shapes(input_shape)?;
        let all = network.layers();
        let first_param = all[..body]
            .iter()
            .position(|l| matches!(l.op, Op::Conv { .. }))
            .unwrap_or(body);
        let portable = kernels == CpuKernels::Portable;
        let input_of = |i: usize| {
            Some(if i == 0 {
                input_shape
            } else {
                out_shapes[i - 1]
            })
        };
        let mut layers = Vec::with_capacity(body);
        for (i, l) in all[..body].iter().enumerate() {
            let named = |e: Error| Error::Layer {
                layer: l.name.clone(),
                reason: e.to_string(),
            };
            let op = match &l.op {
                Op::Conv { spec, weight, bias } => {
                    let w = weight
                        .as_standard_layout()
                        .iter()
                        .copied()
                        .collect::<Vec<_>>();
                    let b = bias.as_ref().map(|b| b.to_vec());
                    let wv = weight.view();
                    let bv = bias.as_ref().map(|b| b.view());
                    let forward = if portable {
                        CpuConv2d::portable(*spec, wv, bv)
                    } else {
                        CpuConv2d::with_method(*spec, wv, bv, CpuConv2d::auto_for_training(spec))
                    }
                    .map_err(named)?;
                    let backward = ConvBackward::new(
                        *spec,
                        &w,
                        input_of(i).filter(|_| i > first_param),
                        portable,
                    )
                    .map_err(named)?;
                    TrainOp::Conv(Box::new(ConvState {
                        spec: *spec,
                        grad_w: vec![0.0; w.len()],
                        grad_b: b.as_ref().map(|b| vec![0.0; b.len()]),
                        vel_w: vec![0.0; w.len()],
                        vel_b: b.as_ref().map(|b| vec![0.0; b.len()]),
                        weight: w,
                        bias: b,
                        forward,
                        backward,
                    }))
                }
                Op::MaxPool(p) => TrainOp::MaxPool(*p),
                Op::Relu => TrainOp::Relu,
                other => {
                    return Err(Error::Internal(format!(
                        "layer {} ({}) passed the training check",
                        l.name,
                        other.kind()
                    )));
                }
            };
            layers.push(TrainLayer {
                name: l.name.clone(),
                op,
            });
        }
        let mut shapes = Vec::with_capacity(body + 1);
        shapes.push(input_shape);
        shapes.extend_from_slice(&out_shapes[..body]);
        let acts = shapes.iter().map(|s| vec![0f32; s.len()]).collect();
        let grad_len = shapes[(first_param + 1).min(body)..]
            .iter()
            .map(Shape::len)
            .max()
            .unwrap_or(0)
            .max(shapes[body].len());
        Ok(Self {
            input: input_shape,
            config,
            layers,
            softmax: (body < all.len()).then(|| all[body].name.clone()),
            shapes,
            acts,
            grads: [vec![0f32; grad_len], vec![0f32; grad_len]],
            labels: Vec::new(),
            scratch: GradScratch::default(),
            flipped: Vec::new(),
            first_param,
            have_grads: false,
            times: None,
        })
    }

    /// The batch shape the trainer was built for.
    pub fn input_shape(&self) -> Shape {
        self.input
    }

    /// The shape of the scores the loss is taken on.
    pub fn scores_shape(&self) -> Shape {
        self.shapes[self.shapes.len() - 1]
    }

    /// The solver settings.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The learning rate at iteration `iter` under the settings' policy.
    pub fn learning_rate(&self, iter: u64) -> f64 {
        self.config.policy.rate(self.config.base_lr, iter)
    }

    /// One training iteration: [`CpuTrainer::forward_backward`] on the batch, then
    /// [`CpuTrainer::update`] at iteration `iter`. The loss is that of the weights before the
    /// update.
    pub fn step<L: Copy + Into<u32>>(
        &mut self,
        x: ArrayView4<f32>,
        labels: ArrayView3<L>,
        dropout: &[Dropout],
        iter: u64,
    ) -> Result<CpuStepStats> {
        let stats = self.forward_backward(x, labels, dropout)?;
        self.update(iter)?;
        Ok(stats)
    }

    /// The forward pass (keeping every activation, dropout entries applied to the named
    /// layers' outputs), the loss against `labels` (`[n, h, w]` at the scores' size, 255
    /// ignored) and the backward pass, leaving every convolution's gradients in the trainer
    /// ([`CpuTrainer::gradients`]); the weights are not changed.
    ///
    /// Errors (before anything is computed): a batch of another shape than the trainer's,
    /// labels of another `[n, h, w]` than the scores or naming no class, dropout entries naming
    /// an unknown layer, the final softmax or a layer twice, with a ratio outside `[0, 1)` or a
    /// mask of another shape than the layer's output.
    pub fn forward_backward<L: Copy + Into<u32>>(
        &mut self,
        x: ArrayView4<f32>,
        labels: ArrayView3<L>,
        dropout: &[Dropout],
    ) -> Result<CpuStepStats> {
        same_shape(
            "training batch",
            "input",
            shape_of(&x),
            "trainer input",
            self.input,
        )?;
        let scores = self.scores_shape();
        if labels.dim() != (scores.n, scores.h, scores.w) {
            return Err(Error::ShapeMismatch {
                context: "softmax cross-entropy".into(),
                left_name: "labels [n, h, w]",
                left: labels.shape().to_vec(),
                right_name: "scores [n, classes, h, w]",
                right: scores.dims().to_vec(),
            });
        }
        let masks = self.dropout_masks(dropout)?;
        self.labels.clear();
        self.labels.extend(labels.iter().map(|&l| l.into()));
        self.have_grads = false;
        if let Some(t) = &mut self.times {
            t.clear();
        }
        self.forward(x, &masks)?;
        let stats = self.backward(&masks)?;
        self.have_grads = true;
        Ok(stats)
    }

    /// Each score layer's dropout (ratio and mask in standard layout), checked.
    fn dropout_masks<'a>(&self, dropout: &'a [Dropout]) -> Result<Vec<Option<(f32, Mask<'a>)>>> {
        let mut per_layer: Vec<Option<(f32, Mask<'a>)>> =
            (0..self.layers.len()).map(|_| None).collect();
        for d in dropout {
            let err = |reason: String| Error::Layer {
                layer: d.layer.clone(),
                reason,
            };
            let Some(i) = self.layers.iter().position(|l| l.name == d.layer) else {
                return Err(err(if self.softmax.as_deref() == Some(d.layer.as_str()) {
                    "dropout after the final softmax".into()
                } else {
                    "no such layer in the network".into()
                }));
            };
            if per_layer[i].is_some() {
                return Err(err("two dropout entries for the same layer".into()));
            }
            if !(d.ratio.is_finite() && (0.0..1.0).contains(&d.ratio)) {
                return Err(err(format!(
                    "dropout ratio {} must be at least 0 and below 1",
                    d.ratio
                )));
            }
            let m = d.mask.dim();
            same_shape(
                "dropout",
                "mask",
                Shape::new(m.0, m.1, m.2, m.3),
                "layer output",
                self.shapes[i + 1],
            )
            .map_err(|e| err(e.to_string()))?;
            per_layer[i] = Some((d.ratio, d.mask.as_standard_layout()));
        }
        Ok(per_layer)
    }

    fn forward(&mut self, x: ArrayView4<f32>, masks: &[Option<(f32, Mask<'_>)>]) -> Result<()> {
        match x.as_slice() {
            Some(s) => self.acts[0].copy_from_slice(s),
            None => {
                for (d, &v) in self.acts[0].iter_mut().zip(x.iter()) {
                    *d = v;
                }
            }
        }
        let Self {
            layers,
            shapes,
            acts,
            scratch,
            times,
            ..
        } = self;
        for (i, layer) in layers.iter().enumerate() {
            let start = Instant::now();
            let (done, rest) = acts.split_at_mut(i + 1);
            let (x, y) = (&done[i], &mut rest[0]);
            let named = |e: Error| Error::Layer {
                layer: layer.name.clone(),
                reason: e.to_string(),
            };
            match &layer.op {
                TrainOp::Conv(c) => c
                    .forward
                    .forward_slices(x, shapes[i], y, &mut scratch.conv)
                    .map_err(named)?,
                TrainOp::MaxPool(p) => max_pool2d_slices(x, shapes[i], p, y).map_err(named)?,
                TrainOp::Relu => {
                    y.copy_from_slice(x);
                    relu_slice(y);
                }
            }
            if let Some((ratio, mask)) = &masks[i] {
                dropout_inplace(y, mask.as_slice().unwrap_or(&[]), *ratio);
            }
            record(times, &layer.name, "forward", start);
        }
        Ok(())
    }

    fn backward(&mut self, masks: &[Option<(f32, Mask<'_>)>]) -> Result<CpuStepStats> {
        let Self {
            layers,
            shapes,
            acts,
            grads,
            labels,
            scratch,
            first_param,
            times,
            ..
        } = self;
        let body = layers.len();
        let scores = shapes[body];
        let [g0, g1] = grads;
        let (mut g, mut other) = (g0, g1);
        let start = Instant::now();
        let (loss, valid) = softmax_loss(
            &acts[body],
            scores,
            labels,
            IGNORE_LABEL,
            &mut g[..scores.len()],
        )?;
        record(times, "softmax", "loss", start);
        for i in (*first_param..body).rev() {
            let mut start = Instant::now();
            let layer = &mut layers[i];
            let named = |e: Error| Error::Layer {
                layer: layer.name.clone(),
                reason: e.to_string(),
            };
            let (is, os) = (shapes[i], shapes[i + 1]);
            let dy = &mut g[..os.len()];
            if let Some((ratio, mask)) = &masks[i] {
                dropout_inplace(dy, mask.as_slice().unwrap_or(&[]), *ratio);
            }
            match &mut layer.op {
                TrainOp::Conv(c) => {
                    if c.spec.relu {
                        relu_backward_inplace(&acts[i + 1], dy);
                    }
                    c.backward
                        .params(
                            &acts[i],
                            is,
                            dy,
                            &mut c.grad_w,
                            c.grad_b.as_deref_mut(),
                            scratch,
                        )
                        .map_err(named)?;
                    record(times, &layer.name, "weight gradient", start);
                    start = Instant::now();
                    if i > *first_param {
                        c.backward
                            .input(dy, is, &mut other[..is.len()], scratch)
                            .map_err(named)?;
                        std::mem::swap(&mut g, &mut other);
                        record(times, &layer.name, "input gradient", start);
                    }
                }
                TrainOp::MaxPool(p) => {
                    max_pool2d_backward_slices(&acts[i], is, p, dy, &mut other[..is.len()])
                        .map_err(named)?;
                    std::mem::swap(&mut g, &mut other);
                    record(times, &layer.name, "backward", start);
                }
                TrainOp::Relu => {
                    relu_backward_inplace(&acts[i + 1], dy);
                    record(times, &layer.name, "backward", start);
                }
            }
        }
        Ok(CpuStepStats {
            loss,
            valid_pixels: valid,
        })
    }

    /// Caffe's SGD update of every convolution from the gradients of the last
    /// [`CpuTrainer::forward_backward`] at iteration `iter` (which sets the learning rate);
    /// returns that rate.
    ///
    /// Errors: no gradients (no step since the trainer was built or last updated).
    pub fn update(&mut self, iter: u64) -> Result<f64> {
        if !self.have_grads {
            return Err(Error::InvalidSpec {
                context: "CPU training update".into(),
                reason: "no gradients: run forward_backward first".into(),
            });
        }
        let start = Instant::now();
        let rate = self.learning_rate(iter);
        let c = self.config;
        for layer in &mut self.layers {
            let TrainOp::Conv(s) = &mut layer.op else {
                continue;
            };
            sgd(&mut s.weight, &mut s.vel_w, &s.grad_w, rate, &c, c.weight);
            if let (Some(b), Some(v), Some(g)) = (&mut s.bias, &mut s.vel_b, &s.grad_b) {
                sgd(b, v, g, rate, &c, c.bias);
            }
            let named = |e: Error| Error::Layer {
                layer: layer.name.clone(),
                reason: e.to_string(),
            };
            s.forward
                .set_weights_flat(&s.weight, s.bias.as_ref().map(ArrayView1::from))
                .map_err(named)?;
            s.backward
                .set_weights(&s.weight, &mut self.flipped)
                .map_err(named)?;
        }
        self.have_grads = false;
        record(&mut self.times, "sgd", "update", start);
        Ok(rate)
    }

    /// Turns the profile on or off: with it on, every step records the wall time of each
    /// phase (each layer's forward pass, weight gradient and input gradient, the loss and the
    /// update), read with [`CpuTrainer::times`].
    pub fn set_profiling(&mut self, on: bool) {
        self.times = on.then(Vec::new);
    }

    /// `(layer and phase, wall time)` of the phases since the last
    /// [`CpuTrainer::forward_backward`] began, in the order they ran (empty unless profiling).
    pub fn times(&self) -> &[(String, Duration)] {
        self.times.as_deref().unwrap_or(&[])
    }

    /// The scores of the last forward pass (before any final softmax), `[n, classes, h, w]`.
    pub fn scores(&self) -> Result<ArrayView4<'_, f32>> {
        let s = self.scores_shape();
        ArrayView4::from_shape(s.dims(), &self.acts[self.acts.len() - 1])
            .map_err(|e| Error::Internal(format!("scores view: {e}")))
    }

    /// The weight and bias gradients of the last [`CpuTrainer::forward_backward`], by layer
    /// name in network order.
    ///
    /// Errors: no gradients held (none computed yet, or an update has used them).
    pub fn gradients(&self) -> Result<Gradients> {
        if !self.have_grads {
            return Err(Error::InvalidSpec {
                context: "CPU training gradients".into(),
                reason: "no gradients: run forward_backward first".into(),
            });
        }
        let mut g = Gradients::new();
        for (name, s) in self.convs() {
            g.insert(
                name,
                array4(&s.spec, &s.grad_w)?,
                s.grad_b.as_ref().map(|b| Array1::from(b.clone())),
            )?;
        }
        Ok(g)
    }

    /// The momentum buffers, by layer in network order, in the layout of the weights.
    pub fn momentum(&self) -> Result<Vec<(String, LayerWeights)>> {
        self.convs()
            .map(|(name, s)| {
                Ok((
                    name.to_string(),
                    LayerWeights::new(
                        name,
                        array4(&s.spec, &s.vel_w)?,
                        s.vel_b.as_ref().map(|b| Array1::from(b.clone())),
                    )?,
                ))
            })
            .collect()
    }

    /// Replaces a layer's momentum (to resume a run).
    ///
    /// Errors: no convolution of that name, or buffers of other shapes than its weight and
    /// bias (nothing changes then).
    pub fn set_momentum(&mut self, layer: &str, momentum: &LayerWeights) -> Result<()> {
        let s = self.conv_mut(layer)?;
        let (wb, sb) = (momentum.bias.as_ref().map(|b| b.len()), s.vel_b.as_ref());
        if momentum.weight.shape() != s.spec.weight_shape() || wb != sb.map(|b| b.len()) {
            return Err(Error::ShapeMismatch {
                context: format!("momentum of layer {layer}"),
                left_name: "given momentum [out, in, kh, kw] (bias length)",
                left: [momentum.weight.shape(), &[wb.unwrap_or(0)]].concat(),
                right_name: "layer weight (bias length)",
                right: [&s.spec.weight_shape()[..], &[sb.map_or(0, |b| b.len())]].concat(),
            });
        }
        for (d, &v) in s.vel_w.iter_mut().zip(momentum.weight.iter()) {
            *d = v;
        }
        if let (Some(d), Some(b)) = (&mut s.vel_b, &momentum.bias) {
            d.copy_from_slice(&b.to_vec());
        }
        Ok(())
    }

    /// Takes every momentum buffer `solver` holds (a state it loaded, to resume).
    ///
    /// Errors: as [`CpuTrainer::set_momentum`].
    pub fn load_momentum(&mut self, solver: &SgdSolver) -> Result<()> {
        let names: Vec<String> = self.convs().map(|(n, _)| n.to_string()).collect();
        for name in names {
            if let Some(m) = solver.momentum(&name) {
                self.set_momentum(&name, m)?;
            }
        }
        Ok(())
    }

    /// Gives `solver` every momentum buffer (to save its state with
    /// [`SgdSolver::save_state`]).
    pub fn store_momentum(&self, solver: &mut SgdSolver) -> Result<()> {
        for (name, m) in self.momentum()? {
            solver.set_momentum(&name, m)?;
        }
        Ok(())
    }

    /// Writes the current weights into `network` (the one the trainer was built from).
    ///
    /// Errors: a network without the trained layers, or with other shapes.
    pub fn download_into(&self, network: &mut Network) -> Result<()> {
        for (name, s) in self.convs() {
            network.set_weights(
                name,
                array4(&s.spec, &s.weight)?,
                s.bias.as_ref().map(|b| Array1::from(b.clone())),
            )?;
        }
        Ok(())
    }

    fn convs(&self) -> impl Iterator<Item = (&str, &ConvState)> {
        self.layers.iter().filter_map(|l| match &l.op {
            TrainOp::Conv(s) => Some((l.name.as_str(), &**s)),
            _ => None,
        })
    }

    fn conv_mut(&mut self, name: &str) -> Result<&mut ConvState> {
        self.layers
            .iter_mut()
            .find(|l| l.name == name)
            .and_then(|l| match &mut l.op {
                TrainOp::Conv(s) => Some(&mut **s),
                _ => None,
            })
            .ok_or_else(|| Error::Layer {
                layer: name.to_string(),
                reason: "no such convolution in the trained network".into(),
            })
    }
}

/// A `[out, in, kh, kw]` array from a flat buffer.
fn array4(spec: &Conv2d, v: &[f32]) -> Result<Array4<f32>> {
    Array4::from_shape_vec(spec.weight_shape(), v.to_vec())
        .map_err(|e| Error::Internal(format!("weight buffer: {e}")))
}

/// `x * mask / (1 - ratio)` in place (kept units scaled in f64, as the reference).
fn dropout_inplace(x: &mut [f32], mask: &[bool], ratio: f32) {
    let scale = 1.0 / (1.0 - ratio as f64);
    x.par_chunks_mut(1 << 14)
        .zip(mask.par_chunks(1 << 14))
        .for_each(|(x, m)| {
            for (v, &keep) in x.iter_mut().zip(m) {
                *v = if keep {
                    (*v as f64 * scale) as f32
                } else {
                    0.0
                };
            }
        });
}

/// Caffe's update of one parameter blob, element by element in f64 exactly as
/// [`SgdSolver::step`]: `v = momentum v + rate lr_mult (g + weight_decay decay_mult w)`,
/// `w -= v`.
fn sgd(w: &mut [f32], v: &mut [f32], g: &[f32], rate: f64, c: &SgdConfig, mults: ParamMults) {
    let local_rate = rate * mults.lr_mult;
    let decay = c.weight_decay * mults.decay_mult;
    let momentum = c.momentum;
    w.par_chunks_mut(1 << 14)
        .zip(v.par_chunks_mut(1 << 14))
        .zip(g.par_chunks(1 << 14))
        .for_each(|((w, v), g)| {
            for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                let step = momentum * *v as f64 + local_rate * (g as f64 + decay * *w as f64);
                *v = step as f32;
                *w = (*w as f64 - *v as f64) as f32;
            }
        });
}
