//! Running a network within a GPU memory budget by processing the image in horizontal bands.
//!
//! The leading layers of the networks here (the whole front-end) have no vertical padding:
//! valid convolutions and pools. Through such layers an output row depends only on a fixed
//! window of input rows, so the image can be cut into horizontal bands (overlapping by the
//! receptive field), each band run on its own, and the output rows stitched: the result is
//! the same as for the whole image. What follows (the context module, upsampling, softmax)
//! runs once on the stitched map, which is 8 times smaller per side.
//!
//! Exactness at band edges:
//!
//! * every band starts at an input row that is a multiple of the leading layers' total stride,
//!   so every pooling window and strided convolution is in phase with the whole-image run;
//! * a band that ends above the image's bottom only contributes output rows whose windows lie
//!   entirely inside the band (Caffe's ceil-rounded pools make a partial window at the
//!   bottom of a band, and that row is discarded);
//! * the last band ends exactly at the image's bottom (its height is chosen congruent to the
//!   image height modulo the stride, and it may overlap the band before it), so the rows that
//!   come from partial windows at the image's bottom are computed as in the whole-image run.
//!
//! Every band has the same height, so one compiled [`GpuPlan`](crate::plan::GpuPlan) with the weights uploaded once
//! serves them all. The band plan's output (a few rows of class scores) is read back and
//! stitched on the host, then a second plan runs the rest of the network.

use std::ops::Range;

use ndarray::{Array4, ArrayView4, s};

use crate::error::{Error, Result};
use crate::gpu::Precision;
use crate::gpu::context::block_on;
use crate::net::{Layer, Network, Op};
use crate::plan::memory::{estimate, estimate_layers, layer_shapes, timestamp_bytes, weight_bytes};
use crate::spec::Shape;

/// One band: which input rows it reads and which output rows of the banded layers it gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Band {
    /// First input row of the band (it spans [`Bands::band_height`] rows).
    pub input_start: usize,
    /// Output rows of the banded layers (whole-image numbering) taken from this band.
    pub rows: Range<usize>,
    /// Index, in the band's own output, of the row that is `rows.start` of the whole output.
    pub offset: usize,
}

/// How an input is cut into bands for the leading row-local layers of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bands {
    /// The whole input's shape.
    pub input_shape: Shape,
    /// Number of leading layers run band by band; the rest run once on the stitched map.
    pub banded_layers: usize,
    /// Input rows of every band.
    pub band_height: usize,
    /// Output rows (of the banded layers) that a band not touching the image's bottom
    /// contributes.
    pub rows_per_band: usize,
    /// The bands, top to bottom; together their `rows` cover the stitched map once.
    pub bands: Vec<Band>,
    /// Output shape of the banded layers for the whole input (the stitched map).
    pub stitched_shape: Shape,
    /// GPU memory of the banded plan: the band plan and the plan of the remaining layers, as
    /// [`GpuPlan::estimate_memory`](crate::plan::GpuPlan::estimate_memory) counts them, plus room for timestamp buffers (an upper
    /// bound of what [`Plan::peak_memory`](crate::plan::Plan::peak_memory) reports).
    pub peak_memory: u64,
}

/// Vertical extent and stride of a layer without vertical padding, `None` for any other.
fn row_window(op: &Op) -> Option<(usize, usize)> {
    match op {
        Op::Conv { spec, .. } if spec.padding.top == 0 && spec.padding.bottom == 0 => {
            Some((spec.extent().0, spec.stride.0))
        }
        Op::MaxPool(p) if p.padding.top == 0 && p.padding.bottom == 0 => {
            Some((p.kernel.0, p.stride.0))
        }
        Op::Relu | Op::Softmax => Some((1, 1)),
        _ => None,
    }
}

/// Number of leading layers through which output rows depend on a fixed window of input rows.
pub fn bandable_layers(network: &Network) -> usize {
    network
        .layers()
        .iter()
        .take_while(|l| row_window(&l.op).is_some())
        .count()
}

/// What one more band costs when choosing layouts, in FLOPs: a submission, a wait and a
/// read-back, and smaller dispatches that fill a GPU less (about 0.1 ms on a GPU doing
/// 10 TFLOP/s).
const BAND_COST: f64 = 1e9;

/// What the leading layers make of a band: the band's output height and how many of its top
/// rows equal the whole-image run's (all of them for a band ending at the image's bottom).
fn band_rows(layers: &[Layer], band: Shape, at_bottom: bool) -> Result<(usize, usize)> {
    let mut shape = band;
    let mut valid = band.h;
    for l in layers {
        shape = l.op.output_shape(shape, &l.name)?;
        let (extent, stride) = row_window(&l.op).ok_or_else(|| Error::Layer {
            layer: l.name.clone(),
            reason: "the layer is padded vertically and cannot run in bands".into(),
        })?;
        valid = if valid >= extent {
            ((valid - extent) / stride + 1).min(shape.h)
        } else {
            0
        };
    }
    Ok((shape.h, if at_bottom { shape.h } else { valid }))
}

impl Bands {
    /// Bands of `rows_per_band` output rows each (the last band may give fewer or overlap the
    /// one before) through the network's leading row-local layers, for an input of
    /// `input_shape`. A value at least the whole output's height gives a single band.
    pub fn with_rows(network: &Network, input_shape: Shape, rows_per_band: usize) -> Result<Self> {
        network.shapes(input_shape)?;
        let banded = bandable_layers(network);
        if banded == 0 {
            return Err(Error::InvalidSpec {
                context: format!("bands of network {}", network.name()),
                reason: format!(
                    "its first layer ({}) is padded vertically, so it cannot run in bands",
                    network.layers().first().map_or("none", |l| l.name.as_str())
                ),
            });
        }
        Self::of_layers(
            network.layers(),
            banded,
            input_shape,
            rows_per_band,
            Precision::F32,
        )
    }

    /// The layout for `layers`, of which the first `banded` are row-local, for plans storing
    /// `precision` elements.
    fn of_layers(
        layers: &[Layer],
        banded: usize,
        input_shape: Shape,
        rows_per_band: usize,
        precision: Precision,
    ) -> Result<Self> {
        if rows_per_band == 0 {
            return Err(Error::ZeroDimension {
                context: "band layout".into(),
                what: "rows per band",
            });
        }
        let (front, rest) = layers.split_at(banded);
        let stitched =
            *layer_shapes(front, input_shape)?
                .last()
                .ok_or_else(|| Error::InvalidSpec {
                    context: "band layout".into(),
                    reason: "no layers to run in bands".into(),
                })?;
        let n = rows_per_band.min(stitched.h);
        let stride: usize = front
            .iter()
            .filter_map(|l| row_window(&l.op))
            .map(|(_, s)| s)
            .product();
        // Receptive field of one output row in input rows.
        let mut field = 1;
        let mut step = 1;
        for l in front {
            if let Some((extent, s)) = row_window(&l.op) {
                field += (extent - 1) * step;
                step *= s;
            }
        }
        let total = input_shape.h;
        let band_shape = |h: usize| Shape { h, ..input_shape };
        // The band height: congruent to the image height modulo the stride (so the last band
        // can end at the bottom and still be in phase), at least the receptive field of `n`
        // rows, and then the first such height whose complete windows give `n` rows.
        let least = stride * (n - 1) + field;
        let mut h = least + (total + stride - least % stride) % stride;
        while h < total && band_rows(front, band_shape(h), false)?.1 < n {
            h += stride;
        }
        let h = h.min(total);
        let internal = |what: String| Error::InvalidSpec {
            context: "band layout".into(),
            reason: what,
        };
        let mut bands = Vec::new();
        let mut a = 0;
        while a < stitched.h {
            let start = stride * a;
            if start + h >= total {
                let start = total - h;
                if !start.is_multiple_of(stride) {
                    return Err(internal(format!(
                        "last band at row {start} is out of phase with stride {stride}"
                    )));
                }
                let first = start / stride;
                let (out_h, _) = band_rows(front, band_shape(h), true)?;
                if first > a || first + out_h != stitched.h {
                    return Err(internal(format!(
                        "last band gives rows {first}..{} of {}",
                        first + out_h,
                        stitched.h
                    )));
                }
                bands.push(Band {
                    input_start: start,
                    rows: a..stitched.h,
                    offset: a - first,
                });
                break;
            }
            let take = n.min(stitched.h - a);
            bands.push(Band {
                input_start: start,
                rows: a..a + take,
                offset: 0,
            });
            a += take;
        }
        let band_in = band_shape(h);
        let band_out = layer_shapes(front, band_in)?;
        let peak = estimate_layers(front, band_in, &band_out, false, precision)
            + timestamp_bytes(front.len())
            + estimate(rest, stitched, precision)?;
        Ok(Self {
            input_shape,
            banded_layers: banded,
            band_height: h,
            rows_per_band: n,
            bands,
            stitched_shape: stitched,
            peak_memory: peak,
        })
    }

    /// Runs `front` (the network's first [`Bands::banded_layers`] layers, on any backend)
    /// on every band of `input` and stitches the output rows into the whole map.
    pub fn run(
        &self,
        input: ArrayView4<f32>,
        mut front: impl FnMut(ArrayView4<f32>) -> Result<Array4<f32>>,
    ) -> Result<Array4<f32>> {
        // Nothing in it waits: ready when first polled, on every target.
        block_on(self.run_async(input, async |band| front(band)))
    }

    /// [`Bands::run`] with an asynchronous `front`, awaited band after band: a GPU plan's
    /// `forward_async`, which a browser answers when the GPU is done.
    pub async fn run_async(
        &self,
        input: ArrayView4<'_, f32>,
        mut front: impl AsyncFnMut(ArrayView4<'_, f32>) -> Result<Array4<f32>>,
    ) -> Result<Array4<f32>> {
        let d = input.dim();
        let got = Shape::new(d.0, d.1, d.2, d.3);
        if got != self.input_shape {
            return Err(Error::ShapeMismatch {
                context: "banded input".into(),
                left_name: "input",
                left: got.dims().to_vec(),
                right_name: "layout input shape",
                right: self.input_shape.dims().to_vec(),
            });
        }
        let o = self.stitched_shape;
        let mut out = Array4::from_elem(o.dims(), f32::NAN);
        for band in &self.bands {
            let rows = band.input_start..band.input_start + self.band_height;
            let y = front(input.slice(s![.., .., rows, ..])).await?;
            let take = band.rows.len();
            let (n, c, h, w) = y.dim();
            if (n, c, w) != (o.n, o.c, o.w) || band.offset + take > h {
                return Err(Error::ShapeMismatch {
                    context: "band output".into(),
                    left_name: "band output",
                    left: vec![n, c, h, w],
                    right_name: "stitched map",
                    right: o.dims().to_vec(),
                });
            }
            out.slice_mut(s![.., .., band.rows.clone(), ..])
                .assign(&y.slice(s![.., .., band.offset..band.offset + take, ..]));
        }
        Ok(out)
    }
}

/// One stage of a [`BandedLayout`]: a run of row-local layers and its bands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The stage's layers (indices into the network).
    pub layers: Range<usize>,
    /// How the stage's input is cut into bands (its `banded_layers` is the stage's length).
    pub bands: Bands,
}

/// A network run within a memory budget: its leading row-local layers in stages, each stage
/// processed band by band with its output stitched (on the host) into the next stage's input,
/// then the remaining layers once on the last stitched map.
///
/// Stages end after every layer with a vertical stride (the pools, where the map shrinks
/// fourfold) and before every layer whose vertical window spans 8 rows or more (fc6, whose
/// 24-row halo would otherwise make the stage before it recompute rows); so the rows that
/// neighbouring bands share are few and the work stays close to the whole-image run's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandedLayout {
    /// The whole input's shape.
    pub input_shape: Shape,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// Index of the first layer run once on the stitched map (the network's length if none).
    pub rest_start: usize,
    /// GPU memory of the plan: every stage's band plan and the plan of the remaining layers,
    /// as [`GpuPlan::estimate_memory`](crate::plan::GpuPlan::estimate_memory) counts them, plus room for timestamp buffers (an upper
    /// bound of what [`Plan::peak_memory`](crate::plan::Plan::peak_memory) reports).
    pub peak_memory: u64,
}

impl BandedLayout {
    /// Stage boundaries of the leading `banded` layers: `(start, end)` pairs.
    fn stage_ranges(layers: &[Layer], banded: usize) -> Vec<Range<usize>> {
        let mut ranges = Vec::new();
        let mut start = 0;
        for (i, l) in layers[..banded].iter().enumerate() {
            let Some((extent, stride)) = row_window(&l.op) else {
                break;
            };
            if extent >= 8 && i > start {
                ranges.push(start..i);
                start = i;
            }
            if stride > 1 {
                ranges.push(start..i + 1);
                start = i + 1;
            }
        }
        if start < banded {
            ranges.push(start..banded);
        }
        ranges
    }

    /// The stages with given output rows per band.
    fn with_stage_rows(
        network: &Network,
        input_shape: Shape,
        ranges: &[Range<usize>],
        rows: &[usize],
        shapes: &[Shape],
        precision: Precision,
    ) -> Result<Self> {
        let layers = network.layers();
        let mut stages = Vec::with_capacity(ranges.len());
        let mut peak = 0;
        for (range, &n) in ranges.iter().zip(rows) {
            let input = if range.start == 0 {
                input_shape
            } else {
                shapes[range.start - 1]
            };
            let stage_layers = &layers[range.clone()];
            let bands = Bands::of_layers(stage_layers, stage_layers.len(), input, n, precision)?;
            peak += bands.peak_memory;
            stages.push(Stage {
                layers: range.clone(),
                bands,
            });
        }
        let rest_start = ranges.last().map_or(0, |r| r.end);
        let rest_input = if rest_start == 0 {
            input_shape
        } else {
            shapes[rest_start - 1]
        };
        peak += estimate(&layers[rest_start..], rest_input, precision)?;
        Ok(Self {
            input_shape,
            stages,
            rest_start,
            peak_memory: peak,
        })
    }

    /// The layout for `network` at `input_shape` that keeps the plan within `max_memory`
    /// bytes of GPU memory, or `None` when the network runs whole within it. Starting from
    /// one band per stage, one stage at a time gets one band more until the plan fits: the
    /// stage that frees the most memory per FLOP of rows recomputed by neighbouring bands
    /// (each band counted as 1 GFLOP more, for its submission and read-back).
    /// An error tells the least memory that would do, and says when the weights alone exceed
    /// the budget.
    pub fn for_budget(
        network: &Network,
        input_shape: Shape,
        max_memory: u64,
    ) -> Result<Option<Self>> {
        Self::for_budget_as(network, input_shape, max_memory, Precision::F32)
    }

    /// [`BandedLayout::for_budget`] for plans storing weights and activations as `precision`
    /// elements (f16: half the bytes of f32, so fewer or no bands).
    pub fn for_budget_as(
        network: &Network,
        input_shape: Shape,
        max_memory: u64,
        precision: Precision,
    ) -> Result<Option<Self>> {
        let shapes = network.shapes(input_shape)?;
        let layers = network.layers();
        let whole = estimate_layers(layers, input_shape, &shapes, true, precision)
            + timestamp_bytes(layers.len());
        if whole <= max_memory {
            return Ok(None);
        }
        let too_small = |needed: u64| {
            let weights = weight_bytes(layers, precision);
            Error::MemoryBudget {
                budget: max_memory,
                needed,
                reason: if weights > max_memory {
                    format!(
                        "the weights of {} alone take {weights} bytes",
                        network.name()
                    )
                } else {
                    format!(
                        "{} at {}x{} needs more even in bands of one row",
                        network.name(),
                        input_shape.h,
                        input_shape.w
                    )
                },
            }
        };
        let banded = bandable_layers(network);
        if banded == 0 {
            return Err(too_small(whole));
        }
        let ranges = Self::stage_ranges(layers, banded);
        let heights: Vec<usize> = ranges.iter().map(|r| shapes[r.end - 1].h).collect();
        let mut counts = vec![1usize; ranges.len()];
        let rows = |counts: &[usize]| -> Vec<usize> {
            heights
                .iter()
                .zip(counts)
                .map(|(&h, &k)| h.div_ceil(k))
                .collect()
        };
        let mut layout = Self::with_stage_rows(
            network,
            input_shape,
            &ranges,
            &rows(&counts),
            &shapes,
            precision,
        )?;
        let mut flops = layout.flops(network)?;
        while layout.peak_memory > max_memory {
            // Among the stages that can still be split, one band more for the stage that
            // frees the most memory per extra FLOP of rows shared between bands; failing any
            // saving, for the stage whose activations take the most memory.
            let mut best: Option<(f64, usize, Vec<usize>, Self, u64)> = None;
            let mut fallback: Option<(u64, Vec<usize>)> = None;
            for i in 0..ranges.len() {
                let n = layout.stages[i].bands.rows_per_band;
                if n <= 1 {
                    continue;
                }
                let mut more = counts.clone();
                while heights[i].div_ceil(more[i]) >= n {
                    more[i] += 1;
                }
                let activations = layout.stages[i].bands.peak_memory
                    - weight_bytes(&layers[ranges[i].clone()], precision);
                if fallback.as_ref().is_none_or(|(a, _)| activations > *a) {
                    fallback = Some((activations, more.clone()));
                }
                let candidate = Self::with_stage_rows(
                    network,
                    input_shape,
                    &ranges,
                    &rows(&more),
                    &shapes,
                    precision,
                )?;
                let saved = layout.peak_memory.saturating_sub(candidate.peak_memory);
                if saved == 0 {
                    continue;
                }
                let cost = candidate.flops(network)?;
                let extra_bands = candidate.band_count().saturating_sub(layout.band_count());
                let ratio = saved as f64
                    / (cost.saturating_sub(flops) as f64 + BAND_COST * extra_bands.max(1) as f64);
                if best.as_ref().is_none_or(|(r, ..)| ratio > *r) {
                    best = Some((ratio, i, more, candidate, cost));
                }
            }
            match (best, fallback) {
                (Some((_, _, more, candidate, cost)), _) => {
                    counts = more;
                    layout = candidate;
                    flops = cost;
                }
                (None, Some((_, more))) => {
                    counts = more;
                    layout = Self::with_stage_rows(
                        network,
                        input_shape,
                        &ranges,
                        &rows(&counts),
                        &shapes,
                        precision,
                    )?;
                    flops = layout.flops(network)?;
                }
                (None, None) => return Err(too_small(layout.peak_memory.min(whole))),
            }
        }
        Ok(Some(layout))
    }

    /// One line per stage: its layers, bands, band height and rows per band.
    pub fn describe(&self, network: &Network) -> String {
        let name = |i: usize| network.layers().get(i).map_or("?", |l| l.name.as_str());
        let mut lines: Vec<String> = self
            .stages
            .iter()
            .map(|s| {
                let b = &s.bands;
                format!(
                    "{}..{}: {} band{} of {}x{} input rows -> {} output rows ({} per band)",
                    name(s.layers.start),
                    name(s.layers.end - 1),
                    b.bands.len(),
                    if b.bands.len() == 1 { "" } else { "s" },
                    b.band_height,
                    b.input_shape.w,
                    b.stitched_shape.h,
                    b.rows_per_band
                )
            })
            .collect();
        let n = network.layers().len();
        if self.rest_start < n {
            lines.push(format!("{}..{}: whole", name(self.rest_start), name(n - 1)));
        }
        lines.join("\n")
    }

    /// Total number of bands over the stages.
    pub fn band_count(&self) -> usize {
        self.stages.iter().map(|s| s.bands.bands.len()).sum()
    }

    /// Floating-point operations of a forward pass of `network` in this layout (convolutions
    /// and the deconvolution, multiply-add = 2), counting rows that neighbouring bands share
    /// once per band. Compare with [`Network::report`] for the whole-image cost.
    pub fn flops(&self, network: &Network) -> Result<u64> {
        let layers = network.layers();
        let mut total = 0;
        let mut input = self.input_shape;
        for stage in &self.stages {
            let band = Shape {
                h: stage.bands.band_height,
                ..stage.bands.input_shape
            };
            total +=
                stage.bands.bands.len() as u64 * layers_flops(&layers[stage.layers.clone()], band)?;
            input = stage.bands.stitched_shape;
        }
        Ok(total + layers_flops(&layers[self.rest_start.min(layers.len())..], input)?)
    }
}

/// Convolution and deconvolution FLOPs of a run of layers.
fn layers_flops(layers: &[Layer], input: Shape) -> Result<u64> {
    let mut s = input;
    let mut total = 0;
    for l in layers {
        let out = l.op.output_shape(s, &l.name)?;
        total += match &l.op {
            Op::Conv { spec, .. } => spec.flops(out),
            Op::Deconv { spec, .. } => spec.flops(s),
            _ => 0,
        };
        s = out;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::FrontEnd;

    fn front_end() -> Network {
        FrontEnd {
            classes: 5,
            width_divisor: 64,
            final_layer: "final",
        }
        .build("fe", 1)
        .unwrap()
    }

    /// Every output row is covered once, every band is in phase with the front-end's stride
    /// 8 and inside the image, and only complete windows feed the rows a band gives, for
    /// image heights of every residue modulo 8.
    #[test]
    fn bands_tile_the_output_in_phase() {
        let net = front_end();
        for h in [373, 380, 381, 399, 500, 643, 1024, 1396, 1401] {
            let shape = Shape::new(1, 3, h, 380);
            let out_h = net.output_shape(shape).unwrap().h;
            for n in [1, 2, 3, 7, 16, out_h] {
                let l = Bands::with_rows(&net, shape, n).unwrap();
                assert_eq!(l.banded_layers, net.layers().len());
                let mut next = 0;
                for (i, b) in l.bands.iter().enumerate() {
                    assert_eq!(b.rows.start, next, "h {h} n {n}: {l:?}");
                    if i + 1 < l.bands.len() {
                        assert_eq!(b.rows.len(), n, "h {h} n {n}: {l:?}");
                    }
                    assert_eq!(b.input_start % 8, 0, "h {h} n {n}");
                    assert!(b.input_start + l.band_height <= h);
                    let at_bottom = b.input_start + l.band_height == h;
                    let band = Shape::new(1, 3, l.band_height, 380);
                    let (_, valid) = band_rows(net.layers(), band, at_bottom).unwrap();
                    assert_eq!(b.input_start / 8 + b.offset, b.rows.start);
                    assert!(b.offset + b.rows.len() <= valid, "h {h} n {n}: {l:?}");
                    next = b.rows.end;
                }
                assert_eq!(next, out_h, "h {h} n {n}");
                assert_eq!(
                    l.bands.last().map(|b| b.input_start + l.band_height),
                    Some(h)
                );
            }
        }
    }

    #[test]
    fn band_height_is_eight_rows_per_output_row_plus_the_field() {
        let net = front_end();
        // 1396 - 372 is a multiple of 8: bands of n rows read 8n + 372 input rows.
        let l = Bands::with_rows(&net, Shape::new(1, 3, 1396, 400), 16).unwrap();
        assert_eq!(l.band_height, 8 * 16 + 372);
        assert_eq!(l.bands.len(), 8);
        // 1024 - 372 = 652 = 4 (mod 8): four more rows keep the last band in phase.
        let l = Bands::with_rows(&net, Shape::new(1, 3, 1024, 400), 16).unwrap();
        assert_eq!(l.band_height, 8 * 16 + 376);
    }
}
