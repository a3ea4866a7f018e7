//! Gradients of a convolution on the GPU: with respect to its input (to go on backwards), its
//! weights and its bias. The weight gradient is kept in the forward kernels' row layout
//! `[out][kh][kw][in]`, so the SGD step updates the layer's weights in place.

use ndarray::{Array1, Array4};

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::GpuLayer;
use crate::gpu::ops::conv::{ConvParams, GpuConv2d};
use crate::gpu::ops::train::fits;
use crate::gpu::shader::Kernel;
use crate::gpu::tensor::GpuTensor;
use crate::spec::Shape;

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
        let s = &conv.spec;
        Ok(Self {
            weight: gpu.filled(
                Shape::new(s.out_channels, s.kernel.0, s.kernel.1, s.in_channels),
                0.0,
            )?,
            bias: if s.bias {
                Some(gpu.filled(Shape::new(1, s.out_channels, 1, 1), 0.0)?)
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

impl GpuConv2d {
    /// The uniform of the gradient kernels for an input of `input` shape: whole layers, no
    /// windows.
    fn grad_uniform(&self, input: Shape, output: Shape, total: usize) -> ConvParams {
        ConvParams {
            in_c: self.spec.in_channels as u32,
            in_h: input.h as u32,
            in_w: input.w as u32,
            out_c: self.spec.out_channels as u32,
            out_h: output.h as u32,
            out_w: output.w as u32,
            batch: input.n as u32,
            total: total as u32,
            ..self.template
        }
    }

    /// Checks `grad_output` against the output the layer computes from `input`.
    fn check_grad_output(&self, input: Shape, grad_output: Shape) -> Result<Shape> {
        let output = self.output_shape(input)?;
        expect_shape("conv2d gradient", grad_output, output)?;
        Ok(output)
    }

    /// Records `grad_input = dL/dx` from `grad_output = dL/dy`, the gradient of the output
    /// before the fused ReLU (mask it first with [`crate::gpu::GpuReluGrad`] for a layer with
    /// one).
    pub fn prepare_grad_input(
        &self,
        gpu: &Gpu,
        grad_output: &GpuTensor,
        grad_input: &GpuTensor,
    ) -> Result<Vec<Dispatch>> {
        let input = grad_input.shape();
        let output = self.check_grad_output(input, grad_output.shape())?;
        fits(gpu, "the input gradient", input.len())?;
        fits(gpu, "the output gradient", output.len())?;
        fits(gpu, "the weights", self.spec.weight_len())?;
        let params = self.grad_uniform(input, output, input.len());
        let storage = [
            (
                &grad_output.buffer,
                gpu.window(&grad_output.buffer, 0, output.len()),
            ),
            (
                &self.weight,
                gpu.window(&self.weight, 0, self.spec.weight_len()),
            ),
            (
                &grad_input.buffer,
                gpu.window(&grad_input.buffer, 0, input.len()),
            ),
        ];
        Ok(vec![gpu.linear_dispatch(
            Kernel::ConvGradInput,
            &params,
            &storage,
            input.len(),
        )?])
    }

    /// Records the parameters' gradients from the layer's `input` and `grad_output` (before
    /// the fused ReLU) into `grads` (shaped by [`ConvGrads::zeros`]), overwriting them.
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
        fits(gpu, "the input", in_shape.len())?;
        fits(gpu, "the output gradient", output.len())?;
        fits(gpu, "the weight gradient", rows.len())?;
        let grad_win = (
            &grad_output.buffer,
            gpu.window(&grad_output.buffer, 0, output.len()),
        );
        let mut dispatches = vec![gpu.linear_dispatch(
            Kernel::ConvGradWeight,
            &self.grad_uniform(in_shape, output, rows.len()),
            &[
                (&input.buffer, gpu.window(&input.buffer, 0, in_shape.len())),
                grad_win,
                (
                    &grads.weight.buffer,
                    gpu.window(&grads.weight.buffer, 0, rows.len()),
                ),
            ],
            rows.len(),
        )?];
        match (&grads.bias, s.bias) {
            (Some(bias), true) => {
                expect_shape(
                    "conv2d bias gradient",
                    bias.shape(),
                    Shape::new(1, s.out_channels, 1, 1),
                )?;
                dispatches.push(gpu.linear_dispatch(
                    Kernel::ConvGradBias,
                    &self.grad_uniform(in_shape, output, s.out_channels),
                    &[
                        grad_win,
                        (&bias.buffer, gpu.window(&bias.buffer, 0, s.out_channels)),
                    ],
                    s.out_channels,
                )?);
            }
            (None, false) => {}
            _ => {
                return Err(Error::InvalidSpec {
                    context: "conv2d gradient".into(),
                    reason: "the gradients' bias does not match the layer's".into(),
                });
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
