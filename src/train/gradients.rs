//! Per-layer parameter gradients, keyed by layer name like the weights they belong to.

use ndarray::{Array1, Array4};

use crate::error::{Error, Result};
use crate::weights::{LayerWeights, WeightSet};

/// The gradient of a loss with respect to every trainable layer's weight and bias, by layer
/// name, in the network's order. Each entry has the layer's weight shape and, if the layer has
/// a bias, a bias gradient of `out_channels` elements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gradients {
    set: WeightSet,
}

impl Gradients {
    /// No gradients.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the gradients of layer `name`.
    ///
    /// Errors: a bias gradient whose length is not the weight's output channel count.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        weight: Array4<f32>,
        bias: Option<Array1<f32>>,
    ) -> Result<()> {
        let name = name.into();
        let w = LayerWeights::new(&name, weight, bias)?;
        self.set.insert(name, w);
        Ok(())
    }

    /// The gradients of layer `name`, if present.
    pub fn get(&self, name: &str) -> Option<&LayerWeights> {
        self.set.get(name)
    }

    /// `(layer name, gradients)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LayerWeights)> {
        self.set.iter()
    }

    /// Layer names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.set.names()
    }

    /// Number of layers with gradients.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are no gradients.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Multiplies every gradient by `factor` (e.g. `1 / iter_size` after accumulating).
    pub fn scale(&mut self, factor: f32) {
        let mut set = WeightSet::new();
        for (name, mut w) in std::mem::take(&mut self.set) {
            w.weight.mapv_inplace(|v| v * factor);
            if let Some(b) = &mut w.bias {
                b.mapv_inplace(|v| v * factor);
            }
            set.insert(name, w);
        }
        self.set = set;
    }

    /// Adds `other` into these gradients, layer by layer (Caffe's `iter_size`: gradients of
    /// several batches summed before one update). Layers only in `other` are copied.
    ///
    /// Errors: a layer present in both with different weight or bias shapes (nothing is changed
    /// then).
    pub fn accumulate(&mut self, other: &Gradients) -> Result<()> {
        for (name, g) in other.iter() {
            if let Some(mine) = self.set.get(name) {
                let bias_len = |b: &Option<Array1<f32>>| b.as_ref().map(|b| b.len());
                if mine.weight.shape() != g.weight.shape()
                    || bias_len(&mine.bias) != bias_len(&g.bias)
                {
                    return Err(Error::ShapeMismatch {
                        context: format!("gradients of layer {name}"),
                        left_name: "accumulated weight gradient",
                        left: mine.weight.shape().to_vec(),
                        right_name: "added weight gradient",
                        right: g.weight.shape().to_vec(),
                    });
                }
            }
        }
        for (name, g) in other.iter() {
            let sum = match self.set.get(name) {
                Some(mine) => LayerWeights {
                    weight: &mine.weight + &g.weight,
                    bias: match (&mine.bias, &g.bias) {
                        (Some(a), Some(b)) => Some(a + b),
                        _ => None,
                    },
                },
                None => g.clone(),
            };
            self.set.insert(name, sum);
        }
        Ok(())
    }

    /// The gradients as a weight set (for writing with [`crate::weights::write_safetensors`]).
    pub fn as_weight_set(&self) -> &WeightSet {
        &self.set
    }
}
