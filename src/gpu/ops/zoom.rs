//! Bilinear zoom by an integer factor on the GPU (the reference predictor's interpolation).

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io};
use crate::gpu::ops::planes::{PlaneHeader, prepare_planes};
use crate::gpu::shader::{Kernel, uniform};
use crate::spec::{Shape, Zoom};

uniform! {
    /// Uniform of `shaders/zoom.wgsl`.
    pub(crate) struct ZoomParams {
        h: PlaneHeader,
        factor: u32, pad0: u32, pad1: u32, pad2: u32,
    }
}

/// A bilinear zoom layer.
pub struct GpuZoom {
    spec: Zoom,
}

impl GpuZoom {
    /// The layer for `spec`.
    pub fn new(spec: Zoom) -> Self {
        Self { spec }
    }
}

impl GpuLayer for GpuZoom {
    fn name(&self) -> &'static str {
        "zoom"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "zoom")
    }

    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        expect_shape("zoom", io.output_shape, self.output_shape(io.input_shape)?)?;
        let factor = self.spec.factor as u32;
        prepare_planes(gpu, Kernel::Zoom, io, &[], |h, _| ZoomParams {
            h,
            factor,
            ..ZoomParams::default()
        })
    }
}
