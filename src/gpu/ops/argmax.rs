//! The label map on the GPU: the index of the largest channel per pixel.

use ndarray::Array3;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io};
use crate::gpu::ops::per_pixel::prepare_per_pixel;
use crate::gpu::precision::Precision;
use crate::gpu::shader::Kernel;
use crate::gpu::tensor::GpuTensor;
use crate::spec::Shape;

/// Argmax over channels: an `[n, c, h, w]` input gives `[n, 1, h, w]` labels, stored as `u32`
/// (the first channel on ties). [`Gpu::argmax`] runs it and reads the labels back.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuArgmax;

impl GpuLayer for GpuArgmax {
    fn name(&self) -> &'static str {
        "argmax"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(Shape { c: 1, ..input })
    }

    /// u32 labels, in a tensor of 4-byte elements whatever the input's precision.
    fn output_precision(&self, _input: Precision) -> Precision {
        Precision::F32
    }

    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        expect_shape(
            "argmax",
            io.output_shape,
            self.output_shape(io.input_shape)?,
        )?;
        prepare_per_pixel(gpu, Kernel::Argmax, io, io.input_shape.plane(), true)
    }
}

impl Gpu {
    /// Label map: the index of the largest channel per pixel, `[n, h, w]` (blocking; in a
    /// browser use [`Gpu::argmax_async`]).
    pub fn argmax(&self, input: &GpuTensor) -> Result<Array3<u32>> {
        crate::gpu::context::block_on(self.argmax_async(input))
    }

    /// [`Gpu::argmax`] as a future, which a browser answers when the GPU is done.
    pub async fn argmax_async(&self, input: &GpuTensor) -> Result<Array3<u32>> {
        let s = input.shape();
        // Poison: an unwritten label reads as u32::MAX.
        let labels = self.filled(GpuArgmax.output_shape(s)?, f32::from_bits(u32::MAX))?;
        let dispatches = GpuArgmax.prepare(self, &Io::tensors(input, &labels))?;
        self.run(&dispatches)?;
        let raw = self
            .read_f32_async(&labels.buffer, 0, s.n * s.plane())
            .await?;
        Array3::from_shape_vec((s.n, s.h, s.w), raw.into_iter().map(f32::to_bits).collect())
            .map_err(|e| Error::Internal(format!("label read-back: {e}")))
    }
}
