//! Stochastic gradient descent with momentum, exactly as Caffe's `SGDSolver` updates:
//!
//! ```text
//! rate = policy(base_lr, iter)
//! v    = momentum * v + rate * lr_mult * (grad + weight_decay * decay_mult * w)
//! w    = w - v
//! ```
//!
//! with `lr_mult 1, decay_mult 1` for weights and `lr_mult 2, decay_mult 0` for biases (every
//! convolution of the authors' training networks). The momentum buffers `v` are the solver's
//! state; [`SgdSolver::save_state`] writes them as safetensors (`<layer>.weight.momentum`,
//! `<layer>.bias.momentum`, with the iteration in the metadata) and
//! [`SgdSolver::load_state`] reads them back to resume.

use std::collections::HashMap;
#[cfg(feature = "fs")]
use std::path::Path;

use ::safetensors::tensor::{Dtype, SafeTensors, TensorView};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, Zip};

use super::gradients::Gradients;
use crate::error::{Error, Result};
use crate::net::{Network, Op};
use crate::weights::{LayerWeights, WeightSet};

/// Caffe's learning-rate policies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrPolicy {
    /// `base_lr` throughout.
    Fixed,
    /// `base_lr * gamma ^ floor(iter / stepsize)`.
    Step {
        /// Factor per step (0.1 in the authors' solvers).
        gamma: f64,
        /// Iterations per step (100000 in the authors' solvers).
        stepsize: u64,
    },
    /// `base_lr * (1 - iter / max_iter) ^ power`; 0 from `max_iter` on.
    Poly {
        /// Exponent.
        power: f64,
        /// Iteration at which the rate reaches 0.
        max_iter: u64,
    },
}

impl LrPolicy {
    /// The learning rate at iteration `iter` (counted from 0, as Caffe's `iter_`).
    pub fn rate(&self, base_lr: f64, iter: u64) -> f64 {
        match *self {
            LrPolicy::Fixed => base_lr,
            LrPolicy::Step { gamma, stepsize } => {
                let steps = iter / stepsize.max(1);
                base_lr * gamma.powf(steps as f64)
            }
            LrPolicy::Poly { power, max_iter } => {
                if iter >= max_iter {
                    0.0
                } else {
                    base_lr * (1.0 - iter as f64 / max_iter as f64).powf(power)
                }
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidSpec {
                context: "learning-rate policy".into(),
                reason,
            })
        };
        match *self {
            LrPolicy::Fixed => Ok(()),
            LrPolicy::Step { stepsize: 0, .. } => bad("stepsize must be at least 1".into()),
            LrPolicy::Step { gamma, .. } if !gamma.is_finite() => {
                bad(format!("gamma {gamma} is not finite"))
            }
            LrPolicy::Poly { max_iter: 0, .. } => bad("max_iter must be at least 1".into()),
            LrPolicy::Poly { power, .. } if !power.is_finite() => {
                bad(format!("power {power} is not finite"))
            }
            _ => Ok(()),
        }
    }
}

/// Learning-rate and weight-decay multipliers of one kind of parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamMults {
    /// Multiplies the learning rate.
    pub lr_mult: f64,
    /// Multiplies the weight decay.
    pub decay_mult: f64,
}

/// The solver's settings; the default is the authors' context-module solver (base lr 1e-3,
/// step policy with gamma 0.1 every 100000 iterations, momentum 0.9, weight decay 0.0005,
/// weights 1/1, biases 2/0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Base learning rate.
    pub base_lr: f64,
    /// How the rate changes with the iteration.
    pub policy: LrPolicy,
    /// Momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Multipliers of the weights.
    pub weight: ParamMults,
    /// Multipliers of the biases.
    pub bias: ParamMults,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            base_lr: 1e-3,
            policy: LrPolicy::Step {
                gamma: 0.1,
                stepsize: 100_000,
            },
            momentum: 0.9,
            weight_decay: 0.0005,
            weight: ParamMults {
                lr_mult: 1.0,
                decay_mult: 1.0,
            },
            bias: ParamMults {
                lr_mult: 2.0,
                decay_mult: 0.0,
            },
        }
    }
}

/// SGD with momentum holding one momentum buffer per parameter of every layer it has
/// updated.
#[derive(Clone, Debug)]
pub struct SgdSolver {
    config: SgdConfig,
    history: WeightSet,
}

/// Tensor-name suffixes of the saved state.
const WEIGHT_SUFFIX: &str = ".weight.momentum";
const BIAS_SUFFIX: &str = ".bias.momentum";
const STATE_FORMAT: &str = "dilated-sgd-state";

impl SgdSolver {
    /// A solver with empty momentum (Caffe starts from zeros).
    ///
    /// Errors: a non-finite setting, or a step size or `max_iter` of 0.
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.policy.validate()?;
        let values = [
            config.base_lr,
            config.momentum,
            config.weight_decay,
            config.weight.lr_mult,
            config.weight.decay_mult,
            config.bias.lr_mult,
            config.bias.decay_mult,
        ];
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidSpec {
                context: "SGD solver".into(),
                reason: format!("every setting must be finite: {config:?}"),
            });
        }
        Ok(Self {
            config,
            history: WeightSet::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The learning rate at iteration `iter`.
    pub fn learning_rate(&self, iter: u64) -> f64 {
        self.config.policy.rate(self.config.base_lr, iter)
    }

    /// The momentum buffers of layer `name` (weight, and bias if it has one), once a step has
    /// updated it or a state was loaded.
    pub fn momentum(&self, name: &str) -> Option<&LayerWeights> {
        self.history.get(name)
    }

    /// Replaces the momentum buffers of layer `name` (for a trainer that keeps them elsewhere,
    /// such as the GPU's, to save them with [`SgdSolver::save_state`]). Shapes are checked
    /// against the network at the next [`SgdSolver::step`].
    pub fn set_momentum(&mut self, name: &str, momentum: LayerWeights) -> Result<()> {
        momentum.validate(name)?;
        self.history.insert(name, momentum);
        Ok(())
    }

    /// One update of every layer in `grads` at iteration `iter` (which sets the learning
    /// rate); returns that rate. Layers without gradients are left as they are.
    ///
    /// Errors (before anything changes): a gradient naming no convolution of the network, a
    /// gradient or momentum buffer whose shape differs from the layer's, or a bias gradient
    /// missing for a layer with a bias (or given for one without).
    pub fn step(&mut self, net: &mut Network, grads: &Gradients, iter: u64) -> Result<f64> {
        for (name, g) in grads.iter() {
            let (weight, bias) = conv_params(net, name)?;
            check_like(
                name,
                "weight gradient",
                &g.weight,
                weight,
                g.bias.as_ref(),
                bias,
            )?;
            if let Some(h) = self.history.get(name) {
                check_like(name, "momentum", &h.weight, weight, h.bias.as_ref(), bias)?;
            }
        }
        let rate = self.learning_rate(iter);
        let c = self.config;
        for (name, g) in grads.iter() {
            let (weight, bias) = conv_params(net, name)?;
            let mut h = match self.history.get(name) {
                Some(h) => h.clone(),
                None => LayerWeights {
                    weight: Array4::zeros(weight.raw_dim()),
                    bias: bias.map(|b| Array1::zeros(b.raw_dim())),
                },
            };
            let mut w = weight.to_owned();
            update(&mut w, &mut h.weight, &g.weight, rate, &c, c.weight);
            let mut b = bias.map(|b| b.to_owned());
            if let (Some(b), Some(hb), Some(gb)) = (&mut b, &mut h.bias, &g.bias) {
                update(b, hb, gb, rate, &c, c.bias);
            }
            net.set_weights(name, w, b)?;
            self.history.insert(name, h);
        }
        Ok(rate)
    }

    /// The state (every momentum buffer and `iter`) as safetensors bytes.
    ///
    /// Errors: only if the safetensors writer rejects the tensors.
    pub fn state_bytes(&self, iter: u64) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, h) in self.history.iter() {
            owned.push((
                format!("{name}{WEIGHT_SUFFIX}"),
                h.weight.shape().to_vec(),
                le_bytes(h.weight.iter()),
            ));
            if let Some(b) = &h.bias {
                owned.push((
                    format!("{name}{BIAS_SUFFIX}"),
                    b.shape().to_vec(),
                    le_bytes(b.iter()),
                ));
            }
        }
        let fail = |e: &dyn std::fmt::Display| Error::Weights(format!("solver state: {e}"));
        let mut views = Vec::with_capacity(owned.len());
        for (name, shape, data) in &owned {
            let view = TensorView::new(Dtype::F32, shape.clone(), data).map_err(|e| fail(&e))?;
            views.push((name.as_str(), view));
        }
        let meta = HashMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("iter".to_string(), iter.to_string()),
        ]);
        ::safetensors::serialize(views, Some(meta)).map_err(|e| fail(&e))
    }

    /// Writes the state to `path` (atomically: a temporary file renamed over it).
    #[cfg(feature = "fs")]
    pub fn save_state(&self, path: impl AsRef<Path>, iter: u64) -> Result<()> {
        let bytes = self.state_bytes(iter)?;
        crate::io::write_atomic(path.as_ref(), |w| std::io::Write::write_all(w, &bytes))
    }

    /// Replaces the momentum buffers with those of a saved state and returns its iteration.
    /// Shapes are checked against the network at the next [`SgdSolver::step`].
    ///
    /// Errors: [`Error::Io`] if the file cannot be read, [`Error::InvalidFile`] for anything
    /// but a state this solver wrote (the solver is then unchanged).
    #[cfg(feature = "fs")]
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.load_state_from(&bytes, &path.display().to_string())
    }

    /// [`SgdSolver::load_state`] from an in-memory buffer.
    pub fn load_state_bytes(&mut self, bytes: &[u8]) -> Result<u64> {
        self.load_state_from(bytes, "<bytes>")
    }

    fn load_state_from(&mut self, bytes: &[u8], path: &str) -> Result<u64> {
        let invalid = |reason: String| Error::InvalidFile {
            path: path.to_string(),
            format: "safetensors",
            reason,
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
        let info = meta.metadata().clone().unwrap_or_default();
        if info.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(invalid(format!(
                "not a solver state (no \"format\": \"{STATE_FORMAT}\" metadata)"
            )));
        }
        let iter = info
            .get("iter")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| invalid("no valid \"iter\" in the metadata".into()))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
        let mut names: Vec<&str> = tensors.names();
        names.sort_unstable();
        let mut history = WeightSet::new();
        let mut biases = Vec::new();
        for name in names {
            let t = tensors.tensor(name).map_err(|e| invalid(e.to_string()))?;
            if t.dtype() != Dtype::F32 {
                return Err(invalid(format!(
                    "tensor {name:?} is {:?}, not F32",
                    t.dtype()
                )));
            }
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(layer) = name.strip_suffix(WEIGHT_SUFFIX) {
                let &[o, i, h, w] = t.shape() else {
                    return Err(invalid(format!("tensor {name:?} is not 4-D")));
                };
                let weight = Array4::from_shape_vec((o, i, h, w), values)
                    .map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
                history.insert(layer, LayerWeights { weight, bias: None });
            } else if let Some(layer) = name.strip_suffix(BIAS_SUFFIX) {
                if t.shape().len() != 1 {
                    return Err(invalid(format!("tensor {name:?} is not 1-D")));
                }
                biases.push((layer.to_string(), Array1::from(values)));
            } else {
                return Err(invalid(format!("unexpected tensor {name:?}")));
            }
        }
        for (layer, bias) in biases {
            let Some(w) = history.remove(&layer) else {
                return Err(invalid(format!(
                    "{layer}{BIAS_SUFFIX} without {layer}{WEIGHT_SUFFIX}"
                )));
            };
            let lw = LayerWeights::new(&layer, w.weight, Some(bias))
                .map_err(|e| invalid(e.to_string()))?;
            history.insert(layer, lw);
        }
        self.history = history;
        Ok(iter)
    }
}

/// Little-endian bytes of f32 values.
fn le_bytes<'a>(values: impl Iterator<Item = &'a f32>) -> Vec<u8> {
    values.flat_map(|v| v.to_le_bytes()).collect()
}

/// A convolution's weight and bias, by layer name.
fn conv_params<'a>(
    net: &'a Network,
    name: &str,
) -> Result<(ArrayView4<'a, f32>, Option<ArrayView1<'a, f32>>)> {
    match net.layer(name).map(|l| &l.op) {
        Some(Op::Conv { weight, bias, .. }) => Ok((weight.view(), bias.as_ref().map(|b| b.view()))),
        Some(_) => Err(Error::Layer {
            layer: name.to_string(),
            reason: "has gradients but is not a convolution".into(),
        }),
        None => Err(Error::Layer {
            layer: name.to_string(),
            reason: "has gradients but is not in the network".into(),
        }),
    }
}

/// Checks that `what` (a gradient or momentum) has the layer's weight and bias shapes.
fn check_like(
    layer: &str,
    what: &'static str,
    weight: &Array4<f32>,
    layer_weight: ArrayView4<f32>,
    bias: Option<&Array1<f32>>,
    layer_bias: Option<ArrayView1<f32>>,
) -> Result<()> {
    if weight.shape() != layer_weight.shape() {
        return Err(Error::ShapeMismatch {
            context: format!("SGD step of layer {layer}"),
            left_name: what,
            left: weight.shape().to_vec(),
            right_name: "layer weight",
            right: layer_weight.shape().to_vec(),
        });
    }
    match (bias, layer_bias) {
        (Some(b), Some(lb)) if b.len() != lb.len() => Err(Error::BiasLength {
            context: format!("{what} of layer {layer}"),
            expected: lb.len(),
            actual: b.len(),
        }),
        (None, Some(_)) => Err(Error::Layer {
            layer: layer.to_string(),
            reason: format!("the layer has a bias but its {what} has none"),
        }),
        (Some(_), None) => Err(Error::Layer {
            layer: layer.to_string(),
            reason: format!("the layer has no bias but its {what} has one"),
        }),
        _ => Ok(()),
    }
}

/// Caffe's update of one parameter blob, in f64 per element:
/// `v = momentum v + rate lr_mult (g + weight_decay decay_mult w)`, `w -= v`.
fn update<D: ndarray::Dimension>(
    w: &mut ndarray::Array<f32, D>,
    v: &mut ndarray::Array<f32, D>,
    g: &ndarray::Array<f32, D>,
    rate: f64,
    c: &SgdConfig,
    mults: ParamMults,
) {
    let local_rate = rate * mults.lr_mult;
    let decay = c.weight_decay * mults.decay_mult;
    Zip::from(w).and(v).and(g).for_each(|w, v, &g| {
        let step = c.momentum * *v as f64 + local_rate * (g as f64 + decay * *w as f64);
        *v = step as f32;
        *w = (*w as f64 - *v as f64) as f32;
    });
}
