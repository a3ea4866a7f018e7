//! GPU memory of plans, computed without a device: what a [`crate::plan::GpuPlan`] over a run
//! of layers will hold, so budgets can be planned before anything is allocated.

use crate::error::Result;
use crate::gpu::Precision;
use crate::gpu::ops::conv::auto_blocked_wide;
use crate::gpu::ops::conv_chunks::{pack_scratch_bytes, split_scratch_bytes};
use crate::net::{Layer, Op};
use crate::spec::Shape;

/// Bytes of a buffer of `elems` elements of `precision` (buffers are whole 4-byte words).
pub(crate) fn buffer_bytes(elems: usize, precision: Precision) -> u64 {
    (elems as u64 * precision.bytes()).next_multiple_of(4)
}

/// [`GpuPlan::estimate_memory`] for a run of layers whose output shapes are already known;
/// `split`: whether the plan may split reductions (and hold their partial sums); weights and
/// activations stored as `precision` elements.
pub(crate) fn estimate_layers(
    layers: &[Layer],
    input_shape: Shape,
    shapes: &[Shape],
    split: bool,
    precision: Precision,
) -> u64 {
    let bytes = |s: &Shape| buffer_bytes(s.len(), precision);
    let largest = shapes.iter().map(bytes).max().unwrap_or(4);
    let ping_pong = if shapes.len() > 1 { 2 } else { 1 };
    let weights: u64 = layers
        .iter()
        .map(|l| match &l.op {
            Op::Conv { spec, .. } => {
                buffer_bytes(spec.weight_len(), precision)
                    + buffer_bytes(if spec.bias { spec.out_channels } else { 1 }, precision)
            }
            Op::Deconv { spec, .. } => {
                buffer_bytes(spec.channels * spec.kernel * spec.kernel, precision)
            }
            _ => 0,
        })
        .sum();
    // Partial sums of the layers whose reduction the tiled kernel splits, or the packed
    // weights of the layers where `Auto` takes the packed register-blocked kernel on adapters
    // that run shaders on CPU cores: one buffer, shared.
    let scratch: u64 = layers
        .iter()
        .zip(shapes)
        .map(|(l, &out)| match &l.op {
            Op::Conv { spec, .. } => {
                let split = match split {
                    true => buffer_bytes((split_scratch_bytes(spec, out) / 4) as usize, precision),
                    false => 0,
                };
                let packed = match auto_blocked_wide(out) {
                    (_, true) => pack_scratch_bytes(spec, precision.bytes()),
                    _ => 0,
                };
                split.max(packed)
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    // The read-back buffer: f32 scores, or f16 widened on the host.
    let output = shapes.last().map_or(4, bytes);
    bytes(&input_shape) + ping_pong * largest + output + weights + scratch
}

/// Bytes of the timestamp buffers a plan of `layers` layers may hold.
pub(crate) fn timestamp_bytes(layers: usize) -> u64 {
    32 * layers as u64
}

/// Output shapes of a run of layers.
pub(crate) fn layer_shapes(layers: &[Layer], input: Shape) -> Result<Vec<Shape>> {
    let mut s = input;
    layers
        .iter()
        .map(|l| {
            s = l.op.output_shape(s, &l.name)?;
            Ok(s)
        })
        .collect()
}

/// A plan's estimated GPU memory for a run of layers (timestamp room included).
pub(crate) fn estimate(layers: &[Layer], input: Shape, precision: Precision) -> Result<u64> {
    if layers.is_empty() {
        return Ok(0);
    }
    let shapes = layer_shapes(layers, input)?;
    Ok(estimate_layers(layers, input, &shapes, false, precision) + timestamp_bytes(layers.len()))
}

/// Bytes of the weights of `layers` on the GPU (as plans count them).
pub(crate) fn weight_bytes(layers: &[Layer], precision: Precision) -> u64 {
    estimate_layers(
        layers,
        Shape::new(0, 0, 0, 0),
        &[Shape::new(0, 0, 0, 0)],
        false,
        precision,
    )
}
