//! Softmax over channels on the GPU.

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io};
use crate::gpu::ops::per_pixel::prepare_per_pixel;
use crate::gpu::shader::Kernel;
use crate::spec::Shape;

/// Softmax over the channels of every pixel.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuSoftmax;

impl GpuLayer for GpuSoftmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(input)
    }

    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        expect_shape("softmax", io.output_shape, io.input_shape)?;
        let image = io.input_shape.c * io.input_shape.plane();
        prepare_per_pixel(gpu, Kernel::Softmax, io, image, false)
    }
}
