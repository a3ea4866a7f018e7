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
//! Every band has the same height, so one compiled [`GpuPlan`] with the weights uploaded once
//! serves them all. The band plan's output (a few rows of class scores) is read back and
//! stitched on the host, then a second plan runs the rest of the network.

use std::ops::Range;
use std::time::Duration;

use ndarray::{Array4, ArrayView4, s};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::net::{Layer, Network, Op};
use crate::plan::{GpuPlan, LayerTimes, estimate_layers};
use crate::spec::Shape;

/// Options of a GPU plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Most bytes of GPU memory the plan may hold (weights included); `None` for no limit.
    /// When the whole network at its input size does not fit, the image is processed in
    /// horizontal bands (see [`BandLayout`]).
    pub max_memory: Option<u64>,
}

impl PlanOptions {
    /// Options with a memory budget in bytes.
    pub fn with_max_memory(max_memory: u64) -> Self {
        Self {
            max_memory: Some(max_memory),
        }
    }
}

/// One band: which input rows it reads and which output rows of the banded layers it gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Band {
    /// First input row of the band (it spans [`BandLayout::band_height`] rows).
    pub input_start: usize,
    /// Output rows of the banded layers (whole-image numbering) taken from this band.
    pub rows: Range<usize>,
    /// Index, in the band's own output, of the row that is `rows.start` of the whole output.
    pub offset: usize,
}

/// How an input is cut into bands for the leading row-local layers of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandLayout {
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
    /// [`GpuPlan::estimate_memory`] counts them, plus room for timestamp buffers (an upper
    /// bound of what [`BandedPlan::peak_memory`] reports).
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

/// Bytes of the timestamp buffers a plan of `layers` layers may hold.
fn timestamp_bytes(layers: usize) -> u64 {
    32 * layers as u64
}

/// Output shapes of a run of layers.
fn layer_shapes(layers: &[Layer], input: Shape) -> Result<Vec<Shape>> {
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
fn estimate(layers: &[Layer], input: Shape) -> Result<u64> {
    if layers.is_empty() {
        return Ok(0);
    }
    let shapes = layer_shapes(layers, input)?;
    Ok(estimate_layers(layers, input, &shapes) + timestamp_bytes(layers.len()))
}

fn weight_bytes(layers: &[Layer]) -> u64 {
    estimate_layers(layers, Shape::new(0, 0, 0, 0), &[Shape::new(0, 0, 0, 0)])
}

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

impl BandLayout {
    /// Bands of `rows_per_band` output rows each (the last band may give fewer or overlap the
    /// one before) through the network's leading row-local layers, for an input of
    /// `input_shape`. A value at least the whole output's height gives a single band.
    pub fn with_rows(network: &Network, input_shape: Shape, rows_per_band: usize) -> Result<Self> {
        let shapes = network.shapes(input_shape)?;
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
        if rows_per_band == 0 {
            return Err(Error::ZeroDimension {
                context: "band layout".into(),
                what: "rows per band",
            });
        }
        let (front, rest) = network.layers().split_at(banded);
        let stitched = shapes[banded - 1];
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
        let peak = estimate_layers(front, band_in, &band_out)
            + timestamp_bytes(front.len())
            + estimate(rest, stitched)?;
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

    /// The layout with the fewest bands whose plan stays within `max_memory` bytes of GPU
    /// memory, or `None` when the network runs whole within it. Bands are then evened out
    /// (same count, fewer rows each, less overlap). An error tells the least memory that
    /// would do, and says when the weights alone exceed the budget.
    pub fn for_budget(
        network: &Network,
        input_shape: Shape,
        max_memory: u64,
    ) -> Result<Option<Self>> {
        let shapes = network.shapes(input_shape)?;
        let whole = estimate_layers(network.layers(), input_shape, &shapes)
            + timestamp_bytes(network.layers().len());
        if whole <= max_memory {
            return Ok(None);
        }
        let weights = weight_bytes(network.layers());
        let too_small = |needed: u64, why: String| Error::MemoryBudget {
            budget: max_memory,
            needed,
            reason: why,
        };
        let banded = bandable_layers(network);
        if banded == 0 {
            return Err(too_small(
                whole,
                format!(
                    "network {} cannot run in bands (its first layer is padded vertically)",
                    network.name()
                ),
            ));
        }
        let out_h = shapes[banded - 1].h;
        let mut smallest = None;
        for n in (1..=out_h).rev() {
            let layout = Self::with_rows(network, input_shape, n)?;
            if layout.bands.len() < 2 {
                continue;
            }
            if layout.peak_memory <= max_memory {
                let count = layout.bands.len();
                let even = Self::with_rows(network, input_shape, out_h.div_ceil(count))?;
                let best = if even.bands.len() <= count && even.peak_memory <= max_memory {
                    even
                } else {
                    layout
                };
                return Ok(Some(best));
            }
            smallest = Some(layout.peak_memory);
        }
        let needed = smallest.unwrap_or(whole).min(whole);
        Err(if weights > max_memory {
            too_small(
                needed,
                format!("the weights of {} alone take {weights} bytes", network.name()),
            )
        } else {
            too_small(
                needed,
                format!(
                    "bands of one output row of {} at {}x{} still need more",
                    network.name(),
                    input_shape.h,
                    input_shape.w
                ),
            )
        })
    }

    /// Floating-point operations of a banded forward pass of `network` (convolutions and the
    /// deconvolution, multiply-add = 2): every band through the banded layers, the rest once.
    /// Compare with [`Network::report`] for the whole-image cost.
    pub fn flops(&self, network: &Network) -> Result<u64> {
        let cost = |layers: &[Layer], input: Shape| -> Result<u64> {
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
        };
        let (front, rest) = network
            .layers()
            .split_at(self.banded_layers.min(network.layers().len()));
        let band = Shape {
            h: self.band_height,
            ..self.input_shape
        };
        Ok(self.bands.len() as u64 * cost(front, band)? + cost(rest, self.stitched_shape)?)
    }

    /// Runs `front` (the network's first [`BandLayout::banded_layers`] layers, on any backend)
    /// on every band of `input` and stitches the output rows into the whole map.
    pub fn run(
        &self,
        input: ArrayView4<f32>,
        mut front: impl FnMut(ArrayView4<f32>) -> Result<Array4<f32>>,
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
            let y = front(input.slice(s![.., .., rows, ..]))?;
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

/// Splits a network into its first `at` layers and the rest (`None` when nothing is left).
/// Weights are copied.
pub fn split_network(network: &Network, at: usize) -> Result<(Network, Option<Network>)> {
    let at = at.min(network.layers().len());
    let (front, rest) = network.layers().split_at(at);
    let build = |name: String, mut channels: usize, layers: &[Layer]| {
        let mut b = Network::builder(name, channels);
        for l in layers {
            let name = l.name.clone();
            b = match &l.op {
                Op::Conv { spec, weight, bias } => {
                    channels = spec.out_channels;
                    b.conv(name, *spec, weight.clone(), bias.clone())
                }
                Op::MaxPool(p) => b.max_pool(name, *p),
                Op::Relu => b.relu(name),
                Op::Softmax => b.softmax(name),
                Op::Zoom(z) => b.zoom(name, z.factor),
                Op::Deconv { spec, weight } => b.deconv(name, *spec, weight.clone()),
            };
        }
        b.build().map(|n| (n, channels))
    };
    let (head, channels) = build(
        format!("{} (bands)", network.name()),
        network.in_channels(),
        front,
    )?;
    let tail = if rest.is_empty() {
        None
    } else {
        Some(build(format!("{} (rest)", network.name()), channels, rest)?.0)
    };
    Ok((head, tail))
}

enum Inner<'g> {
    Whole(GpuPlan<'g>),
    Bands {
        layout: BandLayout,
        front: GpuPlan<'g>,
        rest: Option<GpuPlan<'g>>,
    },
}

/// A network compiled for one GPU and one input shape within an optional memory budget: a
/// whole-image [`GpuPlan`] when it fits, otherwise a plan for one band of the leading
/// row-local layers (run band after band, one submission each) and a plan for the remaining
/// layers on the stitched map. Results equal the whole-image run's.
pub struct BandedPlan<'g> {
    inner: Inner<'g>,
    input_shape: Shape,
    output_shape: Shape,
}

impl<'g> BandedPlan<'g> {
    /// Compiles `network` for inputs of `input_shape` within `options.max_memory`.
    pub fn new(
        gpu: &'g Gpu,
        network: &Network,
        input_shape: Shape,
        options: &PlanOptions,
    ) -> Result<Self> {
        let layout = match options.max_memory {
            Some(budget) => BandLayout::for_budget(network, input_shape, budget)?,
            None => None,
        };
        match layout {
            Some(layout) => Self::with_layout(gpu, network, layout),
            None => Ok(Self {
                output_shape: network.output_shape(input_shape)?,
                inner: Inner::Whole(GpuPlan::new(gpu, network, input_shape)?),
                input_shape,
            }),
        }
    }

    /// Compiles `network` to run in the bands of `layout` (built for this network).
    pub fn with_layout(gpu: &'g Gpu, network: &Network, layout: BandLayout) -> Result<Self> {
        let output_shape = network.output_shape(layout.input_shape)?;
        let (front_net, rest_net) = split_network(network, layout.banded_layers)?;
        let band_shape = Shape {
            h: layout.band_height,
            ..layout.input_shape
        };
        let front = GpuPlan::new(gpu, &front_net, band_shape)?;
        drop(front_net);
        let rest = rest_net
            .map(|n| GpuPlan::new(gpu, &n, layout.stitched_shape))
            .transpose()?;
        Ok(Self {
            input_shape: layout.input_shape,
            output_shape,
            inner: Inner::Bands {
                layout,
                front,
                rest,
            },
        })
    }

    /// GPU memory a plan for `network` at `input_shape` within `options` will hold (an upper
    /// bound, computed without a device; see [`BandLayout::peak_memory`]).
    pub fn estimate_memory(
        network: &Network,
        input_shape: Shape,
        options: &PlanOptions,
    ) -> Result<u64> {
        let layout = match options.max_memory {
            Some(budget) => BandLayout::for_budget(network, input_shape, budget)?,
            None => None,
        };
        match layout {
            Some(l) => Ok(l.peak_memory),
            None => {
                Ok(GpuPlan::estimate_memory(network, input_shape)?
                    + timestamp_bytes(network.layers().len()))
            }
        }
    }

    /// The band layout, `None` when the network runs whole.
    pub fn layout(&self) -> Option<&BandLayout> {
        match &self.inner {
            Inner::Whole(_) => None,
            Inner::Bands { layout, .. } => Some(layout),
        }
    }

    /// Number of bands per forward pass (1 when the network runs whole).
    pub fn bands(&self) -> usize {
        self.layout().map_or(1, |l| l.bands.len())
    }

    /// The input shape the plan was compiled for.
    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    /// The output shape.
    pub fn output_shape(&self) -> Shape {
        self.output_shape
    }

    /// Bytes of GPU memory the plan holds (both plans when banded).
    pub fn peak_memory(&self) -> u64 {
        match &self.inner {
            Inner::Whole(p) => p.peak_memory(),
            Inner::Bands { front, rest, .. } => {
                front.peak_memory() + rest.as_ref().map_or(0, |r| r.peak_memory())
            }
        }
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        match &self.inner {
            Inner::Whole(p) => p.weight_bytes(),
            Inner::Bands { front, rest, .. } => {
                front.weight_bytes() + rest.as_ref().map_or(0, |r| r.weight_bytes())
            }
        }
    }

    /// Runs the network on an input of the compiled shape.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        match &self.inner {
            Inner::Whole(p) => p.forward(input),
            Inner::Bands {
                layout,
                front,
                rest,
            } => {
                let stitched = layout.run(input, |band| front.forward(band))?;
                match rest {
                    Some(r) => r.forward(stitched.view()),
                    None => Ok(stitched),
                }
            }
        }
    }

    /// Runs the network and measures each layer (see [`GpuPlan::forward_profiled`]); a banded
    /// layer's time is summed over the bands.
    pub fn forward_profiled(&self, input: ArrayView4<f32>) -> Result<(Array4<f32>, LayerTimes)> {
        match &self.inner {
            Inner::Whole(p) => p.forward_profiled(input),
            Inner::Bands {
                layout,
                front,
                rest,
            } => {
                let mut sums: Vec<(String, Duration)> = Vec::new();
                let mut from_timestamps = true;
                let stitched = layout.run(input, |band| {
                    let (y, t) = front.forward_profiled(band)?;
                    from_timestamps &= t.from_timestamps;
                    if sums.is_empty() {
                        sums = t.layers;
                    } else {
                        for ((_, sum), (_, d)) in sums.iter_mut().zip(t.layers) {
                            *sum += d;
                        }
                    }
                    Ok(y)
                })?;
                let out = match rest {
                    Some(r) => {
                        let (y, t) = r.forward_profiled(stitched.view())?;
                        from_timestamps &= t.from_timestamps;
                        sums.extend(t.layers);
                        y
                    }
                    None => stitched,
                };
                Ok((
                    out,
                    LayerTimes {
                        layers: sums,
                        from_timestamps,
                    },
                ))
            }
        }
    }
}

/// Parses a byte count: a number with an optional binary suffix `K`, `M`, `G` or `T`
/// (powers of 1024; `KiB`, `MB`, ... are read the same), e.g. `512M`, `1.5G`, `2147483648`.
pub fn parse_memory_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| Error::InvalidSpec {
        context: "memory size".into(),
        reason: format!("{text:?}: {why} (expected e.g. 512M, 1.5G or a byte count)"),
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad("unknown unit")),
    };
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let bytes = if number.contains('.') {
        let v: f64 = number.parse().map_err(|_| bad("not a number"))?;
        let b = (v * scale as f64).round();
        if !(0.0..1.8e19).contains(&b) {
            return Err(bad("out of range"));
        }
        b as u64
    } else {
        let v: u64 = number.parse().map_err(|_| bad("not a number"))?;
        v.checked_mul(scale).ok_or_else(|| bad("out of range"))?
    };
    Ok(bytes)
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

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_memory_size(" 64 kb").unwrap(), 64 << 10);
        assert_eq!(parse_memory_size("1000").unwrap(), 1000);
        for bad in ["", "M", "12Q", "1.2.3G", "99999999999999999999T", "-1G"] {
            assert!(parse_memory_size(bad).is_err(), "{bad:?}");
        }
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
                let l = BandLayout::with_rows(&net, shape, n).unwrap();
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
        let l = BandLayout::with_rows(&net, Shape::new(1, 3, 1396, 400), 16).unwrap();
        assert_eq!(l.band_height, 8 * 16 + 372);
        assert_eq!(l.bands.len(), 8);
        // 1024 - 372 = 652 = 4 (mod 8): four more rows keep the last band in phase.
        let l = BandLayout::with_rows(&net, Shape::new(1, 3, 1024, 400), 16).unwrap();
        assert_eq!(l.band_height, 8 * 16 + 376);
    }
}
