//! Softmax cross-entropy over classes per pixel on the GPU, as Caffe's `SoftmaxWithLoss` with
//! `normalization: VALID`: pixels labelled `ignore_label` (255) count for nothing, and the loss
//! and its gradient are divided by the number of the other pixels in the whole batch.

use ndarray::ArrayView3;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::ops::train::fits;
use crate::gpu::shader::{Kernel, uniform};
use crate::gpu::tensor::GpuTensor;
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
    /// The loss of `scores` `[n, classes, h, w]` against `labels` `[n, h, w]` (class ids, or
    /// the ignore label), and its gradient. A label that is neither is an error.
    pub fn run(
        &self,
        gpu: &Gpu,
        scores: &GpuTensor,
        labels: ArrayView3<u32>,
    ) -> Result<LossAndGrad> {
        let s = scores.shape();
        let (n, h, w) = labels.dim();
        if (n, h, w) != (s.n, s.h, s.w) {
            return Err(Error::ShapeMismatch {
                context: "softmax loss".into(),
                left_name: "labels",
                left: vec![n, h, w],
                right_name: "scores",
                right: s.dims().to_vec(),
            });
        }
        let mut valid = 0usize;
        for &l in labels.iter() {
            if l == self.ignore_label {
                continue;
            }
            if l as usize >= s.c {
                return Err(Error::InvalidSpec {
                    context: "softmax loss".into(),
                    reason: format!(
                        "label {l} is neither a class (0..{}) nor the ignore label {}",
                        s.c, self.ignore_label
                    ),
                });
            }
            valid += 1;
        }
        fits(gpu, "the scores", s.len())?;
        let pixels = s.n * s.plane();
        let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l)).collect();
        let labels = gpu.storage_from_slice("labels", &bits)?;
        let grad = gpu.empty(s)?;
        let losses = gpu.empty(Shape::new(s.n, 1, s.h, s.w))?;
        let params = SoftmaxLossParams {
            channels: s.c as u32,
            plane: s.plane() as u32,
            total: pixels as u32,
            ignore: self.ignore_label,
            scale: if valid == 0 { 0.0 } else { 1.0 / valid as f32 },
            ..SoftmaxLossParams::default()
        };
        let dispatch = gpu.linear_dispatch(
            Kernel::SoftmaxLoss,
            &params,
            &[
                (&scores.buffer, gpu.window(&scores.buffer, 0, s.len())),
                (&labels, gpu.window(&labels, 0, pixels)),
                (&grad.buffer, gpu.window(&grad.buffer, 0, s.len())),
                (&losses.buffer, gpu.window(&losses.buffer, 0, pixels)),
            ],
            pixels,
        )?;
        gpu.run(&[dispatch])?;
        let sum: f64 = gpu.download(&losses)?.iter().map(|&v| v as f64).sum();
        Ok(LossAndGrad {
            loss: if valid == 0 { 0.0 } else { sum / valid as f64 },
            valid_pixels: valid,
            grad,
        })
    }
}
