//! ReLU on its own on the GPU (the convolutions fuse it; this serves networks with a separate
//! ReLU layer).

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io};
use crate::gpu::shader::{Kernel, uniform};
use crate::spec::Shape;

uniform! {
    /// Uniform of `shaders/relu.wgsl`.
    pub(crate) struct ReluParams {
        total: u32, in_base: u32, out_base: u32, pad0: u32,
    }
}

/// `output = max(input, 0)` element by element.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuRelu;

impl GpuLayer for GpuRelu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(input)
    }

    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        expect_shape("relu", io.output_shape, io.input_shape)?;
        let precision = io.precision;
        let max = gpu.max_binding_elems_of(precision);
        let len = io.input_shape.len();
        let mut dispatches = Vec::new();
        for start in (0..len).step_by(max) {
            let n = max.min(len - start);
            let in_win = gpu.window_of(io.input, start, n, precision);
            let out_win = gpu.window_of(io.output, start, n, precision);
            let params = ReluParams {
                total: n as u32,
                in_base: in_win.base,
                out_base: out_win.base,
                pad0: 0,
            };
            let storage = [(io.input, in_win), (io.output, out_win)];
            dispatches.push(gpu.linear_dispatch_as(
                Kernel::Relu,
                precision,
                &params,
                &storage,
                n,
            )?);
        }
        Ok(dispatches)
    }
}
