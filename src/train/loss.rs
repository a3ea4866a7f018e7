//! Softmax cross-entropy over the classes at every pixel, as Caffe's `SoftmaxWithLoss` layer
//! computes it with `ignore_label: 255` and `normalization: VALID`.
//!
//! For scores `s[n, k, y, x]` and labels `l[n, y, x]`, with `p = softmax_k(s)`:
//!
//! * loss `= sum over non-ignored pixels of -ln p[l] / V`, where `V` is the number of
//!   non-ignored pixels in the whole batch (taken as 1 when it is 0, so a batch with no valid
//!   pixel has loss 0 and gradient 0);
//! * gradient `d loss / d s[k] = (p[k] - [k = l]) / V` at non-ignored pixels, 0 at ignored ones.
//!
//! Everything is computed in f64 from the f32 scores; `-ln p` is taken as `logsumexp(s) - s[l]`
//! and capped at `-ln(f32::MIN_POSITIVE)` (about 87.34), the value Caffe's
//! `-log(max(p, FLT_MIN))` saturates at.

use ndarray::{Array4, ArrayView3, ArrayView4};

use crate::error::{Error, Result};

/// The label that marks a pixel to leave out of the loss and of evaluation.
pub const IGNORE_LABEL: u32 = 255;

/// A loss value with its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxLoss {
    /// The loss, normalised by the number of non-ignored pixels.
    pub loss: f64,
    /// Number of non-ignored pixels in the batch (the normaliser, when positive).
    pub valid: usize,
    /// Gradient of the loss with respect to the scores, shaped like them.
    pub grad: Array4<f32>,
}

/// Softmax cross-entropy of `scores` (`[n, classes, h, w]`, before the softmax) against
/// `labels` (`[n, h, w]`, any unsigned integer type: `u8` from label images, `u32` from
/// argmax maps), with [`IGNORE_LABEL`] left out and `VALID` normalisation over the batch.
///
/// Errors: labels of another `[n, h, w]` than the scores, a score tensor with a zero
/// dimension, or a label that is neither a class (`< classes`) nor [`IGNORE_LABEL`] (Caffe
/// aborts on those).
pub fn softmax_cross_entropy<L: Copy + Into<u32>>(
    scores: ArrayView4<f32>,
    labels: ArrayView3<L>,
) -> Result<SoftmaxLoss> {
    let ctx = "softmax cross-entropy";
    let (n, c, h, w) = scores.dim();
    crate::spec::Shape::new(n, c, h, w).check_nonzero(ctx)?;
    if labels.dim() != (n, h, w) {
        return Err(Error::ShapeMismatch {
            context: ctx.to_string(),
            left_name: "labels [n, h, w]",
            left: labels.shape().to_vec(),
            right_name: "scores [n, classes, h, w]",
            right: vec![n, c, h, w],
        });
    }
    let cap = -(f32::MIN_POSITIVE as f64).ln();
    let mut total = 0.0f64;
    let mut valid = 0usize;
    // `p - onehot` at every pixel, scaled once the normaliser is known.
    let mut probs = Array4::<f64>::zeros((n, c, h, w));
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                let label: u32 = labels[[b, y, x]].into();
                if label == IGNORE_LABEL {
                    continue;
                }
                if label as usize >= c {
                    return Err(Error::InvalidSpec {
                        context: ctx.to_string(),
                        reason: format!(
                            "label {label} at [{b}, {y}, {x}] is neither one of the {c} classes \
                             nor the ignore label {IGNORE_LABEL}"
                        ),
                    });
                }
                let s = |k: usize| scores[[b, k, y, x]] as f64;
                let m = (0..c).map(s).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c).map(|k| (s(k) - m).exp()).sum();
                let lse = m + sum.ln();
                total += (lse - s(label as usize)).min(cap);
                valid += 1;
                for k in 0..c {
                    probs[[b, k, y, x]] =
                        (s(k) - lse).exp() - if k == label as usize { 1.0 } else { 0.0 };
                }
            }
        }
    }
    // Ignored pixels hold zeros.
    let norm = valid.max(1) as f64;
    let grad = probs.mapv(|v| (v / norm) as f32);
    Ok(SoftmaxLoss {
        loss: total / norm,
        valid,
        grad,
    })
}
