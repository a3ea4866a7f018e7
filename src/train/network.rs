//! One training step of a whole [`Network`] on the CPU: the forward pass through the f64
//! reference keeping every activation, the softmax cross-entropy loss, and the backward pass
//! through every layer giving each convolution's weight and bias gradients.
//!
//! Supported layers: [`Op::Conv`] (any geometry, fused ReLU included), [`Op::MaxPool`],
//! [`Op::Relu`], and [`Op::Softmax`] as the last layer, where it becomes the loss (as a deploy
//! network's `prob` softmax becomes Caffe's `SoftmaxWithLoss` in the training network). A
//! network that does not end in a softmax is trained on its last layer's output as the scores
//! (the context module alone, for instance). Zoom, transposed convolution and a softmax
//! anywhere but last are rejected with an [`Error::Layer`] naming the layer.
//!
//! Dropout (Caffe's `Dropout` layers after `fc6` and `fc7` in the front-end) is given per step
//! as [`Dropout`] entries with explicit masks, applied to a named layer's output.

use ndarray::{Array1, Array4, ArrayView3, ArrayView4};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::grad::{
    bias_grad, conv2d_grad_input, conv2d_grad_weight, dropout_backward, dropout_forward,
    dropout_mask, max_pool2d_backward, relu_backward,
};
use super::gradients::Gradients;
use super::loss::softmax_cross_entropy;
use crate::cpu::reference;
use crate::error::{Error, Result};
use crate::net::{Layer, Network, Op};
use crate::spec::{Shape, shape_of};

/// Dropout on one layer's output for one step: `y * mask / (1 - ratio)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    /// The layer whose output (after its fused ReLU) is dropped out.
    pub layer: String,
    /// Probability of dropping a unit (Caffe's `dropout_ratio`, 0.5 in the front-end).
    pub ratio: f32,
    /// Units kept (`true`), shaped like the layer's output.
    pub mask: Array4<bool>,
}

impl Dropout {
    /// Fresh masks for the named layers (`(layer, ratio)` pairs) at an input shape, drawn from
    /// a generator seeded with `seed`, in the order given.
    ///
    /// Errors: an input the network does not accept, an unknown layer, or a ratio outside
    /// `[0, 1)`.
    pub fn masks(
        net: &Network,
        input: Shape,
        layers: &[(&str, f32)],
        seed: u64,
    ) -> Result<Vec<Dropout>> {
        let shapes = net.shapes(input)?;
        let mut rng = StdRng::seed_from_u64(seed);
        layers
            .iter()
            .map(|&(name, ratio)| {
                let i = layer_index(net, name)?;
                Ok(Dropout {
                    layer: name.to_string(),
                    ratio,
                    mask: dropout_mask(shapes[i], ratio, &mut rng)?,
                })
            })
            .collect()
    }
}

pub(super) fn layer_index(net: &Network, name: &str) -> Result<usize> {
    net.layers()
        .iter()
        .position(|l| l.name == name)
        .ok_or_else(|| Error::Layer {
            layer: name.to_string(),
            reason: "no such layer in the network".into(),
        })
}

/// Number of layers that produce the scores: every layer, or all but a final softmax.
/// Errors on layers training does not support.
pub(super) fn score_layers(net: &Network) -> Result<usize> {
    let layers = net.layers();
    for (i, l) in layers.iter().enumerate() {
        let unsupported = match &l.op {
            Op::Conv { .. } | Op::MaxPool(_) | Op::Relu => None,
            Op::Softmax if i + 1 == layers.len() => None,
            Op::Softmax => Some(
                "a softmax is only supported as the last layer, where it becomes the loss"
                    .to_string(),
            ),
            other => Some(format!(
                "training supports convolution, max pooling, ReLU and a final softmax, not {}",
                other.kind()
            )),
        };
        if let Some(reason) = unsupported {
            return Err(Error::Layer {
                layer: l.name.clone(),
                reason,
            });
        }
    }
    Ok(match layers.last() {
        Some(l) if matches!(l.op, Op::Softmax) => layers.len() - 1,
        _ => layers.len(),
    })
}

/// The dropout entry of every score layer, checking that each names a score layer once.
pub(super) fn dropout_per_layer<'a>(
    net: &Network,
    body: usize,
    dropout: &'a [Dropout],
) -> Result<Vec<Option<&'a Dropout>>> {
    let mut per_layer = vec![None; body];
    for d in dropout {
        let i = layer_index(net, &d.layer)?;
        let err = |reason: &str| Error::Layer {
            layer: d.layer.clone(),
            reason: reason.to_string(),
        };
        if i >= body {
            return Err(err("dropout after the final softmax"));
        }
        if per_layer[i].is_some() {
            return Err(err("two dropout entries for the same layer"));
        }
        per_layer[i] = Some(d);
    }
    Ok(per_layer)
}

/// A forward pass kept for the backward pass.
#[derive(Clone, Debug)]
pub struct Forward {
    activations: Vec<Array4<f32>>,
}

impl Forward {
    /// The input, then the output of every score layer in order (after its dropout, if any).
    pub fn activations(&self) -> &[Array4<f32>] {
        &self.activations
    }

    /// The scores the loss is taken on: the last activation (before any final softmax).
    pub fn scores(&self) -> ArrayView4<'_, f32> {
        // `activations` always holds at least the input.
        self.activations[self.activations.len() - 1].view()
    }
}

/// The forward pass with the f64 reference, keeping every activation; a final softmax is left
/// out (the loss applies it). Dropout entries apply to the named layers' outputs.
///
/// Errors: unsupported layers, an input the network does not accept, dropout entries naming an
/// unknown layer, the final softmax or a layer twice, or masks of the wrong shape.
pub fn forward(net: &Network, input: ArrayView4<f32>, dropout: &[Dropout]) -> Result<Forward> {
    let body = score_layers(net)?;
    net.shapes(shape_of(&input))?;
    let drop = dropout_per_layer(net, body, dropout)?;
    let mut activations = Vec::with_capacity(body + 1);
    activations.push(input.to_owned());
    for (i, layer) in net.layers()[..body].iter().enumerate() {
        let mut y = reference::apply(&layer.op, activations[i].view())?;
        if let Some(d) = drop[i] {
            y = dropout_forward(y.view(), d.mask.view(), d.ratio).map_err(|e| Error::Layer {
                layer: layer.name.clone(),
                reason: e.to_string(),
            })?;
        }
        activations.push(y);
    }
    Ok(Forward { activations })
}

/// Loss and gradients of one training step.
#[derive(Clone, Debug)]
pub struct TrainStep {
    /// Softmax cross-entropy, normalised by the non-ignored pixels of the batch.
    pub loss: f64,
    /// Number of non-ignored pixels.
    pub valid: usize,
    /// Weight and bias gradients of every convolution, by layer name, in network order.
    pub gradients: Gradients,
}

/// The loss of `net` on a batch (forward pass and softmax cross-entropy, no gradients).
///
/// Errors: as [`forward`], and labels that do not match the scores (see
/// [`softmax_cross_entropy`]).
pub fn forward_loss<L: Copy + Into<u32>>(
    net: &Network,
    input: ArrayView4<f32>,
    labels: ArrayView3<L>,
    dropout: &[Dropout],
) -> Result<f64> {
    let f = forward(net, input, dropout)?;
    Ok(softmax_cross_entropy(f.scores(), labels)?.loss)
}

/// A whole training step: [`forward`], the loss against `labels` (`[n, h, w]` at the scores'
/// size, 255 ignored), and [`backward`].
pub fn train_step<L: Copy + Into<u32>>(
    net: &Network,
    input: ArrayView4<f32>,
    labels: ArrayView3<L>,
    dropout: &[Dropout],
) -> Result<TrainStep> {
    let f = forward(net, input, dropout)?;
    backward(net, &f, labels, dropout)
}

/// The loss of a kept forward pass and the backward pass through every score layer: dropout
/// with its mask, the fused or separate ReLU where the output is positive, max pooling to each
/// window's first maximum, and each convolution's weight, bias and input gradients (the input
/// gradient only as far back as a layer with parameters needs it).
///
/// `net` and `dropout` must be the ones `forward` ran with.
///
/// Errors: as [`forward`], labels that do not match the scores, or a forward pass that does not
/// belong to `net`.
pub fn backward<L: Copy + Into<u32>>(
    net: &Network,
    forward: &Forward,
    labels: ArrayView3<L>,
    dropout: &[Dropout],
) -> Result<TrainStep> {
    let body = score_layers(net)?;
    let drop = dropout_per_layer(net, body, dropout)?;
    let acts = &forward.activations;
    if acts.len() != body + 1 {
        return Err(Error::InvalidSpec {
            context: format!("backward pass of {}", net.name()),
            reason: format!(
                "the forward pass has {} activations but the network has {body} score layers",
                acts.len().saturating_sub(1)
            ),
        });
    }
    let layers = &net.layers()[..body];
    let first_param = layers
        .iter()
        .position(|l| matches!(l.op, Op::Conv { .. }))
        .unwrap_or(body);
    let loss = softmax_cross_entropy(forward.scores(), labels)?;
    let mut g = loss.grad;
    let mut grads = Vec::new();
    for i in (first_param..body).rev() {
        let mut step = layer_backward(&layers[i], drop[i], &acts[i], &acts[i + 1], g, true)?;
        if let Some(p) = step.params.take() {
            grads.push((layers[i].name.clone(), p.0, p.1));
        }
        // The input gradient only as far back as a layer with parameters needs it.
        if i == first_param {
            break;
        }
        g = layer_input_gradient(&layers[i], step)?;
    }
    let mut gradients = Gradients::new();
    for (name, gw, gb) in grads.into_iter().rev() {
        gradients.insert(name, gw, gb)?;
    }
    Ok(TrainStep {
        loss: loss.loss,
        valid: loss.valid,
        gradients,
    })
}

/// What one layer's backward step gives: the gradient at its output before its fused ReLU
/// (and after dropout), ready for the input gradient, and its parameter gradients.
struct LayerStep<'a> {
    /// The gradient to pass on through the layer's linear part.
    grad: Array4<f32>,
    /// The layer's input, for max pooling's input gradient.
    input: &'a Array4<f32>,
    /// Weight and bias gradients of a convolution, when asked for.
    params: Option<(Array4<f32>, Option<Array1<f32>>)>,
}

/// The first half of a layer's backward step: dropout with its mask, the fused or separate
/// ReLU where the output is positive, and (when `params`) a convolution's weight and bias
/// gradients. `x` and `y` are the layer's input and output in the forward pass.
fn layer_backward<'a>(
    layer: &Layer,
    drop: Option<&Dropout>,
    x: &'a Array4<f32>,
    y: &Array4<f32>,
    mut g: Array4<f32>,
    params: bool,
) -> Result<LayerStep<'a>> {
    let in_layer = |e: Error| Error::Layer {
        layer: layer.name.clone(),
        reason: e.to_string(),
    };
    if let Some(d) = drop {
        g = dropout_backward(g.view(), d.mask.view(), d.ratio).map_err(in_layer)?;
    }
    let mut param_grads = None;
    match &layer.op {
        Op::Conv { spec, .. } => {
            if spec.relu {
                g = relu_backward(y.view(), g.view()).map_err(in_layer)?;
            }
            if params {
                let gw = conv2d_grad_weight(x.view(), g.view(), spec).map_err(in_layer)?;
                let gb = spec.bias.then(|| bias_grad(g.view()));
                param_grads = Some((gw, gb));
            }
        }
        Op::Relu => g = relu_backward(y.view(), g.view()).map_err(in_layer)?,
        Op::MaxPool(_) => {}
        other => {
            return Err(Error::Internal(format!(
                "layer {} ({}) reached the backward pass",
                layer.name,
                other.kind()
            )));
        }
    }
    Ok(LayerStep {
        grad: g,
        input: x,
        params: param_grads,
    })
}

/// The second half of a layer's backward step: the gradient with respect to its input.
fn layer_input_gradient(layer: &Layer, step: LayerStep<'_>) -> Result<Array4<f32>> {
    let in_layer = |e: Error| Error::Layer {
        layer: layer.name.clone(),
        reason: e.to_string(),
    };
    let x = step.input.view();
    match &layer.op {
        Op::Conv { spec, weight, .. } => {
            conv2d_grad_input(step.grad.view(), spec, weight.view(), shape_of(&x)).map_err(in_layer)
        }
        Op::MaxPool(p) => max_pool2d_backward(x, p, step.grad.view()).map_err(in_layer),
        _ => Ok(step.grad),
    }
}

/// Back-propagates `grad_scores`, the gradient of any function of the scores (shaped like
/// [`Forward::scores`]), through the score layers of a kept forward pass, and returns the
/// gradient with respect to each activation `at` names, in that order: an index into
/// [`Forward::activations`], so 0 is the network's input and `i` the output of layer `i - 1`.
/// No parameter gradients are computed. The steps are [`backward`]'s (dropout with its mask,
/// ReLUs where the output is positive, max pooling to each window's first maximum, the
/// convolutions' input gradients), and so is the f64 accumulation.
///
/// With a gradient of 1 at one output pixel and 0 elsewhere this gives that pixel's
/// sensitivity to every input pixel, the effective receptive field of
/// [`crate::train::receptive`].
///
/// `net` and `dropout` must be the ones `forward` ran with.
///
/// Errors: as [`forward`], a forward pass that does not belong to `net`, a `grad_scores` of
/// another shape than the scores, or an index past the last activation.
pub fn activation_gradients(
    net: &Network,
    forward: &Forward,
    grad_scores: ArrayView4<f32>,
    dropout: &[Dropout],
    at: &[usize],
) -> Result<Vec<Array4<f32>>> {
    let body = score_layers(net)?;
    let drop = dropout_per_layer(net, body, dropout)?;
    let acts = &forward.activations;
    let context = || format!("backward pass of {}", net.name());
    if acts.len() != body + 1 {
        return Err(Error::InvalidSpec {
            context: context(),
            reason: format!(
                "the forward pass has {} activations but the network has {body} score layers",
                acts.len().saturating_sub(1)
            ),
        });
    }
    super::grad::same_shape(
        &context(),
        "score gradient",
        shape_of(&grad_scores),
        "scores",
        shape_of(&forward.scores()),
    )?;
    if let Some(&bad) = at.iter().find(|&&i| i > body) {
        return Err(Error::InvalidSpec {
            context: context(),
            reason: format!("activation {bad} asked for, but the last one is {body}"),
        });
    }
    let lowest = at.iter().copied().min().unwrap_or(body);
    let mut kept: Vec<(usize, Array4<f32>)> = Vec::new();
    let mut g = grad_scores.to_owned();
    if at.contains(&body) {
        kept.push((body, g.clone()));
    }
    let layers = net.layers();
    for i in (lowest..body).rev() {
        let step = layer_backward(&layers[i], drop[i], &acts[i], &acts[i + 1], g, false)?;
        g = layer_input_gradient(&layers[i], step)?;
        if at.contains(&i) {
            kept.push((i, g.clone()));
        }
    }
    at.iter()
        .map(|i| {
            kept.iter()
                .find(|(k, _)| k == i)
                .map(|(_, a)| a.clone())
                .ok_or_else(|| Error::Internal(format!("activation gradient {i} not kept")))
        })
        .collect()
}
