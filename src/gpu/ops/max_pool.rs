//! Max pooling on the GPU (Caffe's ceil-rounded windows, clipped to the input).

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io};
use crate::gpu::ops::planes::{PlaneHeader, prepare_planes};
use crate::gpu::shader::{Kernel, uniform};
use crate::spec::{MaxPool2d, Shape};

uniform! {
    /// Uniform of `shaders/max_pool.wgsl`.
    pub(crate) struct MaxPoolParams {
        h: PlaneHeader,
        k_h: u32, k_w: u32, stride_h: u32, stride_w: u32,
        pad_top: u32, pad_left: u32, pad0: u32, pad1: u32,
    }
}

/// A max-pooling layer.
pub struct GpuMaxPool2d {
    spec: MaxPool2d,
    template: MaxPoolParams,
}

impl GpuMaxPool2d {
    /// The layer for `spec`.
    pub fn new(spec: MaxPool2d) -> Self {
        let template = MaxPoolParams {
            k_h: spec.kernel.0 as u32,
            k_w: spec.kernel.1 as u32,
            stride_h: spec.stride.0 as u32,
            stride_w: spec.stride.1 as u32,
            pad_top: spec.padding.top as u32,
            pad_left: spec.padding.left as u32,
            ..MaxPoolParams::default()
        };
        Self { spec, template }
    }

    /// The layer's spec.
    pub fn spec(&self) -> &MaxPool2d {
        &self.spec
    }
}

impl GpuLayer for GpuMaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "max_pool2d")
    }

    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        expect_shape(
            "max_pool2d",
            io.output_shape,
            self.output_shape(io.input_shape)?,
        )?;
        prepare_planes(gpu, Kernel::MaxPool, io, &[], |h, _| MaxPoolParams {
            h,
            ..self.template
        })
    }
}
