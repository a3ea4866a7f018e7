//! Softmax cross-entropy over classes per pixel on the GPU, as Caffe's `SoftmaxWithLoss` with
//! `normalization: VALID`: pixels labelled `ignore_label` (255) count for nothing, and the loss
//! and its gradient are divided by the number of the other pixels in the whole batch.

use ndarray::ArrayView3;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::ops::train::fits;
use crate::gpu::shader::{Kernel, uniform};
use crate::gpu::tensor::{GpuTensor, Window};
use crate::spec::Shape;

uniform! {
    /// Uniform of `shaders/grad/softmax_loss.wgsl`.
    pub(crate) struct SoftmaxLossParams {
        channels: u32, plane: u32, total: u32, ignore: u32,
        scale: f32, pad0: u32, pad1: u32, pad2: u32,
    }
}

/// The loss layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuSoftmaxLoss {
    /// Label of pixels that count for nothing (Caffe's `ignore_label`).
    pub ignore_label: u32,
}

impl Default for GpuSoftmaxLoss {
    fn default() -> Self {
        Self { ignore_label: 255 }
    }
}

/// The loss of a batch and the gradient of its scores.
pub struct LossAndGrad {
    /// Mean cross-entropy over the non-ignored pixels (0 when every pixel is ignored).
    pub loss: f64,
    /// Number of non-ignored pixels.
    pub valid_pixels: usize,
    /// `dL/dscores`, the scores' shape.
    pub grad: GpuTensor,
}

impl GpuSoftmaxLoss {
    /// Checks `labels` `[n, h, w]` against `scores` of shape `[n, classes, h, w]` and counts
    /// the pixels that are not ignored; a label that is neither a class nor the ignore label
    /// is an error.
    pub fn valid_pixels(&self, scores: Shape, labels: ArrayView3<u32>) -> Result<usize> {
        let (n, h, w) = labels.dim();
        if (n, h, w) != (scores.n, scores.h, scores.w) {
            return Err(Error::ShapeMismatch {
                context: "softmax loss".into(),
                left_name: "labels",
                left: vec![n, h, w],
                right_name: "scores",
                right: scores.dims().to_vec(),
            });
        }
        let mut valid = 0usize;
        for &l in labels.iter() {
            if l == self.ignore_label {
                continue;
            }
            if l as usize >= scores.c {
                return Err(Error::InvalidSpec {
                    context: "softmax loss".into(),
                    reason: format!(
                        "label {l} is neither a class (0..{}) nor the ignore label {}",
                        scores.c, self.ignore_label
                    ),
                });
            }
            valid += 1;
        }
        Ok(valid)
    }

    /// Records the loss kernel: `labels` holds `[n, 1, h, w]` u32 labels (as f32 bits) of
    /// which `valid` are not ignored; `grad` (the scores' shape) gets the gradient of the mean
    /// loss and `losses` (`[n, 1, h, w]`) each pixel's loss.
    pub fn prepare(
        &self,
        gpu: &Gpu,
        scores: &GpuTensor,
        labels: &GpuTensor,
        valid: usize,
        grad: &GpuTensor,
        losses: &GpuTensor,
    ) -> Result<Dispatch> {
        let s = scores.shape();
        let pixels = Shape { c: 1, ..s };
        expect_shape("softmax loss labels", labels.shape(), pixels)?;
        expect_shape("softmax loss gradient", grad.shape(), s)?;
        expect_shape("softmax loss values", losses.shape(), pixels)?;
        fits(gpu, "the scores", s.len())?;
        let params = SoftmaxLossParams {
            channels: s.c as u32,
            plane: s.plane() as u32,
            total: pixels.len() as u32,
            ignore: self.ignore_label,
            scale: if valid == 0 { 0.0 } else { 1.0 / valid as f32 },
            ..SoftmaxLossParams::default()
        };
        fn win<'t>(gpu: &Gpu, t: &'t GpuTensor) -> (&'t wgpu::Buffer, Window) {
            (&t.buffer, gpu.window(&t.buffer, 0, t.shape().len()))
        }
        gpu.linear_dispatch(
            Kernel::SoftmaxLoss,
            &params,
            &[
                win(gpu, scores),
                win(gpu, labels),
                win(gpu, grad),
                win(gpu, losses),
            ],
            pixels.len(),
        )
    }

    /// Labels `[n, h, w]` as a `[n, 1, h, w]` tensor of u32 (stored as f32 bits).
    pub fn upload_labels(gpu: &Gpu, labels: ArrayView3<u32>) -> Result<GpuTensor> {
        let (n, h, w) = labels.dim();
        let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l)).collect();
        let array = ndarray::Array4::from_shape_vec((n, 1, h, w), bits)
            .map_err(|e| Error::Internal(format!("labels: {e}")))?;
        gpu.upload(array.view())
    }

    /// The loss of `scores` `[n, classes, h, w]` against `labels` `[n, h, w]` (class ids, or
    /// the ignore label), and its gradient. A label that is neither is an error.
    pub fn run(
        &self,
        gpu: &Gpu,
        scores: &GpuTensor,
        labels: ArrayView3<u32>,
    ) -> Result<LossAndGrad> {
        let s = scores.shape();
        let valid = self.valid_pixels(s, labels)?;
        let labels = Self::upload_labels(gpu, labels)?;
        let grad = gpu.empty(s)?;
        let losses = gpu.empty(Shape { c: 1, ..s })?;
        let dispatch = self.prepare(gpu, scores, &labels, valid, &grad, &losses)?;
        gpu.run(&[dispatch])?;
        Ok(LossAndGrad {
            loss: mean_loss(gpu, &losses, valid)?,
            valid_pixels: valid,
            grad,
        })
    }
}

/// The mean of the per-pixel losses over `valid` pixels (0 for none), summed in f64.
pub fn mean_loss(gpu: &Gpu, losses: &GpuTensor, valid: usize) -> Result<f64> {
    if valid == 0 {
        return Ok(0.0);
    }
    let sum: f64 = gpu.download(losses)?.iter().map(|&v| v as f64).sum();
    Ok(sum / valid as f64)
}
