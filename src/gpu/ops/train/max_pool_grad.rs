//! The gradient of max pooling on the GPU (Caffe's backward): each output's gradient goes to
//! the first largest input of its window in row-major order, windows clipped to the input as
//! the forward op clips them, overlapping windows adding up. Computed as a gather, one
//! invocation per input element, over chunks of whole channel planes that fit one binding.

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::GpuLayer;
use crate::gpu::ops::max_pool::GpuMaxPool2d;
use crate::gpu::ops::planes::plane_chunks;
use crate::gpu::precision::Precision;
use crate::gpu::shader::{Kernel, uniform};
use crate::gpu::tensor::GpuTensor;

uniform! {
    /// Uniform of `shaders/grad/max_pool_grad.wgsl`.
    pub(crate) struct MaxPoolGradParams {
        planes: u32, in_h: u32, in_w: u32, out_h: u32,
        out_w: u32, x_base: u32, g_base: u32, dx_base: u32,
        k_h: u32, k_w: u32, stride_h: u32, stride_w: u32,
        pad_top: u32, pad_left: u32, total: u32, pad0: u32,
    }
}

impl GpuMaxPool2d {
    /// Records `grad_input = dL/dx` of the pooling from its forward `input` and
    /// `grad_output = dL/dy` (the pooling output's shape), over chunks of whole channel planes.
    ///
    /// Errors: shapes that do not match the pooling of `input`, or one channel plane larger
    /// than a storage binding ([`crate::Error::ExceedsDeviceLimits`]).
    pub fn prepare_grad_input(
        &self,
        gpu: &Gpu,
        input: &GpuTensor,
        grad_output: &GpuTensor,
        grad_input: &GpuTensor,
    ) -> Result<Vec<Dispatch>> {
        let (in_shape, out_shape) = (input.shape(), grad_output.shape());
        expect_shape(
            "max_pool2d gradient",
            out_shape,
            self.output_shape(in_shape)?,
        )?;
        expect_shape("max_pool2d input gradient", grad_input.shape(), in_shape)?;
        let spec = self.spec();
        let mut dispatches = Vec::new();
        for (p0, pn) in plane_chunks(
            gpu,
            "max_pool2d gradient",
            in_shape,
            out_shape,
            Precision::F32,
        )? {
            let (in_plane, out_plane) = (in_shape.plane(), out_shape.plane());
            let x_win = gpu.window(&input.buffer, p0 * in_plane, pn * in_plane);
            let g_win = gpu.window(&grad_output.buffer, p0 * out_plane, pn * out_plane);
            let dx_win = gpu.window(&grad_input.buffer, p0 * in_plane, pn * in_plane);
            let total = pn * in_plane;
            let params = MaxPoolGradParams {
                planes: pn as u32,
                in_h: in_shape.h as u32,
                in_w: in_shape.w as u32,
                out_h: out_shape.h as u32,
                out_w: out_shape.w as u32,
                x_base: x_win.base,
                g_base: g_win.base,
                dx_base: dx_win.base,
                k_h: spec.kernel.0 as u32,
                k_w: spec.kernel.1 as u32,
                stride_h: spec.stride.0 as u32,
                stride_w: spec.stride.1 as u32,
                pad_top: spec.padding.top as u32,
                pad_left: spec.padding.left as u32,
                total: total as u32,
                pad0: 0,
            };
            dispatches.push(gpu.linear_dispatch(
                Kernel::MaxPoolGrad,
                &params,
                &[
                    (&input.buffer, x_win),
                    (&grad_output.buffer, g_win),
                    (&grad_input.buffer, dx_win),
                ],
                total,
            )?);
        }
        Ok(dispatches)
    }

    /// `dL/dx` in a new tensor (see [`GpuMaxPool2d::prepare_grad_input`]).
    pub fn grad_input(
        &self,
        gpu: &Gpu,
        input: &GpuTensor,
        grad_output: &GpuTensor,
    ) -> Result<GpuTensor> {
        let grad_input = gpu.empty(input.shape())?;
        gpu.run(&self.prepare_grad_input(gpu, input, grad_output, &grad_input)?)?;
        Ok(grad_input)
    }
}
