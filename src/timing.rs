//! Timing types shared by the GPU and CPU plans.

use std::time::Duration;

/// Per-layer times of one forward pass.
#[derive(Clone, Debug)]
pub struct LayerTimes {
    /// `(layer name, time)` in order.
    pub layers: Vec<(String, Duration)>,
    /// Whether the times come from GPU timestamp queries (otherwise the pass was run layer by
    /// layer with a wait after each, timed on the host).
    pub from_timestamps: bool,
}
