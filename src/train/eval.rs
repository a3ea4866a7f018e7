//! Segmentation accuracy: a confusion matrix over the non-ignored pixels, per-class
//! intersection over union, mean IoU and pixel accuracy.
//!
//! A class's IoU is `TP / (TP + FP + FN)` (its diagonal count over its row plus column sum);
//! the mean IoU averages it over the classes that occur in the labels or the predictions (of
//! non-ignored pixels), so a class absent from both does not count as 0 or as 1. Pixels
//! labelled [`IGNORE_LABEL`] are left out of everything.

use std::fmt;

use ndarray::{ArrayView, Dimension};

use super::loss::IGNORE_LABEL;
use crate::error::{Error, Result};

/// Pixel counts by (label, prediction) for `classes` classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    /// Row-major `[label][prediction]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Pixels of class `label` predicted as `prediction` (0 outside the matrix).
    pub fn count(&self, label: usize, prediction: usize) -> u64 {
        if label < self.classes && prediction < self.classes {
            self.counts[label * self.classes + prediction]
        } else {
            0
        }
    }

    /// All counted (non-ignored) pixels.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts every pixel of `labels` against the same pixel of `predictions` (any shape, the
    /// same for both, e.g. `[n, h, w]` label images and argmax maps), skipping pixels
    /// labelled [`IGNORE_LABEL`].
    ///
    /// Errors (nothing is counted then): different shapes, a label that is neither a class
    /// nor [`IGNORE_LABEL`], or a prediction that is not a class.
    pub fn add<L, P, D>(
        &mut self,
        labels: ArrayView<L, D>,
        predictions: ArrayView<P, D>,
    ) -> Result<()>
    where
        L: Copy + Into<u32>,
        P: Copy + Into<u32>,
        D: Dimension,
    {
        let ctx = "confusion matrix";
        if labels.shape() != predictions.shape() {
            return Err(Error::ShapeMismatch {
                context: ctx.to_string(),
                left_name: "labels",
                left: labels.shape().to_vec(),
                right_name: "predictions",
                right: predictions.shape().to_vec(),
            });
        }
        let mut added = vec![0u64; self.counts.len()];
        for (&l, &p) in labels.iter().zip(predictions.iter()) {
            let (l, p): (u32, u32) = (l.into(), p.into());
            if l == IGNORE_LABEL {
                continue;
            }
            let (l, p) = (l as usize, p as usize);
            if l >= self.classes || p >= self.classes {
                return Err(Error::InvalidSpec {
                    context: ctx.to_string(),
                    reason: format!(
                        "label {l} / prediction {p}: both must be below the {} classes (labels \
                         may also be {IGNORE_LABEL}, ignored)",
                        self.classes
                    ),
                });
            }
            added[l * self.classes + p] += 1;
        }
        for (c, a) in self.counts.iter_mut().zip(added) {
            *c += a;
        }
        Ok(())
    }

    /// Adds another matrix's counts (e.g. from another batch).
    ///
    /// Errors: a different number of classes.
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.classes != self.classes {
            return Err(Error::InvalidSpec {
                context: "confusion matrix".into(),
                reason: format!(
                    "cannot merge {} classes into {}",
                    other.classes, self.classes
                ),
            });
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        Ok(())
    }

    /// IoU of `class`: `TP / (TP + FP + FN)`, or `None` when the class occurs in neither the
    /// labels nor the predictions (or is out of range).
    pub fn iou(&self, class: usize) -> Option<f64> {
        if class >= self.classes {
            return None;
        }
        let tp = self.count(class, class);
        let row: u64 = (0..self.classes).map(|p| self.count(class, p)).sum();
        let col: u64 = (0..self.classes).map(|l| self.count(l, class)).sum();
        let union = row + col - tp;
        (union > 0).then(|| tp as f64 / union as f64)
    }

    /// Mean of the IoUs of the classes present in labels or predictions; `None` when no pixel
    /// was counted.
    pub fn mean_iou(&self) -> Option<f64> {
        let ious: Vec<f64> = (0..self.classes).filter_map(|c| self.iou(c)).collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    /// Fraction of counted pixels predicted correctly; `None` when no pixel was counted.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total = self.total();
        let correct: u64 = (0..self.classes).map(|c| self.count(c, c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// The summary figures.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            mean_iou: self.mean_iou(),
            pixel_accuracy: self.pixel_accuracy(),
            iou: (0..self.classes).map(|c| self.iou(c)).collect(),
        }
    }
}

/// Mean IoU, pixel accuracy and per-class IoU of a [`ConfusionMatrix`]. Displays as
/// `mIoU 63.41%, pixel accuracy 91.20%`; the alternate form (`{:#}`) adds one line per class
/// (`class 3: IoU 50.00%`, `n/a` for a class that occurs nowhere).
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Mean IoU over the classes present, as a fraction.
    pub mean_iou: Option<f64>,
    /// Pixel accuracy, as a fraction.
    pub pixel_accuracy: Option<f64>,
    /// IoU of every class, `None` where the class occurs nowhere.
    pub iou: Vec<Option<f64>>,
}

/// A fraction as a percentage with two decimals (`0.63414` → `63.41%`), `n/a` for `None`.
pub fn percent(value: Option<f64>) -> String {
    match value {
        Some(v) => format!("{:.2}%", 100.0 * v),
        None => "n/a".to_string(),
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mIoU {}, pixel accuracy {}",
            percent(self.mean_iou),
            percent(self.pixel_accuracy)
        )?;
        if f.alternate() {
            for (c, iou) in self.iou.iter().enumerate() {
                write!(f, "\nclass {c}: IoU {}", percent(*iou))?;
            }
        }
        Ok(())
    }
}
