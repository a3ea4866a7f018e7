//! The gradient through a ReLU on the GPU (Caffe's backward: the gradient where the output is
//! positive, zero elsewhere), for a separate ReLU layer or a convolution's fused one.

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::ops::train::fits;
use crate::gpu::shader::{Kernel, uniform};
use crate::gpu::tensor::GpuTensor;

uniform! {
    /// Uniform of `shaders/grad/relu_grad.wgsl`.
    pub(crate) struct ReluGradParams {
        total: u32, pad0: u32, pad1: u32, pad2: u32,
    }
}

/// `output = grad` where the ReLU's `activation` (its output) is positive, else 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuReluGrad;

impl GpuReluGrad {
    /// Records the masked gradient of `grad` by `activation` into `output` (all one shape).
    pub fn prepare(
        &self,
        gpu: &Gpu,
        grad: &GpuTensor,
        activation: &GpuTensor,
        output: &GpuTensor,
    ) -> Result<Vec<Dispatch>> {
        let shape = grad.shape();
        expect_shape("relu gradient", activation.shape(), shape)?;
        expect_shape("relu gradient", output.shape(), shape)?;
        fits(gpu, "the relu gradient", shape.len())?;
        let window = |t: &GpuTensor| gpu.window(&t.buffer, 0, shape.len());
        Ok(vec![gpu.linear_dispatch(
            Kernel::ReluGrad,
            &ReluGradParams {
                total: shape.len() as u32,
                ..ReluGradParams::default()
            },
            &[
                (&grad.buffer, window(grad)),
                (&activation.buffer, window(activation)),
                (&output.buffer, window(output)),
            ],
            shape.len(),
        )?])
    }

    /// The masked gradient in a new tensor.
    pub fn run(&self, gpu: &Gpu, grad: &GpuTensor, activation: &GpuTensor) -> Result<GpuTensor> {
        let output = gpu.empty(grad.shape())?;
        gpu.run(&self.prepare(gpu, grad, activation, &output)?)?;
        Ok(output)
    }
}
