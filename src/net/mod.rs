//! Networks as data: a list of named layers with their weights, built and validated once,
//! run by either backend ([`crate::plan::GpuPlan`], [`crate::plan::CpuPlan`]).

mod context;
mod presets;

pub use context::{ContextKind, ContextModule, ContextPadding};
pub use presets::{FRONT_END_MARGIN, FrontEnd, Model, ModelInfo, PresetOptions, Upsampling};

use ndarray::{Array1, Array4};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};
use crate::spec::{Conv2d, Deconv2d, MaxPool2d, Shape, Zoom};

/// What a layer computes.
#[derive(Clone, Debug)]
pub enum Op {
    /// Convolution with its weights `[out, in, kh, kw]` and optional bias `[out]`.
    Conv {
        /// Geometry, channels, bias and fused ReLU.
        spec: Conv2d,
        /// Weights.
        weight: Array4<f32>,
        /// Bias, present iff `spec.bias`.
        bias: Option<Array1<f32>>,
    },
    /// Max pooling.
    MaxPool(MaxPool2d),
    /// ReLU on its own (convolutions usually fuse it).
    Relu,
    /// Softmax over channels.
    Softmax,
    /// Bilinear zoom by an integer factor.
    Zoom(Zoom),
    /// Per-channel transposed convolution with weights `[channels, 1, k, k]`.
    Deconv {
        /// Geometry.
        spec: Deconv2d,
        /// Weights.
        weight: Array4<f32>,
    },
}

impl Op {
    /// A short name of the op's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { spec, .. } if spec.is_pointwise() => "conv1x1",
            Op::Conv { .. } => "conv",
            Op::MaxPool(_) => "maxpool",
            Op::Relu => "relu",
            Op::Softmax => "softmax",
            Op::Zoom(_) => "zoom",
            Op::Deconv { .. } => "deconv",
        }
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, input: Shape, name: &str) -> Result<Shape> {
        match self {
            Op::Conv { spec, .. } => spec.output_shape(input, name),
            Op::MaxPool(p) => p.output_shape(input, name),
            Op::Relu | Op::Softmax => {
                input.check_nonzero(name)?;
                Ok(input)
            }
            Op::Zoom(z) => z.output_shape(input, name),
            Op::Deconv { spec, .. } => spec.output_shape(input, name),
        }
    }

    /// Parameters (weights and biases).
    pub fn params(&self) -> usize {
        match self {
            Op::Conv { spec, .. } => spec.params(),
            Op::Deconv { weight, .. } => weight.len(),
            _ => 0,
        }
    }
}

/// A named layer.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The layer's name (the released models' names for presets).
    pub name: String,
    /// What it computes.
    pub op: Op,
}

/// One layer's line of a [`Network::report`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Op kind.
    pub kind: &'static str,
    /// Output shape.
    pub output: Shape,
    /// Receptive field of one output pixel in input pixels (per side).
    pub receptive_field: usize,
    /// Distance in input pixels between neighbouring outputs (output stride).
    pub stride: f64,
    /// Floating-point operations of convolutions (multiply-add = 2).
    pub flops: u64,
    /// Parameters.
    pub params: usize,
    /// Bytes of the output activation (f32).
    pub activation_bytes: u64,
}

/// A network: named layers in order, validated when built.
#[derive(Clone, Debug)]
pub struct Network {
    name: String,
    in_channels: usize,
    layers: Vec<Layer>,
}

impl Network {
    /// Starts a network taking `in_channels` input channels.
    pub fn builder(name: impl Into<String>, in_channels: usize) -> NetworkBuilder {
        NetworkBuilder {
            name: name.into(),
            in_channels,
            layers: Vec::new(),
        }
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The layers in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// A layer by name.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// Total parameters.
    pub fn params(&self) -> usize {
        self.layers.iter().map(|l| l.op.params()).sum()
    }

    /// Output shape of every layer for an input shape; an input too small for a layer is an
    /// error naming that layer.
    pub fn shapes(&self, input: Shape) -> Result<Vec<Shape>> {
        if input.c != self.in_channels {
            return Err(Error::ShapeMismatch {
                context: format!("input of network {}", self.name),
                left_name: "input",
                left: input.dims().to_vec(),
                right_name: "network input channels",
                right: vec![self.in_channels],
            });
        }
        input.check_nonzero(&self.name)?;
        let mut shapes = Vec::with_capacity(self.layers.len());
        let mut s = input;
        for l in &self.layers {
            s = l.op.output_shape(s, &l.name).map_err(|e| match e {
                Error::KernelLargerThanInput { .. } | Error::InvalidSpec { .. } => Error::Layer {
                    layer: l.name.clone(),
                    reason: format!(
                        "input {}x{} of the network is too small: {e}",
                        input.h, input.w
                    ),
                },
                other => other,
            })?;
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(*self.shapes(input)?.last().unwrap_or(&input))
    }

    /// Receptive field (in input pixels, per side) and output stride of every layer's output,
    /// in order: the spec's arithmetic, which needs no input size. A convolution or pooling
    /// window of extent `e` grows the field by `(e - 1) * stride` and multiplies the stride by
    /// its own; a zoom or transposed convolution divides the stride.
    pub fn receptive_fields(&self) -> Vec<(usize, f64)> {
        let mut rf = 1usize;
        let mut stride = 1.0f64;
        let grow = |rf: &mut usize, extent: usize, stride: f64| {
            *rf += (extent.saturating_sub(1) as f64 * stride).round() as usize
        };
        self.layers
            .iter()
            .map(|l| {
                match &l.op {
                    Op::Conv { spec, .. } => {
                        grow(&mut rf, spec.extent().0, stride);
                        stride *= spec.stride.0 as f64;
                    }
                    Op::MaxPool(p) => {
                        grow(&mut rf, p.kernel.0, stride);
                        stride *= p.stride.0 as f64;
                    }
                    Op::Deconv { spec, .. } => {
                        stride /= spec.stride as f64;
                        grow(
                            &mut rf,
                            spec.kernel.div_ceil(spec.stride),
                            stride * spec.stride as f64,
                        );
                    }
                    Op::Zoom(z) => stride /= z.factor as f64,
                    Op::Relu | Op::Softmax => {}
                }
                (rf, stride)
            })
            .collect()
    }

    /// Per-layer output shape, receptive field, FLOPs, parameters and activation size.
    pub fn report(&self, input: Shape) -> Result<Vec<LayerReport>> {
        let shapes = self.shapes(input)?;
        Ok(self
            .layers
            .iter()
            .zip(&shapes)
            .zip(self.receptive_fields())
            .map(|((l, &out), (receptive_field, stride))| {
                let flops = match &l.op {
                    Op::Conv { spec, .. } => spec.flops(out),
                    Op::Deconv { spec, .. } => spec.flops(Shape::new(
                        out.n,
                        out.c,
                        out.h.div_ceil(spec.stride),
                        out.w.div_ceil(spec.stride),
                    )),
                    _ => 0,
                };
                LayerReport {
                    name: l.name.clone(),
                    kind: l.op.kind(),
                    output: out,
                    receptive_field,
                    stride,
                    flops,
                    params: l.op.params(),
                    activation_bytes: out.bytes(),
                }
            })
            .collect())
    }

    /// A copy of the layers `range` (clamped to the network) as a network of its own.
    pub fn sub_network(&self, range: std::ops::Range<usize>) -> Result<Network> {
        let network = self;
        let layers = network.layers();
        let range = range.start.min(layers.len())..range.end.min(layers.len());
        let mut channels = network.in_channels();
        for l in &layers[..range.start] {
            if let Op::Conv { spec, .. } = &l.op {
                channels = spec.out_channels;
            }
        }
        let mut b = Network::builder(
            format!("{} [{}..{}]", network.name(), range.start, range.end),
            channels,
        );
        for l in &layers[range] {
            let name = l.name.clone();
            b = match &l.op {
                Op::Conv { spec, weight, bias } => {
                    b.conv(name, *spec, weight.clone(), bias.clone())
                }
                Op::MaxPool(p) => b.max_pool(name, *p),
                Op::Relu => b.relu(name),
                Op::Softmax => b.softmax(name),
                Op::Zoom(z) => b.zoom(name, z.factor),
                Op::Deconv { spec, weight } => b.deconv(name, *spec, weight.clone()),
            };
        }
        b.build()
    }

    /// Replaces a layer's weights (and bias), checking shapes.
    pub fn set_weights(
        &mut self,
        name: &str,
        new_weight: Array4<f32>,
        new_bias: Option<Array1<f32>>,
    ) -> Result<()> {
        let layer = self
            .layers
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::Layer {
                layer: name.to_string(),
                reason: "no such layer in the network".into(),
            })?;
        let mismatch = |want: &[usize], got: &[usize]| Error::ShapeMismatch {
            context: format!("layer {name}"),
            left_name: "given weight",
            left: got.to_vec(),
            right_name: "layer weight",
            right: want.to_vec(),
        };
        match &mut layer.op {
            Op::Conv { spec, weight, bias } => {
                if new_weight.shape() != spec.weight_shape() {
                    return Err(mismatch(&spec.weight_shape(), new_weight.shape()));
                }
                match (&new_bias, spec.bias) {
                    (Some(b), true) if b.len() != spec.out_channels => {
                        return Err(Error::BiasLength {
                            context: name.to_string(),
                            expected: spec.out_channels,
                            actual: b.len(),
                        });
                    }
                    (None, true) => {
                        return Err(Error::Layer {
                            layer: name.to_string(),
                            reason: "the layer needs a bias".into(),
                        });
                    }
                    (Some(_), false) => {
                        return Err(Error::Layer {
                            layer: name.to_string(),
                            reason: "the layer has no bias".into(),
                        });
                    }
                    _ => {}
                }
                *weight = new_weight;
                *bias = new_bias;
                Ok(())
            }
            Op::Deconv { spec, weight } => {
                if new_weight.shape() != spec.weight_shape() {
                    return Err(mismatch(&spec.weight_shape(), new_weight.shape()));
                }
                *weight = new_weight;
                Ok(())
            }
            _ => Err(Error::Layer {
                layer: name.to_string(),
                reason: "the layer has no weights".into(),
            }),
        }
    }
}

impl Network {
    /// The layers whose weights must come from a weight file: every convolution. The
    /// per-channel upsampling deconvolution has fixed bilinear weights and is optional.
    pub fn required_weights(&self) -> Vec<crate::weights::ExpectedLayer> {
        self.layers
            .iter()
            .filter_map(|l| match &l.op {
                Op::Conv { spec, .. } => Some(crate::weights::ExpectedLayer::new(
                    l.name.clone(),
                    spec.weight_shape(),
                    spec.bias,
                )),
                _ => None,
            })
            .collect()
    }

    /// Loads every layer's weights from a weight set, by layer name. Every convolution must be
    /// present with the right shape (the error names the layer and both shapes); the
    /// upsampling deconvolution is taken when present; other entries are ignored.
    pub fn load_weights(&mut self, set: &crate::weights::WeightSet) -> Result<()> {
        set.check(&self.required_weights())?;
        let names: Vec<String> = self.layers.iter().map(|l| l.name.clone()).collect();
        for name in names {
            if let Some(w) = set.get(&name) {
                self.set_weights(&name, w.weight.clone(), w.bias.clone())?;
            }
        }
        Ok(())
    }

    /// Loads the weights of the layers the set has, leaving the others as they are, and
    /// returns the names of the convolutions it had no weights for (to start training from a
    /// partial set: VGG-16's convolutions for the front-end, whose final layer is new, or a
    /// front-end for the joint stage, whose context module keeps its identity initialisation).
    ///
    /// A weight with the layer's output count and element count but another shape is taken
    /// in the layer's shape: an inner product's `[out, in * kh * kw, 1, 1]` becomes the
    /// `[out, in, kh, kw]` convolution it is (VGG-16's fc6 and fc7), Caffe's order being the
    /// same. Any other shape, or a bias that does not fit, is an error naming the layer.
    pub fn load_available_weights(
        &mut self,
        set: &crate::weights::WeightSet,
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        let names: Vec<(String, Option<[usize; 4]>)> = self
            .layers
            .iter()
            .map(|l| {
                let shape = match &l.op {
                    Op::Conv { spec, .. } => Some(spec.weight_shape()),
                    Op::Deconv { spec, .. } => Some(spec.weight_shape()),
                    _ => None,
                };
                (l.name.clone(), shape)
            })
            .collect();
        for (name, shape) in names {
            let Some(shape) = shape else { continue };
            let Some(w) = set.get(&name) else {
                if matches!(self.layer(&name).map(|l| &l.op), Some(Op::Conv { .. })) {
                    missing.push(name);
                }
                continue;
            };
            let found = w.weight_shape();
            let weight = if found != shape
                && found[0] == shape[0]
                && found.iter().product::<usize>() == shape.iter().product::<usize>()
            {
                w.weight
                    .as_standard_layout()
                    .to_owned()
                    .into_shape_with_order(shape)
                    .map_err(|e| Error::Internal(format!("reshaping {name}: {e}")))?
            } else {
                w.weight.clone()
            };
            self.set_weights(&name, weight, w.bias.clone())?;
        }
        Ok(missing)
    }

    /// Every layer's weights as a weight set (names `conv1_1`, ..., as in the network).
    pub fn weight_set(&self) -> Result<crate::weights::WeightSet> {
        use crate::weights::LayerWeights;
        let mut set = crate::weights::WeightSet::new();
        for l in &self.layers {
            match &l.op {
                Op::Conv { weight, bias, .. } => {
                    set.insert(
                        &l.name,
                        LayerWeights::new(&l.name, weight.clone(), bias.clone())?,
                    );
                }
                Op::Deconv { weight, .. } => {
                    set.insert(&l.name, LayerWeights::new(&l.name, weight.clone(), None)?);
                }
                _ => {}
            }
        }
        Ok(set)
    }
}

/// Builds a [`Network`] layer by layer; channel counts and weight shapes are checked by
/// [`NetworkBuilder::build`], which names the offending layer.
#[derive(Clone, Debug)]
pub struct NetworkBuilder {
    name: String,
    in_channels: usize,
    layers: Vec<Layer>,
}

impl NetworkBuilder {
    /// Adds a convolution with given weights.
    pub fn conv(
        mut self,
        name: impl Into<String>,
        spec: Conv2d,
        weight: Array4<f32>,
        bias: Option<Array1<f32>>,
    ) -> Self {
        self.layers.push(Layer {
            name: name.into(),
            op: Op::Conv { spec, weight, bias },
        });
        self
    }

    /// Adds a convolution with He-initialised weights (normal, std `sqrt(2 / fan_in)`, seeded)
    /// and zero bias.
    pub fn conv_he(self, name: impl Into<String>, spec: Conv2d, seed: u64) -> Self {
        let (weight, bias) = he_init(&spec, seed);
        self.conv(name, spec, weight, bias)
    }

    /// Adds max pooling.
    pub fn max_pool(mut self, name: impl Into<String>, spec: MaxPool2d) -> Self {
        self.layers.push(Layer {
            name: name.into(),
            op: Op::MaxPool(spec),
        });
        self
    }

    /// Adds a ReLU.
    pub fn relu(mut self, name: impl Into<String>) -> Self {
        self.layers.push(Layer {
            name: name.into(),
            op: Op::Relu,
        });
        self
    }

    /// Adds a softmax over channels.
    pub fn softmax(mut self, name: impl Into<String>) -> Self {
        self.layers.push(Layer {
            name: name.into(),
            op: Op::Softmax,
        });
        self
    }

    /// Adds a bilinear zoom.
    pub fn zoom(mut self, name: impl Into<String>, factor: usize) -> Self {
        self.layers.push(Layer {
            name: name.into(),
            op: Op::Zoom(Zoom { factor }),
        });
        self
    }

    /// Adds a per-channel transposed convolution with given weights.
    pub fn deconv(mut self, name: impl Into<String>, spec: Deconv2d, weight: Array4<f32>) -> Self {
        self.layers.push(Layer {
            name: name.into(),
            op: Op::Deconv { spec, weight },
        });
        self
    }

    /// Adds a per-channel transposed convolution with Caffe's fixed bilinear weights.
    pub fn deconv_bilinear(self, name: impl Into<String>, spec: Deconv2d) -> Self {
        let weight = Array4::from_shape_vec(spec.weight_shape(), spec.bilinear_weights())
            .unwrap_or_else(|_| Array4::zeros(spec.weight_shape()));
        self.deconv(name, spec, weight)
    }

    /// Appends every layer of another network (its input channels must follow on).
    pub fn append(mut self, other: Network) -> Self {
        self.layers.extend(other.layers);
        self
    }

    /// Checks channel flow, weight shapes and names, and returns the network.
    pub fn build(self) -> Result<Network> {
        let mut channels = self.in_channels;
        let mut names = std::collections::HashSet::new();
        if channels == 0 {
            return Err(Error::ZeroDimension {
                context: self.name.clone(),
                what: "input channel count",
            });
        }
        for l in &self.layers {
            let err = |reason: String| Error::Layer {
                layer: l.name.clone(),
                reason,
            };
            if !names.insert(l.name.as_str()) {
                return Err(err("the name is used twice".into()));
            }
            match &l.op {
                Op::Conv { spec, weight, bias } => {
                    spec.validate(&l.name)?;
                    if spec.in_channels != channels {
                        return Err(err(format!(
                            "takes {} input channels but the previous layer gives {channels}",
                            spec.in_channels
                        )));
                    }
                    crate::spec::check_conv_params(
                        spec,
                        &weight.view(),
                        bias.as_ref().map(|b| b.view()).as_ref(),
                        &l.name,
                    )?;
                    channels = spec.out_channels;
                }
                Op::Deconv { spec, weight } => {
                    if spec.channels != channels {
                        return Err(err(format!(
                            "has {} channels but the previous layer gives {channels}",
                            spec.channels
                        )));
                    }
                    if weight.shape() != spec.weight_shape() {
                        return Err(err(format!(
                            "weight shape {:?}, expected {:?}",
                            weight.shape(),
                            spec.weight_shape()
                        )));
                    }
                }
                Op::MaxPool(p) => p.validate(&l.name)?,
                Op::Zoom(z) => {
                    if z.factor == 0 {
                        return Err(Error::ZeroDimension {
                            context: l.name.clone(),
                            what: "zoom factor",
                        });
                    }
                }
                Op::Relu | Op::Softmax => {}
            }
        }
        Ok(Network {
            name: self.name,
            in_channels: self.in_channels,
            layers: self.layers,
        })
    }
}

/// He initialisation: normal weights with std `sqrt(2 / fan_in)`, zero bias.
pub fn he_init(spec: &Conv2d, seed: u64) -> (Array4<f32>, Option<Array1<f32>>) {
    let fan_in = (spec.in_channels * spec.kernel.0 * spec.kernel.1).max(1);
    let std = (2.0 / fan_in as f64).sqrt() as f32;
    let mut rng = StdRng::seed_from_u64(seed);
    let normal =
        Normal::new(0.0f32, std).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("unit normal"));
    let weight = Array4::from_shape_simple_fn(spec.weight_shape(), || normal.sample(&mut rng));
    (weight, spec.bias.then(|| Array1::zeros(spec.out_channels)))
}
