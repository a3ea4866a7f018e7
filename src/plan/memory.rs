//! GPU memory of plans, computed without a device: what a [`crate::plan::GpuPlan`] over a run
//! of layers will hold, so budgets can be planned before anything is allocated.

use crate::error::Result;
use crate::gpu::ops::conv_chunks::split_scratch_bytes;
use crate::net::{Layer, Op};
use crate::spec::Shape;

/// [`GpuPlan::estimate_memory`] for a run of layers whose output shapes are already known;
/// `split`: whether the plan may split reductions (and hold their partial sums).
pub(crate) fn estimate_layers(
    layers: &[Layer],
    input_shape: Shape,
    shapes: &[Shape],
    split: bool,
) -> u64 {
    let largest = shapes.iter().map(|s| s.bytes()).max().unwrap_or(4);
    let ping_pong = if shapes.len() > 1 { 2 } else { 1 };
    let weights: u64 = layers
        .iter()
        .map(|l| match &l.op {
            Op::Conv { spec, .. } => {
                4 * (spec.weight_len() + if spec.bias { spec.out_channels } else { 1 }) as u64
            }
            Op::Deconv { spec, .. } => 4 * (spec.channels * spec.kernel * spec.kernel) as u64,
            _ => 0,
        })
        .sum();
    // Partial sums of the layers whose reduction the tiled kernel splits (one buffer, shared).
    let scratch: u64 = layers
        .iter()
        .zip(shapes)
        .map(|(l, &out)| match &l.op {
            Op::Conv { spec, .. } if split => split_scratch_bytes(spec, out),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let output = shapes.last().map_or(4, |s| s.bytes());
    input_shape.bytes() + ping_pong * largest + output + weights + scratch
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
pub(crate) fn estimate(layers: &[Layer], input: Shape) -> Result<u64> {
    if layers.is_empty() {
        return Ok(0);
    }
    let shapes = layer_shapes(layers, input)?;
    Ok(estimate_layers(layers, input, &shapes, false) + timestamp_bytes(layers.len()))
}

/// Bytes of the weights of `layers` on the GPU (as plans count them).
pub(crate) fn weight_bytes(layers: &[Layer]) -> u64 {
    estimate_layers(
        layers,
        Shape::new(0, 0, 0, 0),
        &[Shape::new(0, 0, 0, 0)],
        false,
    )
}
