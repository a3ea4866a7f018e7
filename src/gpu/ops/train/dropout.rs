//! Dropout at training time on the GPU with masks drawn on the host: `y = x * mask / (1 -
//! ratio)`, applied in place to a layer's output in the forward pass and to its gradient in
//! the backward pass. Masks are uploaded as packed bits (32 units a word), so a step can use the
//! masks of the CPU reference and the two be compared exactly.

use ndarray::ArrayView4;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::shader::{Kernel, uniform};
use crate::gpu::tensor::GpuTensor;
use crate::spec::Shape;

uniform! {
    /// Uniform of `shaders/grad/dropout.wgsl`.
    pub(crate) struct DropoutParams {
        total: u32, base: u32, mask_base: u32, scale: f32,
    }
}

/// A dropout mask on the GPU: one bit per unit of a tensor of its shape, set where the unit is
/// kept.
pub struct GpuMask {
    buffer: wgpu::Buffer,
    shape: Shape,
}

impl GpuMask {
    /// A mask of `shape` with every unit dropped, to be written with [`GpuMask::write`].
    pub fn new(gpu: &Gpu, shape: Shape) -> Result<Self> {
        shape.check_nonzero("dropout mask")?;
        let buffer = gpu.create_buffer(
            &format!("dropout mask {shape}"),
            mask_bytes(shape),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )?;
        let mask = Self { buffer, shape };
        gpu.write_f32(&mask.buffer, 0, &vec![0.0; mask.words()])?;
        Ok(mask)
    }

    /// The mask `keep` (`true` where the unit is kept) on the GPU.
    pub fn upload(gpu: &Gpu, keep: ArrayView4<bool>) -> Result<Self> {
        let d = keep.dim();
        let mask = Self::new(gpu, Shape::new(d.0, d.1, d.2, d.3))?;
        mask.write(gpu, keep)?;
        Ok(mask)
    }

    /// Overwrites the mask with `keep`, which must have the mask's shape.
    pub fn write(&self, gpu: &Gpu, keep: ArrayView4<bool>) -> Result<()> {
        let d = keep.dim();
        expect_shape("dropout mask", Shape::new(d.0, d.1, d.2, d.3), self.shape)?;
        let mut words = vec![0u32; self.words()];
        for (i, &k) in keep.iter().enumerate() {
            words[i / 32] |= u32::from(k) << (i % 32);
        }
        // Written as f32 bit patterns: the bytes are copied unchanged.
        let bits: Vec<f32> = words.into_iter().map(f32::from_bits).collect();
        gpu.write_f32(&self.buffer, 0, &bits)
    }

    /// The shape of the tensors the mask applies to.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Bytes the mask occupies on the GPU.
    pub fn bytes(&self) -> u64 {
        self.buffer.size()
    }

    fn words(&self) -> usize {
        self.shape.len().div_ceil(32)
    }
}

/// Bytes of the mask of a tensor of `shape` (one bit a unit, in whole 32-bit words).
pub(crate) fn mask_bytes(shape: Shape) -> u64 {
    shape.len().div_ceil(32) as u64 * 4
}

/// Dropout with ratio `ratio` (Caffe's `dropout_ratio`): kept units are scaled by
/// `1 / (1 - ratio)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuDropout {
    ratio: f32,
}

impl GpuDropout {
    /// Dropout dropping units with probability `ratio`; it must be finite, at least 0 and
    /// below 1 ([`Error::InvalidSpec`] otherwise).
    pub fn new(ratio: f32) -> Result<Self> {
        if !(ratio.is_finite() && (0.0..1.0).contains(&ratio)) {
            return Err(Error::InvalidSpec {
                context: "dropout".into(),
                reason: format!("dropout ratio {ratio} must be at least 0 and below 1"),
            });
        }
        Ok(Self { ratio })
    }

    /// The ratio of dropped units.
    pub fn ratio(&self) -> f32 {
        self.ratio
    }

    /// Records `data = data * mask / (1 - ratio)` in place, over chunks that fit one binding.
    /// The forward pass applies it to a layer's output, the backward pass to that output's
    /// gradient, with the same mask.
    pub fn prepare(&self, gpu: &Gpu, mask: &GpuMask, data: &GpuTensor) -> Result<Vec<Dispatch>> {
        let shape = data.shape();
        expect_shape("dropout", mask.shape, shape)?;
        let scale = (1.0 / (1.0 - self.ratio as f64)) as f32;
        // Chunks start on a whole mask word.
        let step = (gpu.max_binding_elems() / 32 * 32).max(32);
        let len = shape.len();
        let mut dispatches = Vec::new();
        for start in (0..len).step_by(step) {
            let n = step.min(len - start);
            let win = gpu.window(&data.buffer, start, n);
            let mask_win = gpu.window(&mask.buffer, start / 32, n.div_ceil(32));
            let params = DropoutParams {
                total: n as u32,
                base: win.base,
                mask_base: mask_win.base,
                scale,
            };
            dispatches.push(gpu.linear_dispatch(
                Kernel::Dropout,
                &params,
                &[(&mask.buffer, mask_win), (&data.buffer, win)],
                n,
            )?);
        }
        Ok(dispatches)
    }

    /// Applies the dropout to `data` in place (see [`GpuDropout::prepare`]).
    pub fn apply(&self, gpu: &Gpu, mask: &GpuMask, data: &GpuTensor) -> Result<()> {
        gpu.run(&self.prepare(gpu, mask, data)?)
    }
}
