//! Formatting and warnings the commands share.

use std::time::Duration;

use ndarray::Array4;

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of non-empty `v`.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Warns (on stderr) about NaN or infinite values in `what`; they propagate through the
/// network the same way on both backends.
pub fn warn_non_finite(what: &str, values: impl Iterator<Item = f32>) {
    let bad = values.filter(|v| !v.is_finite()).count();
    if bad > 0 {
        eprintln!(
            "warning: {what} has {bad} NaN or infinite values; they propagate into the output"
        );
    }
}

/// How closely scores agree with reference scores of the same shape.
pub struct Agreement {
    /// `max |scores - reference| / max |reference|`.
    pub relative_error: f64,
    /// Scores compared.
    pub scores: usize,
    /// Pixels whose highest-scoring class is the same in both.
    pub same_labels: usize,
    /// Pixels compared.
    pub pixels: usize,
}

impl Agreement {
    /// Compares `scores` with `reference` (NCHW, classes along C).
    pub fn of(scores: &Array4<f32>, reference: &Array4<f32>) -> Self {
        let max_ref = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let max_diff = scores
            .iter()
            .zip(reference)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        let labels = dilated::cpu::reference::argmax(scores.view());
        let labels_ref = dilated::cpu::reference::argmax(reference.view());
        Self {
            relative_error: max_diff / max_ref.max(f64::MIN_POSITIVE),
            scores: reference.len(),
            same_labels: labels
                .iter()
                .zip(&labels_ref)
                .filter(|(a, b)| a == b)
                .count(),
            pixels: labels_ref.len(),
        }
    }
}
