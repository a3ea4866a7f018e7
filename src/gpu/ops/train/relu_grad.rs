//! The gradient through a ReLU on the GPU (Caffe's backward: the gradient where the output is
//! positive, zero elsewhere), for a separate ReLU layer or a convolution's fused one.

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::shader::{Kernel, uniform};
use crate::gpu::tensor::GpuTensor;

uniform! {
    /// Uniform of `shaders/grad/relu_grad.wgsl`.
    pub(crate) struct ReluGradParams {
        total: u32, grad_base: u32, act_base: u32, out_base: u32,
    }
}

/// `output = grad` where the ReLU's `activation` (its output) is positive, else 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuReluGrad;

impl GpuReluGrad {
    /// Records the masked gradient of `grad` by `activation` into `output` (all one shape),
    /// over ranges of elements that fit one binding.
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
        let max = gpu.max_binding_elems();
        let len = shape.len();
        let mut dispatches = Vec::new();
        for start in (0..len).step_by(max) {
            let n = max.min(len - start);
            let window = |t: &GpuTensor| gpu.window(&t.buffer, start, n);
            let (g, a, o) = (window(grad), window(activation), window(output));
            dispatches.push(gpu.linear_dispatch(
                Kernel::ReluGrad,
                &ReluGradParams {
                    total: n as u32,
                    grad_base: g.base,
                    act_base: a.base,
                    out_base: o.base,
                },
                &[
                    (&grad.buffer, g),
                    (&activation.buffer, a),
                    (&output.buffer, o),
                ],
                n,
            )?);
        }
        Ok(dispatches)
    }

    /// The masked gradient in a new tensor.
    pub fn run(&self, gpu: &Gpu, grad: &GpuTensor, activation: &GpuTensor) -> Result<GpuTensor> {
        let output = gpu.empty(grad.shape())?;
        gpu.run(&self.prepare(gpu, grad, activation, &output)?)?;
        Ok(output)
    }
}
