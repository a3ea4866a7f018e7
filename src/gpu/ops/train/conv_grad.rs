//! Gradients of a convolution on the GPU: with respect to its input (to go on backwards), its
//! weights and its bias. The weight gradient is kept in the forward kernels' row layout
//! `[out][kh][kw][in]`, so the SGD step updates the layer's weights in place. The work is cut
//! into the forward pass's chunks (see [`crate::gpu::ops::conv_chunks`]), so weights and
//! activations larger than one storage binding (fc6's 411 MB weights) are bound in windows.
//!
//! Two ways to compute them ([`ConvGradAlgorithm`]):
//! - The fast one. For stride 1 and padding no wider than the kernel's extent, the input
//!   gradient is itself a convolution: of `dL/dy` with the weights turned 180 degrees and
//!   their input and output channels swapped (`shaders/grad/conv2d_weight_flip.wgsl` writes
//!   them, into scratch), padded by the extent minus the layer's padding. It runs through the
//!   forward kernels (the layer's own kernel choice: register-blocked, tiled or direct), so it
//!   is as fast as a forward pass. The weight gradient, a matrix product of the output
//!   gradient and the input's windows reduced over pixels, runs register-blocked
//!   (`shaders/grad/conv2d_grad_weight_blocked.wgsl`) on adapters that run shaders on CPU
//!   cores with subgroups of at least 8, the devices where the forward pass runs
//!   register-blocked too (its few workgroups, each reducing over many pixels, would leave
//!   most of a large GPU idle).
//! - The gather kernels, one output element per invocation (`conv2d_grad_input.wgsl`,
//!   `conv2d_grad_weight.wgsl`), for every geometry: strides, wide padding, weights above one
//!   binding, devices without subgroups.

use ndarray::{Array1, Array4};

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io, expect_precision};
use crate::gpu::ops::conv::{ConvParams, GpuConv2d};
use crate::gpu::ops::conv_chunks::{ConvChunk, conv_chunks};
use crate::gpu::precision::Precision;
use crate::gpu::shader::{BLOCK_C, Kernel, MAX_LOOP_STEPS, WG_BLOCKED, WG_LINEAR};
use crate::gpu::tensor::{GpuTensor, Window};
use crate::spec::{Conv2d, Padding, Shape};

/// How a convolution's gradients are computed on the GPU (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvGradAlgorithm {
    /// The fast kernels where they apply, the gather kernels elsewhere: the input gradient as
    /// the forward convolution of the flipped weights for stride 1, padding at most the
    /// kernel's extent on every side and weights of at most [`FLIP_MAX_BYTES`] that fit one
    /// storage binding; the weight gradient register-blocked on adapters that run shaders on
    /// CPU cores with subgroups of at least 8, for outputs of fewer than [`MAX_LOOP_STEPS`]
    /// columns.
    #[default]
    Auto,
    /// The gather kernels, one output element per invocation, for every layer.
    Gather,
}

/// Most bytes of flipped weights the fast input gradient keeps in scratch; larger layers
/// (fc6) take the gather kernel.
pub const FLIP_MAX_BYTES: u64 = 128 << 20;

/// The convolution computing `spec`'s input gradient from its flipped weights, when `spec` has
/// stride 1, no side's padding exceeds the kernel's extent there and its weights take at most
/// [`FLIP_MAX_BYTES`]: channels swapped, the same kernel and dilation, each side padded by the
/// kernel's extent there minus the layer's padding on that side. Whether the weights fit the
/// device's bindings is the caller's to check.
pub(crate) fn input_gradient_spec(spec: &Conv2d) -> Option<Conv2d> {
    if spec.weight_len() as u64 * 4 > FLIP_MAX_BYTES {
        return None;
    }
    let ext_h = spec.dilation.0 * (spec.kernel.0 - 1);
    let ext_w = spec.dilation.1 * (spec.kernel.1 - 1);
    let p = spec.padding;
    if spec.stride != (1, 1) || p.top.max(p.bottom) > ext_h || p.left.max(p.right) > ext_w {
        return None;
    }
    Some(Conv2d {
        in_channels: spec.out_channels,
        out_channels: spec.in_channels,
        kernel: spec.kernel,
        dilation: spec.dilation,
        stride: (1, 1),
        padding: Padding::new(
            ext_h - p.top,
            ext_w - p.left,
            ext_h - p.bottom,
            ext_w - p.right,
        ),
        bias: false,
        relu: false,
    })
}

/// Gradients (or momentum) of one convolution's parameters, on the GPU.
pub struct ConvGrads {
    /// The weights' part, `[out, kh, kw, in]` (the kernels' row layout) as a tensor shape.
    pub weight: GpuTensor,
    /// The bias' part, `[1, out, 1, 1]`, for a layer with a bias.
    pub bias: Option<GpuTensor>,
}

impl ConvGrads {
    /// Zeros shaped for `conv`'s parameters (for momentum).
    pub fn zeros(gpu: &Gpu, conv: &GpuConv2d) -> Result<Self> {
        Self::filled(gpu, conv, 0.0)
    }

    /// `value` everywhere, shaped for `conv`'s parameters (NaN poisons gradients so that an
    /// element a pass fails to write shows).
    pub fn filled(gpu: &Gpu, conv: &GpuConv2d, value: f32) -> Result<Self> {
        let s = &conv.spec;
        Ok(Self {
            weight: gpu.filled(
                Shape::new(s.out_channels, s.kernel.0, s.kernel.1, s.in_channels),
                value,
            )?,
            bias: if s.bias {
                Some(gpu.filled(Shape::new(1, s.out_channels, 1, 1), value)?)
            } else {
                None
            },
        })
    }

    /// Overwrites the values with `values` (weights `[out, in, kh, kw]`, bias when the layer
    /// has one), checking shapes.
    pub fn upload(&self, gpu: &Gpu, values: &crate::weights::LayerWeights) -> Result<()> {
        let rows = self.weight.shape();
        let want = [rows.n, rows.w, rows.c, rows.h];
        if values.weight.shape() != want {
            return Err(Error::ShapeMismatch {
                context: "parameter upload".into(),
                left_name: "values",
                left: values.weight.shape().to_vec(),
                right_name: "layer weights",
                right: want.to_vec(),
            });
        }
        let permuted = values.weight.view().permuted_axes([0, 2, 3, 1]);
        gpu.write_tensor(&self.weight, permuted.as_standard_layout().view())?;
        match (&self.bias, &values.bias) {
            (Some(t), Some(b)) if b.len() == t.shape().c => {
                let b4 = b.view().into_shape_with_order((1, b.len(), 1, 1));
                let b4 = b4.map_err(|e| Error::Internal(format!("bias: {e}")))?;
                gpu.write_tensor(t, b4)
            }
            (None, None) => Ok(()),
            _ => Err(Error::InvalidSpec {
                context: "parameter upload".into(),
                reason: "the bias does not match the layer's".into(),
            }),
        }
    }

    /// Reads the parameters' values back: the weights as `[out, in, kh, kw]` (the layout
    /// networks use) and the bias.
    pub fn download(&self, gpu: &Gpu) -> Result<(Array4<f32>, Option<Array1<f32>>)> {
        let rows = gpu.download(&self.weight)?;
        let weight = rows
            .permuted_axes([0, 3, 1, 2])
            .as_standard_layout()
            .to_owned();
        let bias = match &self.bias {
            Some(b) => Some(Array1::from(gpu.download(b)?.into_raw_vec_and_offset().0)),
            None => None,
        };
        Ok((weight, bias))
    }
}

/// Flag of the gradient kernels: add to the values already in the output (the later chunks of
/// a reduction split over chunks).
const FLAG_ACCUMULATE: u32 = 4;

/// The windows of one chunk of a convolution's gradient: the layer input's (or its gradient's),
/// the output gradient's, and the first element of the chunk's weight rows.
struct ChunkWindows {
    chunk: ConvChunk,
    input: Window,
    output: Window,
    /// Element of the weight rows where the chunk's first output channel starts.
    w_start: usize,
}

impl GpuConv2d {
    /// Checks `grad_output` against the output the layer computes from `input`.
    fn check_grad_output(&self, input: Shape, grad_output: Shape) -> Result<Shape> {
        let output = self.output_shape(input)?;
        expect_shape("conv2d gradient", grad_output, output)?;
        Ok(output)
    }

    /// The chunks of a gradient at `input` / `output` shapes, with the windows of the buffers
    /// `x` (input-shaped) and `g` (output-shaped): the forward pass's chunks, so every window
    /// fits one binding.
    fn grad_chunks(
        &self,
        gpu: &Gpu,
        input: Shape,
        output: Shape,
        x: &wgpu::Buffer,
        g: &wgpu::Buffer,
    ) -> Result<Vec<ChunkWindows>> {
        let (in_plane, out_plane) = (input.plane(), output.plane());
        let w_row = self.template.w_row as usize;
        Ok(
            conv_chunks(&self.spec, input, output, gpu.max_binding_elems())?
                .into_iter()
                .map(|ch| {
                    let whole = ch.nb > 1;
                    let in_start = (ch.n0 * input.c + ch.ci0) * in_plane;
                    let in_len = if whole {
                        ch.nb * input.c * in_plane
                    } else {
                        ch.ci_n * in_plane
                    };
                    let out_start = (ch.n0 * output.c + ch.co0) * out_plane;
                    let out_len = if whole {
                        ch.nb * output.c * out_plane
                    } else {
                        ch.co_n * out_plane
                    };
                    ChunkWindows {
                        chunk: ch,
                        input: gpu.window(x, in_start, in_len),
                        output: gpu.window(g, out_start, out_len),
                        w_start: ch.co0 * w_row,
                    }
                })
                .collect(),
        )
    }

    /// The uniform of a gradient kernel over one chunk.
    fn grad_uniform(&self, input: Shape, output: Shape, c: &ChunkWindows) -> ConvParams {
        let ch = c.chunk;
        ConvParams {
            in_c: ch.ci_n as u32,
            in_h: input.h as u32,
            in_w: input.w as u32,
            in_base: c.input.base,
            out_c: ch.co_n as u32,
            out_h: output.h as u32,
            out_w: output.w as u32,
            out_base: c.output.base,
            batch: ch.nb as u32,
            in_batch_stride: (input.c * input.plane()) as u32,
            out_batch_stride: (output.c * output.plane()) as u32,
            ..self.template
        }
    }

    /// How the layer's gradients are computed (default [`ConvGradAlgorithm::Auto`]).
    pub fn with_grad_algorithm(mut self, algorithm: ConvGradAlgorithm) -> Self {
        self.grad_algorithm = algorithm;
        self
    }

    /// The layer's gradient algorithm.
    pub fn grad_algorithm(&self) -> ConvGradAlgorithm {
        self.grad_algorithm
    }

    /// The spec of the convolution the fast input gradient runs on this device (`None`: the
    /// gather kernel).
    fn input_gradient_spec_on(&self, gpu: &Gpu) -> Option<Conv2d> {
        if self.grad_algorithm != ConvGradAlgorithm::Auto
            || self.precision() != Precision::F32
            || self.spec.weight_len() > gpu.max_binding_elems()
        {
            return None;
        }
        input_gradient_spec(&self.spec)
    }

    /// Bytes of flipped weights the input gradient needs (0 for the gather kernel).
    pub fn grad_input_scratch_bytes(&self, gpu: &Gpu) -> u64 {
        match self.input_gradient_spec_on(gpu) {
            Some(_) => self.spec.weight_len() as u64 * 4,
            None => 0,
        }
    }

    /// Records `grad_input = dL/dx` from `grad_output = dL/dy`, the gradient of the output
    /// before the fused ReLU (mask it first with [`crate::gpu::GpuReluGrad`] for a layer with
    /// one). The fast path (see [`ConvGradAlgorithm::Auto`]) keeps the flipped weights in a
    /// buffer of its own; [`GpuConv2d::prepare_grad_input_in`] shares scratch instead.
    pub fn prepare_grad_input(
        &self,
        gpu: &Gpu,
        grad_output: &GpuTensor,
        grad_input: &GpuTensor,
    ) -> Result<Vec<Dispatch>> {
        self.prepare_grad_input_in(gpu, grad_output, grad_input, None)
    }

    /// [`GpuConv2d::prepare_grad_input`] with `flipped` holding the flipped weights when at
    /// least as large as [`GpuConv2d::grad_input_scratch_bytes`] says (a buffer of its own
    /// otherwise).
    ///
    /// The fast path records the flip, then the forward convolution of `grad_output` with
    /// the flipped weights (its reduction never split, so it needs no further scratch). The
    /// gather kernel's work is cut as the forward pass cuts it, over
    /// images, input channels and output channels, so layers whose weights or activations
    /// exceed one storage binding work; output channels are further cut so that an invocation
    /// gathers at most [`MAX_LOOP_STEPS`] terms, each later chunk adding to the sums.
    ///
    /// Errors: shapes that do not match the layer, a layer stored in f16 (gradients are f32),
    /// and the device's errors.
    pub fn prepare_grad_input_in(
        &self,
        gpu: &Gpu,
        grad_output: &GpuTensor,
        grad_input: &GpuTensor,
        flipped: Option<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>> {
        let input = grad_input.shape();
        let output = self.check_grad_output(input, grad_output.shape())?;
        expect_precision("conv2d gradient", Precision::F32, self.precision())?;
        expect_precision("conv2d gradient", Precision::F32, grad_output.precision())?;
        expect_precision("conv2d gradient", Precision::F32, grad_input.precision())?;
        if let Some(spec) = self.input_gradient_spec_on(gpu) {
            let len = self.spec.weight_len();
            let flipped = match flipped {
                Some(b) if b.size() >= len as u64 * 4 => b.clone(),
                _ => gpu.create_buffer(
                    "conv flipped weights",
                    len as u64 * 4,
                    wgpu::BufferUsages::STORAGE,
                )?,
            };
            let conv = self.sibling(spec, flipped).with_split(false);
            let s = &self.spec;
            let flip = ConvParams {
                in_c: s.in_channels as u32,
                out_c: s.out_channels as u32,
                total: len as u32,
                ..self.template
            };
            let mut dispatches = vec![gpu.linear_dispatch(
                Kernel::ConvWeightFlip,
                &flip,
                &[
                    (&self.weight, gpu.window(&self.weight, 0, len)),
                    (&conv.weight, gpu.window(&conv.weight, 0, len)),
                ],
                len,
            )?];
            dispatches.extend(conv.prepare(gpu, &Io::tensors(grad_output, grad_input))?);
            return Ok(dispatches);
        }
        let w_row = self.template.w_row as usize;
        let out_plane = output.plane();
        // Output channels per dispatch, so the gather's innermost loop stays within bounds.
        let taps = self.spec.kernel.0 * self.spec.kernel.1;
        let co_step = (MAX_LOOP_STEPS / taps).max(1);
        let mut dispatches = Vec::new();
        for c in self.grad_chunks(gpu, input, output, &grad_input.buffer, &grad_output.buffer)? {
            let ch = c.chunk;
            let w_win = gpu.window(&self.weight, c.w_start, ch.co_n * w_row);
            let total = ch.nb * ch.ci_n * input.plane();
            for co in (0..ch.co_n).step_by(co_step) {
                let params = ConvParams {
                    out_c: co_step.min(ch.co_n - co) as u32,
                    out_base: c.output.base + (co * out_plane) as u32,
                    w_base: w_win.base + (co * w_row + ch.ci0) as u32,
                    flags: if ch.co0 + co > 0 { FLAG_ACCUMULATE } else { 0 },
                    total: total as u32,
                    ..self.grad_uniform(input, output, &c)
                };
                dispatches.push(gpu.linear_dispatch(
                    Kernel::ConvGradInput,
                    &params,
                    &[
                        (&grad_output.buffer, c.output),
                        (&self.weight, w_win),
                        (&grad_input.buffer, c.input),
                    ],
                    total,
                )?);
            }
        }
        Ok(dispatches)
    }

    /// Whether the weight gradient runs register-blocked for outputs of `output` (see
    /// [`ConvGradAlgorithm::Auto`]).
    fn blocked_weight_gradient(&self, output: Shape) -> bool {
        self.grad_algorithm == ConvGradAlgorithm::Auto
            && self.blocked_preferred()
            && self.precision() == Precision::F32
            && output.w < MAX_LOOP_STEPS
    }

    /// Records the parameters' gradients from the layer's `input` and `grad_output` (before
    /// the fused ReLU) into `grads` (shaped by [`ConvGrads::zeros`]), overwriting them. The
    /// work is cut as the forward pass cuts it, so layers whose weights or activations exceed
    /// one storage binding work, and each chunk's output pixels into ranges whose loops run
    /// at most [`MAX_LOOP_STEPS`] iterations (whole output rows for the register-blocked
    /// kernel); each later chunk of images and range adds to the sums.
    ///
    /// Errors: shapes that do not match the layer, a layer stored in f16 (gradients are f32),
    /// and the device's errors.
    pub fn prepare_grad_params(
        &self,
        gpu: &Gpu,
        input: &GpuTensor,
        grad_output: &GpuTensor,
        grads: &ConvGrads,
    ) -> Result<Vec<Dispatch>> {
        let s = &self.spec;
        let in_shape = input.shape();
        let output = self.check_grad_output(in_shape, grad_output.shape())?;
        let rows = Shape::new(s.out_channels, s.kernel.0, s.kernel.1, s.in_channels);
        expect_shape("conv2d weight gradient", grads.weight.shape(), rows)?;
        let bias = match (&grads.bias, s.bias) {
            (Some(bias), true) => {
                expect_shape(
                    "conv2d bias gradient",
                    bias.shape(),
                    Shape::new(1, s.out_channels, 1, 1),
                )?;
                Some(bias)
            }
            (None, false) => None,
            _ => {
                return Err(Error::InvalidSpec {
                    context: "conv2d gradient".into(),
                    reason: "the gradients' bias does not match the layer's".into(),
                });
            }
        };
        expect_precision("conv2d gradient", Precision::F32, self.precision())?;
        expect_precision("conv2d gradient", Precision::F32, input.precision())?;
        expect_precision("conv2d gradient", Precision::F32, grad_output.precision())?;
        let w_row = self.template.w_row as usize;
        let taps = s.kernel.0 * s.kernel.1;
        let blocked = self.blocked_weight_gradient(output);
        // Pixels per range: whole rows for the blocked kernel, whose loops also count one
        // iteration per row.
        let step = if blocked {
            (MAX_LOOP_STEPS / (output.w + 1)).max(1) * output.w
        } else {
            MAX_LOOP_STEPS
        };
        let mut dispatches = Vec::new();
        for c in self.grad_chunks(gpu, in_shape, output, &input.buffer, &grad_output.buffer)? {
            let ch = c.chunk;
            let w_win = gpu.window(&grads.weight.buffer, c.w_start, ch.co_n * w_row);
            let b_win = bias.map(|b| gpu.window(&b.buffer, ch.co0, ch.co_n));
            let columns = taps * ch.ci_n;
            let (kernel, total, workgroups) = if blocked {
                let groups =
                    ch.co_n.div_ceil(BLOCK_C as usize) * columns.div_ceil(4 * WG_BLOCKED as usize);
                (Kernel::ConvGradWeightBlocked, groups, groups)
            } else {
                let total = ch.co_n * columns;
                (
                    Kernel::ConvGradWeight,
                    total,
                    total.div_ceil(WG_LINEAR as usize),
                )
            };
            // The chunk's output pixels in ranges of bounded loops, each after the first adding
            // to the sums (as each chunk of images after the first does).
            let pixels = ch.nb * output.plane();
            for start in (0..pixels).step_by(step) {
                let flags = if ch.n0 > 0 || start > 0 {
                    FLAG_ACCUMULATE
                } else {
                    0
                };
                let ranged = ConvParams {
                    flags,
                    range_start: start as u32,
                    range_len: step.min(pixels - start) as u32,
                    ..self.grad_uniform(in_shape, output, &c)
                };
                dispatches.push(gpu.dispatch_as(
                    kernel,
                    Precision::F32,
                    &ConvParams {
                        w_base: w_win.base + ch.ci0 as u32,
                        total: total as u32,
                        ..ranged
                    },
                    &[
                        (&input.buffer, c.input),
                        (&grad_output.buffer, c.output),
                        (&grads.weight.buffer, w_win),
                    ],
                    workgroups,
                )?);
                // The bias once per chunk of images and output channels.
                if let (Some(bias), Some(b_win)) = (bias, b_win)
                    && ch.ci0 == 0
                {
                    dispatches.push(gpu.linear_dispatch(
                        Kernel::ConvGradBias,
                        &ConvParams {
                            bias_base: b_win.base,
                            total: ch.co_n as u32,
                            ..ranged
                        },
                        &[(&grad_output.buffer, c.output), (&bias.buffer, b_win)],
                        ch.co_n,
                    )?);
                }
            }
        }
        Ok(dispatches)
    }

    /// `dL/dx` for an input of `input_shape`, from `grad_output` (see
    /// [`GpuConv2d::prepare_grad_input`]).
    pub fn grad_input(
        &self,
        gpu: &Gpu,
        grad_output: &GpuTensor,
        input_shape: Shape,
    ) -> Result<GpuTensor> {
        let grad_input = gpu.empty(input_shape)?;
        gpu.run(&self.prepare_grad_input(gpu, grad_output, &grad_input)?)?;
        Ok(grad_input)
    }

    /// The parameters' gradients (see [`GpuConv2d::prepare_grad_params`]).
    pub fn grad_params_of(
        &self,
        gpu: &Gpu,
        input: &GpuTensor,
        grad_output: &GpuTensor,
    ) -> Result<ConvGrads> {
        let grads = ConvGrads::zeros(gpu, self)?;
        gpu.run(&self.prepare_grad_params(gpu, input, grad_output, &grads)?)?;
        Ok(grads)
    }

    /// Reads the layer's current weights `[out, in, kh, kw]` and bias back from the GPU.
    pub fn download_params(&self, gpu: &Gpu) -> Result<(Array4<f32>, Option<Array1<f32>>)> {
        let s = &self.spec;
        let rows = gpu.read_f32(&self.weight, 0, s.weight_len())?;
        let weight = Array4::from_shape_vec(
            (s.out_channels, s.kernel.0, s.kernel.1, s.in_channels),
            rows,
        )
        .map_err(|e| Error::Internal(format!("weight read-back: {e}")))?
        .permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .to_owned();
        let bias = if s.bias {
            Some(Array1::from(gpu.read_f32(&self.bias, 0, s.out_channels)?))
        } else {
            None
        };
        Ok((weight, bias))
    }
}
