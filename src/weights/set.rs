//! The name-keyed set of layer weights.

use std::collections::HashMap;

use ndarray::{Array1, Array4};

use crate::error::{Error, Result};

/// The parameters of one layer: a convolution weight `[out, in, kh, kw]` and an optional bias
/// of `out` elements. (A fully connected layer is stored as a `1 x 1` convolution.)
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// Weight, `[out_channels, in_channels, kernel_h, kernel_w]`.
    pub weight: Array4<f32>,
    /// Bias, one value per output channel, if the layer has one.
    pub bias: Option<Array1<f32>>,
}

impl LayerWeights {
    /// Pairs a weight with a bias, checking that the bias has one element per output channel.
    /// `layer` names the layer in the error.
    pub fn new(layer: &str, weight: Array4<f32>, bias: Option<Array1<f32>>) -> Result<Self> {
        let w = LayerWeights { weight, bias };
        w.validate(layer)?;
        Ok(w)
    }

    /// Number of output channels (`weight.dim().0`).
    pub fn out_channels(&self) -> usize {
        self.weight.dim().0
    }

    /// The weight's shape as an array.
    pub fn weight_shape(&self) -> [usize; 4] {
        let (o, i, h, w) = self.weight.dim();
        [o, i, h, w]
    }

    /// Checks that the bias (if any) has one element per output channel.
    pub(crate) fn validate(&self, layer: &str) -> Result<()> {
        match &self.bias {
            Some(b) if b.len() != self.out_channels() => Err(Error::BiasLength {
                context: layer.to_string(),
                expected: self.out_channels(),
                actual: b.len(),
            }),
            _ => Ok(()),
        }
    }
}

/// What a network expects of one layer's weights (see [`WeightSet::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedLayer {
    /// Layer name, exactly as in the weights.
    pub name: String,
    /// `[out_channels, in_channels, kernel_h, kernel_w]`.
    pub weight_shape: [usize; 4],
    /// Whether the layer has a bias (of `out_channels` elements).
    pub bias: bool,
}

impl ExpectedLayer {
    /// A layer named `name` with a weight of `weight_shape` and, if `bias`, a bias.
    pub fn new(name: impl Into<String>, weight_shape: [usize; 4], bias: bool) -> Self {
        ExpectedLayer {
            name: name.into(),
            weight_shape,
            bias,
        }
    }
}

/// Layer weights keyed by layer name, in insertion (file) order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightSet {
    layers: Vec<(String, LayerWeights)>,
    index: HashMap<String, usize>,
}

impl WeightSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The weights of layer `name`, if present.
    pub fn get(&self, name: &str) -> Option<&LayerWeights> {
        self.index.get(name).map(|&i| &self.layers[i].1)
    }

    /// Inserts the weights of layer `name`, returning the previous ones if the name was
    /// already present (the layer then keeps its position).
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        weights: LayerWeights,
    ) -> Option<LayerWeights> {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => Some(std::mem::replace(&mut self.layers[i].1, weights)),
            None => {
                self.index.insert(name.clone(), self.layers.len());
                self.layers.push((name, weights));
                None
            }
        }
    }

    /// Removes layer `name` and returns its weights (lets a network take arrays without
    /// copying them).
    pub fn remove(&mut self, name: &str) -> Option<LayerWeights> {
        let i = self.index.remove(name)?;
        let (_, w) = self.layers.remove(i);
        for (n, _) in &self.layers[i..] {
            if let Some(j) = self.index.get_mut(n) {
                *j -= 1;
            }
        }
        Some(w)
    }

    /// Layer names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, weights)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LayerWeights)> {
        self.layers.iter().map(|(n, w)| (n.as_str(), w))
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the set has no layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Total number of parameters (weights and biases).
    pub fn num_parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|(_, w)| w.weight.len() + w.bias.as_ref().map_or(0, |b| b.len()))
            .sum()
    }

    /// Checks that every expected layer is present with the expected weight shape and bias.
    /// Layers of the set that are not expected are ignored.
    ///
    /// Errors: [`Error::MissingLayers`] naming every missing layer; otherwise, for the first
    /// layer in `expected` that does not match, [`Error::WeightShape`] (naming the layer and
    /// both shapes), [`Error::BiasLength`], or [`Error::Layer`] for a bias that is missing or
    /// not expected.
    pub fn check(&self, expected: &[ExpectedLayer]) -> Result<()> {
        let missing: Vec<String> = expected
            .iter()
            .filter(|e| !self.index.contains_key(&e.name))
            .map(|e| e.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingLayers { missing });
        }
        for e in expected {
            let Some(w) = self.get(&e.name) else {
                continue;
            };
            let found = w.weight_shape();
            if found != e.weight_shape {
                return Err(Error::WeightShape {
                    layer: e.name.clone(),
                    expected: e.weight_shape.to_vec(),
                    found: found.to_vec(),
                });
            }
            match (&w.bias, e.bias) {
                (Some(b), true) if b.len() != e.weight_shape[0] => {
                    return Err(Error::BiasLength {
                        context: e.name.clone(),
                        expected: e.weight_shape[0],
                        actual: b.len(),
                    });
                }
                (None, true) => {
                    return Err(Error::Layer {
                        layer: e.name.clone(),
                        reason: format!(
                            "the network expects a bias of {} elements but the weights have none",
                            e.weight_shape[0]
                        ),
                    });
                }
                (Some(b), false) => {
                    return Err(Error::Layer {
                        layer: e.name.clone(),
                        reason: format!(
                            "the weights have a bias of {} elements but the network's layer has none",
                            b.len()
                        ),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl IntoIterator for WeightSet {
    type Item = (String, LayerWeights);
    type IntoIter = std::vec::IntoIter<(String, LayerWeights)>;

    /// The `(name, weights)` pairs, in order, by value.
    fn into_iter(self) -> Self::IntoIter {
        self.layers.into_iter()
    }
}
