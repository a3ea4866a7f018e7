//! Formatting and warnings the commands share.

use std::time::Duration;

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
