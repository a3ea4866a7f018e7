//! The context module (basic and large) with the paper's identity initialisation.

use ndarray::{Array1, Array4};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};
use crate::net::Network;
use crate::spec::{Conv2d, Padding};

/// Basic (C channels throughout) or large (2C ... 32C) context module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextKind {
    /// Every layer has C channels.
    Basic,
    /// Channels widen 2C, 2C, 4C, 8C, 16C, 32C, 32C, then back to C.
    Large,
}

/// How the 3x3 layers are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextPadding {
    /// Each layer pads by its dilation ("same" size).
    Same,
    /// The VOC release: the first layer pads by the sum of all dilations, the rest by 0.
    /// The output size is the same.
    FirstLayer,
}

/// A context module description: kind, class count, dilations of its 3x3 layers, padding,
/// initialisation noise and layer-name prefix. Build it with [`ContextModule::build`].
#[derive(Clone, Debug)]
pub struct ContextModule {
    /// Basic or large.
    pub kind: ContextKind,
    /// Number of classes C (input and output channels).
    pub classes: usize,
    /// Dilations of the 3x3 layers; a final 1x1 layer follows.
    pub dilations: Vec<usize>,
    /// Padding scheme.
    pub padding: ContextPadding,
    /// Standard deviation of the Gaussian noise the large module's identity initialisation puts
    /// on the non-identity taps (0 allowed). The basic module has none.
    pub sigma: f32,
    /// Seed of that noise.
    pub seed: u64,
    /// Layer-name prefix: `ctx` (`ctx_conv1_1` ...) or `ct` (VOC's `ct_conv1_1` ...).
    pub prefix: String,
}

impl ContextModule {
    /// The paper's basic module for `classes` classes: dilations 1,1,2,4,8,16,1 and a 1x1.
    pub fn basic(classes: usize) -> Self {
        Self {
            kind: ContextKind::Basic,
            classes,
            dilations: vec![1, 1, 2, 4, 8, 16, 1],
            padding: ContextPadding::Same,
            sigma: 0.0,
            seed: 0,
            prefix: "ctx".into(),
        }
    }

    /// The paper's large module for `classes` classes, identity-initialised with noise of
    /// std 0.01 (the authors' filler).
    pub fn large(classes: usize) -> Self {
        Self {
            kind: ContextKind::Large,
            sigma: 0.01,
            ..Self::basic(classes)
        }
    }

    /// Sets the dilations of the 3x3 layers.
    pub fn dilations(mut self, dilations: &[usize]) -> Self {
        self.dilations = dilations.to_vec();
        self
    }

    /// Sets the noise of the large module's initialisation.
    pub fn sigma(mut self, sigma: f32, seed: u64) -> Self {
        self.sigma = sigma;
        self.seed = seed;
        self
    }

    /// Sets the padding scheme.
    pub fn padding(mut self, padding: ContextPadding) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the layer-name prefix.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Output channels of every layer (3x3 layers, then the 1x1).
    pub fn channels(&self) -> Vec<usize> {
        let c = self.classes;
        let n = self.dilations.len();
        let mut out: Vec<usize> = (0..n)
            .map(|i| match self.kind {
                ContextKind::Basic => c,
                // 2C, 2C, 4C, ..., capped at 32C; the last 3x3 layer keeps the width before it.
                ContextKind::Large => c << (i.max(1).min(n.saturating_sub(2).max(1)).min(5)),
            })
            .collect();
        out.push(c);
        out
    }

    /// Layer names: `conv1_1`, `conv1_2`, `conv2_1`, ... for the dilated layers, `fc1` for the
    /// last 3x3 layer, `final` for the 1x1, each with the prefix.
    pub fn layer_names(&self) -> Vec<String> {
        let n = self.dilations.len();
        let p = &self.prefix;
        let mut names: Vec<String> = (0..n)
            .map(|i| match i {
                _ if i + 1 == n => format!("{p}_fc1"),
                0 => format!("{p}_conv1_1"),
                1 => format!("{p}_conv1_2"),
                _ => format!("{p}_conv{i}_1"),
            })
            .collect();
        names.push(format!("{p}_final"));
        names
    }

    /// Builds the module as a network of `classes` input channels with identity-initialised
    /// weights (eq. 4 for basic, eq. 5 for large).
    pub fn build(&self) -> Result<Network> {
        if self.classes == 0 {
            return Err(Error::ZeroDimension {
                context: "context module".into(),
                what: "class count",
            });
        }
        if self.dilations.is_empty() {
            return Err(Error::InvalidSpec {
                context: "context module".into(),
                reason: "no 3x3 layers".into(),
            });
        }
        let channels = self.channels();
        let names = self.layer_names();
        let total_pad: usize = self.dilations.iter().sum();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut b = Network::builder(
            format!("{}_context_{:?}", self.prefix, self.kind).to_lowercase(),
            self.classes,
        );
        let mut c_in = self.classes;
        for (i, name) in names.iter().enumerate() {
            let last = i == self.dilations.len();
            let c_out = channels[i];
            let spec = if last {
                Conv2d::new(c_in, c_out, 1)
            } else {
                let d = self.dilations[i];
                let pad = match (self.padding, i) {
                    (ContextPadding::Same, _) => d,
                    (ContextPadding::FirstLayer, 0) => total_pad,
                    (ContextPadding::FirstLayer, _) => 0,
                };
                Conv2d::new(c_in, c_out, 3)
                    .dilation(d)
                    .padding(Padding::uniform(pad))
                    .with_relu(true)
            };
            let weight = self.identity_weights(&spec, &mut rng)?;
            b = b.conv(name.clone(), spec, weight, Some(Array1::zeros(c_out)));
            c_in = c_out;
        }
        b.build()
    }

    /// Identity initialisation of one layer.
    fn identity_weights(&self, spec: &Conv2d, rng: &mut StdRng) -> Result<Array4<f32>> {
        let (c_in, c_out) = (spec.in_channels, spec.out_channels);
        let (cy, cx) = (spec.kernel.0 / 2, spec.kernel.1 / 2);
        let c = self.classes;
        let mut w = match (self.kind, self.sigma > 0.0) {
            (ContextKind::Large, true) => {
                let normal = Normal::new(0.0f32, self.sigma).map_err(|e| Error::InvalidSpec {
                    context: "context module".into(),
                    reason: format!("sigma {}: {e}", self.sigma),
                })?;
                Array4::from_shape_simple_fn(spec.weight_shape(), || normal.sample(rng))
            }
            _ => Array4::zeros(spec.weight_shape()),
        };
        for b in 0..c_out {
            for a in 0..c_in {
                let hit = match self.kind {
                    // eq. 4: k(0, a) = [a = b]
                    ContextKind::Basic => a == b,
                    // eq. 5: floor(a C / c_in) = floor(b C / c_out)
                    ContextKind::Large => a * c / c_in == b * c / c_out,
                };
                if hit {
                    w[[b, a, cy, cx]] = match self.kind {
                        ContextKind::Basic => 1.0,
                        ContextKind::Large => c as f32 / c_out as f32,
                    };
                }
            }
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Shape;

    #[test]
    fn large_module_widths_follow_the_paper() {
        assert_eq!(
            ContextModule::large(21).channels(),
            vec![42, 42, 84, 168, 336, 672, 672, 21]
        );
        assert_eq!(
            ContextModule::basic(19)
                .dilations(&[1, 1, 2, 4, 8, 16, 32, 64, 1])
                .channels(),
            vec![19; 10]
        );
    }

    #[test]
    fn receptive_fields_are_3_5_9_17_33_65_67_67() {
        let net = ContextModule::basic(4).build().unwrap();
        let rf: Vec<usize> = net
            .report(Shape::new(1, 4, 70, 70))
            .unwrap()
            .iter()
            .map(|r| r.receptive_field)
            .collect();
        assert_eq!(rf, vec![3, 5, 9, 17, 33, 65, 67, 67]);
    }

    #[test]
    fn names_match_the_released_models() {
        let voc = ContextModule::large(21).prefix("ct").layer_names();
        assert_eq!(
            voc,
            [
                "ct_conv1_1",
                "ct_conv1_2",
                "ct_conv2_1",
                "ct_conv3_1",
                "ct_conv4_1",
                "ct_conv5_1",
                "ct_fc1",
                "ct_final"
            ]
        );
        let city = ContextModule::basic(19)
            .dilations(&[1, 1, 2, 4, 8, 16, 32, 64, 1])
            .layer_names();
        assert_eq!(city[7], "ctx_conv7_1");
        assert_eq!(city[8], "ctx_fc1");
    }
}
