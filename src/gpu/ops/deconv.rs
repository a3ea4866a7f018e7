//! Per-channel transposed convolution on the GPU (the Cityscapes model's in-network
//! upsampling).

use ndarray::ArrayView4;

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io, expect_precision};
use crate::gpu::ops::planes::{PlaneHeader, prepare_planes};
use crate::gpu::precision::Precision;
use crate::gpu::shader::{Kernel, uniform};
use crate::spec::{Deconv2d, Shape, check_deconv_weight};

uniform! {
    /// Uniform of `shaders/deconv.wgsl`.
    pub(crate) struct DeconvParams {
        h: PlaneHeader,
        kernel: u32, stride: u32, pad: u32, channels: u32,
        first_plane: u32, pad0: u32, pad1: u32, pad2: u32,
    }
}

/// Per-channel transposed convolution layer with its weights on the GPU.
pub struct GpuDeconv2d {
    spec: Deconv2d,
    weight: wgpu::Buffer,
    template: DeconvParams,
    precision: Precision,
}

impl GpuDeconv2d {
    /// Validates and uploads weights `[channels, 1, k, k]`.
    pub fn new(gpu: &Gpu, spec: Deconv2d, weight: ArrayView4<f32>) -> Result<Self> {
        Self::new_as(gpu, spec, weight, Precision::F32)
    }

    /// [`GpuDeconv2d::new`] with the weights stored as `precision` elements; the layer then
    /// runs on tensors of that precision.
    pub fn new_as(
        gpu: &Gpu,
        spec: Deconv2d,
        weight: ArrayView4<f32>,
        precision: Precision,
    ) -> Result<Self> {
        gpu.check_precision(precision)?;
        check_deconv_weight(&spec, &weight)?;
        let data: Vec<f32> = weight.iter().copied().collect();
        let template = DeconvParams {
            kernel: spec.kernel as u32,
            stride: spec.stride as u32,
            pad: spec.pad as u32,
            channels: spec.channels as u32,
            ..DeconvParams::default()
        };
        Ok(Self {
            spec,
            weight: gpu.storage_from_slice_as("deconv weight", &data, precision)?,
            template,
            precision,
        })
    }
}

impl GpuLayer for GpuDeconv2d {
    fn name(&self) -> &'static str {
        "deconv2d"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "deconv2d")
    }

    fn weight_bytes(&self) -> u64 {
        self.weight.size()
    }

    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        let s = &self.spec;
        expect_shape(
            "deconv2d",
            io.output_shape,
            self.output_shape(io.input_shape)?,
        )?;
        expect_precision("deconv2d", self.precision, io.precision)?;
        let w_win = gpu.window_of(
            &self.weight,
            0,
            s.channels * s.kernel * s.kernel,
            self.precision,
        );
        prepare_planes(
            gpu,
            Kernel::Deconv,
            io,
            &[(&self.weight, w_win)],
            |h, first_plane| DeconvParams {
                h,
                first_plane: first_plane as u32,
                ..self.template
            },
        )
    }
}
