//! The ops after the last convolution: softmax, argmax, bilinear zoom and the per-channel
//! transposed convolution, split into chunks that fit one binding like the other ops.

use ndarray::{Array3, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::kernels::Kernel;
use crate::gpu::ops::{Dispatch, expect_shape, prepare_planes};
use crate::gpu::tensor::GpuTensor;
use crate::spec::{Deconv2d, Shape, Zoom};

fn too_big(what: &str, elems: usize, max: usize) -> Error {
    Error::ExceedsDeviceLimits {
        what: what.to_string(),
        bytes: elems as u64 * 4,
        limit_name: "max_storage_buffer_binding_size",
        limit: max as u64 * 4,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct PixelParams {
    channels: u32,
    plane: u32,
    total: u32,
    in_base: u32,
    out_base: u32,
    pad: [u32; 3],
}

/// Softmax (output f32, same shape) or argmax (output u32 labels, `n x h x w`) per pixel,
/// over whole images per chunk.
pub(crate) fn prepare_per_pixel(
    gpu: &Gpu,
    kernel: Kernel,
    input: &wgpu::Buffer,
    shape: Shape,
    output: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let max = gpu.max_binding_elems();
    let image = shape.c * shape.plane();
    if image > max {
        return Err(too_big(
            &format!("one image of {} ({shape})", kernel.name()),
            image,
            max,
        ));
    }
    let out_per_image = if kernel == Kernel::Argmax {
        shape.plane()
    } else {
        image
    };
    let per = max / image;
    let mut dispatches = Vec::new();
    for n0 in (0..shape.n).step_by(per) {
        let nb = per.min(shape.n - n0);
        let in_win = gpu.window(input, n0 * image, nb * image);
        let out_win = gpu.window(output, n0 * out_per_image, nb * out_per_image);
        let total = nb * shape.plane();
        let params = PixelParams {
            channels: shape.c as u32,
            plane: shape.plane() as u32,
            total: total as u32,
            in_base: in_win.base,
            out_base: out_win.base,
            pad: [0; 3],
        };
        let storage = [(input, in_win), (output, out_win)];
        dispatches.push(gpu.linear_dispatch(
            kernel,
            bytemuck::bytes_of(&params),
            &storage,
            total,
        )?);
    }
    Ok(dispatches)
}

/// Bilinear zoom.
pub(crate) fn prepare_zoom(
    gpu: &Gpu,
    spec: &Zoom,
    input: &wgpu::Buffer,
    in_shape: Shape,
    output: &wgpu::Buffer,
    out_shape: Shape,
) -> Result<Vec<Dispatch>> {
    expect_shape("zoom", out_shape, spec.output_shape(in_shape, "zoom")?)?;
    let tail = [spec.factor as u32, 0, 0, 0, 0, 0, 0, 0];
    prepare_planes(
        gpu,
        Kernel::Zoom,
        (input, in_shape),
        &[],
        (output, out_shape),
        |_| tail,
    )
}

/// Per-channel transposed convolution layer with its weights on the GPU.
pub struct GpuDeconv2d {
    spec: Deconv2d,
    weight: wgpu::Buffer,
}

impl GpuDeconv2d {
    /// Uploads weights `[channels, 1, k, k]`.
    pub fn new(gpu: &Gpu, spec: Deconv2d, weight: ArrayView4<f32>) -> Result<Self> {
        crate::spec::check_deconv_weight(&spec, &weight)?;
        let data: Vec<f32> = weight.iter().copied().collect();
        Ok(Self {
            spec,
            weight: gpu.storage_from_slice("deconv weight", &data)?,
        })
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight.size()
    }

    pub(crate) fn prepare_buffers(
        &self,
        gpu: &Gpu,
        input: &wgpu::Buffer,
        in_shape: Shape,
        output: &wgpu::Buffer,
        out_shape: Shape,
    ) -> Result<Vec<Dispatch>> {
        let s = &self.spec;
        expect_shape("deconv2d", out_shape, s.output_shape(in_shape, "deconv2d")?)?;
        let w_win = gpu.window(&self.weight, 0, s.channels * s.kernel * s.kernel);
        let (k, stride, pad, c) = (
            s.kernel as u32,
            s.stride as u32,
            s.pad as u32,
            s.channels as u32,
        );
        prepare_planes(
            gpu,
            Kernel::Deconv,
            (input, in_shape),
            &[(&self.weight, w_win)],
            (output, out_shape),
            |p0| [k, stride, pad, c, p0 as u32, 0, 0, 0],
        )
    }

    /// Runs the layer into a new tensor.
    pub fn forward(&self, gpu: &Gpu, input: &GpuTensor) -> Result<GpuTensor> {
        let out = gpu.empty(self.spec.output_shape(input.shape(), "deconv2d")?)?;
        let d =
            self.prepare_buffers(gpu, &input.buffer, input.shape(), &out.buffer, out.shape())?;
        gpu.run(&d)?;
        Ok(out)
    }

    /// Runs the layer into an existing tensor.
    pub fn forward_into(&self, gpu: &Gpu, input: &GpuTensor, output: &mut GpuTensor) -> Result<()> {
        let d = self.prepare_buffers(
            gpu,
            &input.buffer,
            input.shape(),
            &output.buffer,
            output.shape(),
        )?;
        gpu.run(&d)
    }
}

impl Gpu {
    /// Softmax over channels into an existing tensor of the same shape.
    pub fn softmax_into(&self, input: &GpuTensor, output: &mut GpuTensor) -> Result<()> {
        expect_shape("softmax", output.shape(), input.shape())?;
        let d = prepare_per_pixel(
            self,
            Kernel::Softmax,
            &input.buffer,
            input.shape(),
            &output.buffer,
        )?;
        self.run(&d)
    }

    /// Softmax over channels into a new tensor.
    pub fn softmax(&self, input: &GpuTensor) -> Result<GpuTensor> {
        let mut out = self.empty(input.shape())?;
        self.softmax_into(input, &mut out)?;
        Ok(out)
    }

    /// Bilinear zoom into a new tensor.
    pub fn zoom(&self, spec: &Zoom, input: &GpuTensor) -> Result<GpuTensor> {
        let mut out = self.empty(spec.output_shape(input.shape(), "zoom")?)?;
        self.zoom_into(spec, input, &mut out)?;
        Ok(out)
    }

    /// Bilinear zoom into an existing tensor.
    pub fn zoom_into(&self, spec: &Zoom, input: &GpuTensor, output: &mut GpuTensor) -> Result<()> {
        let d = prepare_zoom(
            self,
            spec,
            &input.buffer,
            input.shape(),
            &output.buffer,
            output.shape(),
        )?;
        self.run(&d)
    }

    /// Label map: the index of the largest channel per pixel, `[n, h, w]`.
    pub fn argmax(&self, input: &GpuTensor) -> Result<Array3<u32>> {
        let s = input.shape();
        let labels = self.create_buffer(
            "labels",
            (s.n * s.plane()) as u64 * 4,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;
        // Poison: an unwritten label reads as u32::MAX.
        self.write_f32(&labels, 0, &vec![f32::from_bits(u32::MAX); s.n * s.plane()])?;
        let d = prepare_per_pixel(self, Kernel::Argmax, &input.buffer, s, &labels)?;
        self.run(&d)?;
        let raw = self.read_f32(&labels, 0, s.n * s.plane())?;
        Array3::from_shape_vec((s.n, s.h, s.w), raw.into_iter().map(f32::to_bits).collect())
            .map_err(|e| Error::Device(format!("label read-back: {e}")))
    }
}
