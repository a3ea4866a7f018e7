//! The one interface of every GPU op: a layer built once (weights uploaded, uniform template
//! filled), whose [`GpuLayer::prepare`] records the dispatches computing an output buffer from
//! an input buffer. Plans record every layer once and replay the dispatches; the provided
//! [`GpuLayer::forward`] / [`GpuLayer::forward_into`] run one op on its own.

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::ops::{
    ConvAlgorithm, GpuConv2d, GpuDeconv2d, GpuMaxPool2d, GpuRelu, GpuSoftmax, GpuZoom,
};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::GpuTensor;
use crate::net::Op;
use crate::spec::Shape;

/// The buffers one run of a layer reads and writes, with their shapes and element type.
#[derive(Clone, Copy)]
pub struct Io<'a> {
    /// The input, NCHW, of [`Io::precision`] elements.
    pub input: &'a wgpu::Buffer,
    /// The input's shape.
    pub input_shape: Shape,
    /// The output, NCHW (of [`Io::precision`] elements, or u32 labels for argmax).
    pub output: &'a wgpu::Buffer,
    /// The output's shape; it must be what the layer computes from `input_shape`.
    pub output_shape: Shape,
    /// Scratch memory the layer may use, at least [`GpuLayer::scratch_bytes`] long; without it
    /// a layer that needs scratch allocates its own.
    pub scratch: Option<&'a wgpu::Buffer>,
    /// The element type of the input and output (and of the layer's weights, which must
    /// match): every kernel runs its variant for this precision.
    pub precision: Precision,
}

impl<'a> Io<'a> {
    /// The buffers of two tensors, no shared scratch, in the input's precision.
    pub fn tensors(input: &'a GpuTensor, output: &'a GpuTensor) -> Self {
        Self {
            input: &input.buffer,
            input_shape: input.shape(),
            output: &output.buffer,
            output_shape: output.shape(),
            scratch: None,
            precision: input.precision(),
        }
    }
}

/// Errors unless a layer whose weights are stored as `weights` runs on buffers of `io`'s
/// precision.
pub(crate) fn expect_precision(layer: &str, weights: Precision, io: Precision) -> Result<()> {
    if weights == io {
        return Ok(());
    }
    Err(Error::InvalidSpec {
        context: layer.to_string(),
        reason: format!("weights stored as {weights} cannot run on {io} tensors"),
    })
}

/// A layer on the GPU.
///
/// Implementations own their weights and a `#[repr(C)]` uniform template, and split their work
/// into dispatches whose buffer windows fit one storage binding and whose grids fit the
/// per-dimension workgroup limit.
pub trait GpuLayer: Send + Sync {
    /// The op's name, used in errors.
    fn name(&self) -> &'static str;

    /// The output shape for an input shape, or why the input does not fit the layer.
    fn output_shape(&self, input: Shape) -> Result<Shape>;

    /// Records the dispatches computing `io.output` from `io.input`. The returned bind groups
    /// hold the buffers, so the dispatches can be replayed as often as wanted.
    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>>;

    /// Bytes of weights the layer holds on the GPU.
    fn weight_bytes(&self) -> u64 {
        0
    }

    /// Bytes of scratch memory a run on `input` uses (see [`Io::scratch`]).
    fn scratch_bytes(&self, _gpu: &Gpu, _input: Shape) -> Result<u64> {
        Ok(0)
    }

    /// The element type of the output for an input of `input` elements (the same, but for
    /// argmax's u32 labels, held in f32-sized tensors).
    fn output_precision(&self, input: Precision) -> Precision {
        input
    }

    /// Runs the layer into an existing tensor of the output shape and precision.
    fn forward_into(&self, gpu: &Gpu, input: &GpuTensor, output: &mut GpuTensor) -> Result<()> {
        let want = self.output_precision(input.precision());
        if output.precision() != want {
            return Err(Error::InvalidSpec {
                context: self.name().to_string(),
                reason: format!(
                    "the output tensor holds {} elements, the layer writes {want}",
                    output.precision()
                ),
            });
        }
        let dispatches = self.prepare(gpu, &Io::tensors(input, output))?;
        gpu.run(&dispatches)
    }

    /// Runs the layer into a new tensor (of the input's precision).
    fn forward(&self, gpu: &Gpu, input: &GpuTensor) -> Result<GpuTensor> {
        let mut output = gpu.empty_as(
            self.output_shape(input.shape())?,
            self.output_precision(input.precision()),
        )?;
        self.forward_into(gpu, input, &mut output)?;
        Ok(output)
    }
}

/// How convolutions choose their kernels when layers are built from a network's ops, and how
/// weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerOptions {
    /// The convolution kernel (see [`GpuConv2d::with_algorithm`]).
    pub algorithm: ConvAlgorithm,
    /// Whether convolutions may split deep reductions (see [`GpuConv2d::with_split`]).
    pub split: bool,
    /// The element type of the weights (and of the tensors the layers run on).
    pub precision: Precision,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            algorithm: ConvAlgorithm::Auto,
            split: true,
            precision: Precision::F32,
        }
    }
}

/// The GPU layer of a network op, its weights uploaded.
pub fn layer_for(gpu: &Gpu, op: &Op, options: LayerOptions) -> Result<Box<dyn GpuLayer>> {
    Ok(match op {
        Op::Conv { spec, weight, bias } => Box::new(
            GpuConv2d::new_as(
                gpu,
                *spec,
                weight.view(),
                bias.as_ref().map(|b| b.view()),
                options.precision,
            )?
            .with_algorithm(options.algorithm)
            .with_split(options.split),
        ),
        Op::Deconv { spec, weight } => Box::new(GpuDeconv2d::new_as(
            gpu,
            *spec,
            weight.view(),
            options.precision,
        )?),
        Op::MaxPool(spec) => Box::new(GpuMaxPool2d::new(*spec)),
        Op::Relu => Box::new(GpuRelu),
        Op::Softmax => Box::new(GpuSoftmax),
        Op::Zoom(spec) => Box::new(GpuZoom::new(*spec)),
    })
}

/// An error of the layer `name`, which says so when it is about the device's limits.
pub(crate) fn named_after(name: &str, e: Error) -> Error {
    match e {
        Error::ExceedsDeviceLimits {
            what,
            bytes,
            limit_name,
            limit,
        } => Error::ExceedsDeviceLimits {
            what: format!("layer {name}: {what}"),
            bytes,
            limit_name,
            limit,
        },
        other => other,
    }
}
