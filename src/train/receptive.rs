//! Receptive fields of one output pixel: the theoretical one (every input pixel the output can
//! depend on, from the layers' geometry) and the effective one of Luo et al., *Understanding
//! the Effective Receptive Field in Deep Convolutional Neural Networks* (NIPS 2016): the
//! gradient of the output pixel with respect to every input pixel, found by setting the
//! gradient of that pixel (all its channels) to 1 and every other to 0 and back-propagating
//! to the input with the CPU reference ([`super::activation_gradients`], f64 accumulation).
//! The map is `|d out / d input|` summed over the input channels.
//!
//! [`effective_field`] does this for any network of convolutions, max pooling and ReLUs;
//! [`model_fields`] does it for a preset's front-end (at input pixels), its context module (at
//! feature pixels, an eighth of the input resolution) and the two together (at input pixels),
//! on an input just large enough to hold the theoretical field plus a margin, where the
//! gradient must be exactly 0.
//!
//! ```
//! use dilated::net::ContextModule;
//! use dilated::train::receptive::{effective_field, random_weights};
//! use ndarray::Array4;
//!
//! let net = random_weights(&ContextModule::basic(2).dilations(&[1, 2, 4]).build()?, 7)?;
//! let x = Array4::<f32>::from_shape_fn((1, 2, 21, 21), |(_, c, y, x)| ((c + 3 * y + 7 * x) % 5) as f32);
//! let erf = effective_field(&net, x.view())?;
//! assert_eq!(erf.theoretical.height, 15); // 1 + 2 * (1 + 2 + 4), then a 1x1 layer
//! assert!(erf.support().is_none_or(|s| erf.theoretical.contains_field(&s)));
//! # Ok::<(), dilated::Error>(())
//! ```

use ndarray::{Array2, Array4, ArrayView4, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::network::{activation_gradients, forward};
use crate::error::{Error, Result};
use crate::net::{Model, Network, Op, he_init};
use crate::spec::Padding;

/// A rectangle of pixels of a map, which may reach past the map's edges: `height` rows from
/// row `top` and `width` columns from column `left`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// First row.
    pub top: isize,
    /// First column.
    pub left: isize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Field {
    /// Whether pixel (`y`, `x`) lies inside.
    pub fn contains(&self, y: isize, x: isize) -> bool {
        y >= self.top
            && x >= self.left
            && y < self.top + self.height as isize
            && x < self.left + self.width as isize
    }

    /// Whether `other` lies wholly inside.
    pub fn contains_field(&self, other: &Field) -> bool {
        other.height > 0
            && other.width > 0
            && self.contains(other.top, other.left)
            && self.contains(
                other.top + other.height as isize - 1,
                other.left + other.width as isize - 1,
            )
    }

    /// The centre, as (row, column); halfway between two pixels for an even side.
    pub fn centre(&self) -> (f64, f64) {
        (
            self.top as f64 + (self.height as f64 - 1.0) / 2.0,
            self.left as f64 + (self.width as f64 - 1.0) / 2.0,
        )
    }
}

/// The theoretical receptive field of output pixel `pixel` (row, column) of `net`: the input
/// pixels that output can depend on at all, from each layer's window (kernel extent after
/// dilation), stride and padding, walked back from the output. It does not depend on the
/// input's size and may reach past the input's edges (padding); its side is the one
/// [`Network::receptive_fields`] gives.
///
/// Errors: a zoom or transposed convolution (they spread one input pixel over several output
/// pixels; the presets have them only after the scores), named in an [`Error::Layer`].
pub fn theoretical_field(net: &Network, pixel: (usize, usize)) -> Result<Field> {
    // Inclusive row and column intervals, in the coordinates of the current layer's output.
    let (mut rows, mut cols) = (
        (pixel.0 as isize, pixel.0 as isize),
        (pixel.1 as isize, pixel.1 as isize),
    );
    let back = |(a, b): (isize, isize), stride: usize, pad: usize, extent: usize| {
        let (s, p) = (stride as isize, pad as isize);
        (a * s - p, b * s - p + extent as isize - 1)
    };
    for layer in net.layers().iter().rev() {
        match &layer.op {
            Op::Conv { spec, .. } => {
                let (eh, ew) = spec.extent();
                rows = back(rows, spec.stride.0, spec.padding.top, eh);
                cols = back(cols, spec.stride.1, spec.padding.left, ew);
            }
            Op::MaxPool(p) => {
                rows = back(rows, p.stride.0, p.padding.top, p.kernel.0);
                cols = back(cols, p.stride.1, p.padding.left, p.kernel.1);
            }
            Op::Relu | Op::Softmax => {}
            other => {
                return Err(Error::Layer {
                    layer: layer.name.clone(),
                    reason: format!(
                        "receptive fields are traced through convolution, max pooling, ReLU \
                         and softmax, not {}",
                        other.kind()
                    ),
                });
            }
        }
    }
    Ok(Field {
        top: rows.0,
        left: cols.0,
        height: (rows.1 - rows.0 + 1) as usize,
        width: (cols.1 - cols.0 + 1) as usize,
    })
}

/// The effective receptive field of one output pixel on one input.
#[derive(Clone, Debug)]
pub struct EffectiveField {
    /// `|d out / d input|` summed over the input channels, `[height, width]` of the input,
    /// where `out` is the sum of the output pixel's channels.
    pub map: Array2<f64>,
    /// The output pixel (row, column).
    pub pixel: (usize, usize),
    /// Its theoretical receptive field, on the same map.
    pub theoretical: Field,
}

impl EffectiveField {
    /// The whole gradient mass: the sum of the map.
    pub fn total(&self) -> f64 {
        self.map.sum()
    }

    /// The smallest rectangle holding every nonzero value of the map; `None` when the map is
    /// all zero.
    pub fn support(&self) -> Option<Field> {
        let (mut y0, mut x0, mut y1, mut x1) = (usize::MAX, usize::MAX, 0, 0);
        for ((y, x), &v) in self.map.indexed_iter() {
            if v != 0.0 {
                (y0, x0, y1, x1) = (y0.min(y), x0.min(x), y1.max(y), x1.max(x));
            }
        }
        (y0 != usize::MAX).then(|| Field {
            top: y0 as isize,
            left: x0 as isize,
            height: y1 - y0 + 1,
            width: x1 - x0 + 1,
        })
    }

    /// The part of the gradient mass inside `field` (0 when the map is all zero).
    pub fn fraction_inside(&self, field: &Field) -> f64 {
        let total = self.total();
        if total <= 0.0 {
            return 0.0;
        }
        let inside: f64 = self
            .map
            .indexed_iter()
            .filter(|((y, x), _)| field.contains(*y as isize, *x as isize))
            .map(|(_, v)| v)
            .sum();
        inside / total
    }

    /// The square centred on the theoretical field that holds at least `fraction` of the
    /// gradient mass, the smallest of the squares that grow from the centre by a pixel on
    /// every side (odd sides for an odd field, even sides for an even one); its side is the
    /// extent of the effective field. `None` when the map is all zero.
    pub fn centred_square(&self, fraction: f64) -> Option<Field> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let (h, w) = self.map.dim();
        // Prefix sums: sum of map[..y, ..x] at [y, x].
        let mut prefix = Array2::<f64>::zeros((h + 1, w + 1));
        for y in 0..h {
            let mut row = 0.0;
            for x in 0..w {
                row += self.map[[y, x]];
                prefix[[y + 1, x + 1]] = prefix[[y, x + 1]] + row;
            }
        }
        let clamp = |v: isize, n: usize| v.clamp(0, n as isize) as usize;
        let mass = |f: &Field| {
            let (y0, x0) = (clamp(f.top, h), clamp(f.left, w));
            let y1 = clamp(f.top + f.height as isize, h);
            let x1 = clamp(f.left + f.width as isize, w);
            prefix[[y1, x1]] - prefix[[y0, x1]] - prefix[[y1, x0]] + prefix[[y0, x0]]
        };
        let t = self.theoretical;
        let (parity_h, parity_w) = (2 - t.height % 2, 2 - t.width % 2);
        let side = t.height.max(t.width).max(h).max(w);
        let mut square = None;
        for k in 0.. {
            let (sh, sw) = (parity_h + 2 * k, parity_w + 2 * k);
            let f = Field {
                top: t.top + (t.height as isize - sh as isize) / 2,
                left: t.left + (t.width as isize - sw as isize) / 2,
                height: sh,
                width: sw,
            };
            square = Some(f);
            // A little slack for the rounding of the sums.
            if mass(&f) >= fraction * total * (1.0 - 1e-12) || sh.min(sw) >= side + 2 {
                break;
            }
        }
        square
    }
}

/// `|grad|` of image 0 summed over the channels.
fn channel_sum(grad: &Array4<f32>) -> Array2<f64> {
    let (_, c, h, w) = grad.dim();
    Array2::from_shape_fn((h, w), |(y, x)| {
        (0..c).map(|ci| (grad[[0, ci, y, x]] as f64).abs()).sum()
    })
}

/// A gradient of 1 at every channel of output pixel `pixel` and 0 elsewhere.
fn seed_gradient(shape: (usize, usize, usize, usize), pixel: (usize, usize)) -> Array4<f32> {
    let mut g = Array4::<f32>::zeros(shape);
    g.slice_mut(s![0, .., pixel.0, pixel.1]).fill(1.0);
    g
}

/// The effective receptive field of the centre output pixel of `net` (row `h / 2`, column
/// `w / 2` of the output) on `input`, a single image `[1, C, H, W]`: the forward pass and the
/// backward pass from that pixel with the CPU reference. A network ending in a softmax is
/// taken at its scores, before it.
///
/// Errors: a batch of other than one image, an input the network does not accept, and layers
/// training does not support (zoom, transposed convolution).
pub fn effective_field(net: &Network, input: ArrayView4<f32>) -> Result<EffectiveField> {
    if input.dim().0 != 1 {
        return Err(Error::InvalidSpec {
            context: format!("effective receptive field of {}", net.name()),
            reason: format!("the input must be one image, not {}", input.dim().0),
        });
    }
    let f = forward(net, input, &[])?;
    let (_, _, h, w) = f.scores().dim();
    let pixel = (h / 2, w / 2);
    let seed = seed_gradient(f.scores().dim(), pixel);
    let grads = activation_gradients(net, &f, seed.view(), &[], &[0])?;
    let grad = grads
        .first()
        .ok_or_else(|| Error::Internal("no input gradient".into()))?;
    Ok(EffectiveField {
        map: channel_sum(grad),
        pixel,
        theoretical: theoretical_field(net, pixel)?,
    })
}

/// A copy of `net` with every convolution's padding removed. Where the input holds the whole
/// theoretical field of an output pixel, that pixel and its gradients are the same as with
/// the padding (no padded zero reaches it), and the unpadded network computes only what can
/// reach the centre: a "same"-padded context module on an input of its field's size would do
/// the work of the whole map at every layer.
pub fn unpadded(net: &Network) -> Result<Network> {
    let mut b = Network::builder(net.name(), net.in_channels());
    for l in net.layers() {
        b = match &l.op {
            Op::Conv { spec, weight, bias } => b.conv(
                l.name.clone(),
                spec.padding(Padding::default()),
                weight.clone(),
                bias.clone(),
            ),
            Op::MaxPool(p) => b.max_pool(l.name.clone(), *p),
            Op::Relu => b.relu(l.name.clone()),
            Op::Softmax => b.softmax(l.name.clone()),
            Op::Zoom(z) => b.zoom(l.name.clone(), z.factor),
            Op::Deconv { spec, weight } => b.deconv(l.name.clone(), *spec, weight.clone()),
        };
    }
    b.build()
}

/// A copy of `net` with random weights, as Luo et al. draw them: every convolution
/// He-initialised (normal, std `sqrt(2 / fan_in)`) with zero bias, layer `i` from seed
/// `seed + i`. Other layers (the fixed bilinear upsampling) are kept.
pub fn random_weights(net: &Network, seed: u64) -> Result<Network> {
    let mut out = net.clone();
    for (i, l) in net.layers().iter().enumerate() {
        if let Op::Conv { spec, .. } = &l.op {
            let (w, b) = he_init(spec, seed.wrapping_add(i as u64));
            out.set_weights(&l.name, w, b)?;
        }
    }
    Ok(out)
}

/// The three parts [`model_fields`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The front-end alone, at input pixels.
    FrontEnd,
    /// The context module alone, at feature pixels (the front-end's output, stride 8).
    Context,
    /// Front-end and context module together, at input pixels.
    Whole,
}

impl Part {
    /// A short name for captions: `front-end`, `context module`, `front-end + context`.
    pub fn name(self) -> &'static str {
        match self {
            Part::FrontEnd => "front-end",
            Part::Context => "context module",
            Part::Whole => "front-end + context",
        }
    }

    /// What a pixel of the part's map is: `input` or `feature` pixels.
    pub fn unit(self) -> &'static str {
        match self {
            Part::Context => "feature",
            Part::FrontEnd | Part::Whole => "input",
        }
    }
}

/// Options of [`model_fields`].
#[derive(Clone, Debug)]
pub struct FieldOptions {
    /// Feature pixels added on every side of the theoretical field (8 input pixels each);
    /// the gradient there must be 0.
    pub margin: usize,
    /// Seed of the random input: uniform noise pixels in 0..255, less the model's mean.
    pub seed: u64,
}

impl Default for FieldOptions {
    fn default() -> Self {
        Self { margin: 2, seed: 0 }
    }
}

/// The receptive fields of a preset's centre output pixel, part by part.
#[derive(Clone, Debug)]
pub struct ModelFields {
    /// The front-end's field at input pixels (on the centre crop of the input).
    pub front_end: EffectiveField,
    /// The context module's field at feature pixels.
    pub context: EffectiveField,
    /// The field of both together at input pixels.
    pub whole: EffectiveField,
    /// The front-end's theoretical field of the centre feature pixel, on the map of
    /// [`ModelFields::whole`]: how far the context module widens it.
    pub front_end_in_whole: Field,
    /// Input pixels per feature pixel (the front-end's output stride, 8).
    pub stride: usize,
}

impl ModelFields {
    /// The field of one part.
    pub fn part(&self, part: Part) -> &EffectiveField {
        match part {
            Part::FrontEnd => &self.front_end,
            Part::Context => &self.context,
            Part::Whole => &self.whole,
        }
    }
}

/// The receptive fields of `model`'s centre output pixel, for the front-end, the context module
/// and both, with the weights `net` has (a network [`Model::build`] made, with weights loaded
/// or drawn by [`random_weights`]; the scores are taken before the softmax and upsampling).
///
/// One random input of side `F + 16 * margin` (`F` the whole theoretical field, 908 for
/// `dilation8_pascal_voc`) runs forward through the front-end and the context module (both
/// unpadded, see [`unpadded`]); one backward pass from the centre output gives the context
/// module's field (at the front-end's output) and the whole one (at the input). The front-end's
/// own field comes from its centre output on the input's centre crop of side
/// `F_front_end + 16 * margin`. The cost is that of the reference's forward and backward
/// passes of the front-end on the whole input: it grows with the square of the front-end's
/// widths (see `dilated receptive-field --help`).
///
/// Errors: a network that is not `model`'s (its front-end's last layer or context module
/// missing).
pub fn model_fields(model: Model, net: &Network, options: &FieldOptions) -> Result<ModelFields> {
    let info = model.info();
    let Split {
        front_end,
        context,
        whole,
        fe_end,
        stride,
        side,
        crop,
    } = split(model, net, options)?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mean = info.mean_bgr;
    let input = Array4::from_shape_fn((1, 3, side, side), |(_, c, _, _)| {
        rng.random_range(0.0f32..255.0) - mean[c]
    });

    // Context and whole: one forward pass, one backward pass.
    let f = forward(&whole, input.view(), &[])?;
    let out = f.scores().dim();
    let pixel = (out.2 / 2, out.3 / 2);
    let seed = seed_gradient(out, pixel);
    let grads = activation_gradients(&whole, &f, seed.view(), &[], &[fe_end, 0])?;
    let (g_ctx, g_in) = match grads.as_slice() {
        [a, b] => (a, b),
        _ => return Err(Error::Internal("two activation gradients expected".into())),
    };
    let features = f.activations()[fe_end].dim();
    drop(f);
    let context_field = EffectiveField {
        map: channel_sum(g_ctx),
        pixel,
        theoretical: theoretical_field(&context, pixel)?,
    };
    let whole_field = EffectiveField {
        map: channel_sum(g_in),
        pixel,
        theoretical: theoretical_field(&whole, pixel)?,
    };
    let front_end_in_whole = theoretical_field(&front_end, (features.2 / 2, features.3 / 2))?;

    // The front-end on the centre crop.
    let crop = crop.min(side);
    let offset = (side - crop) / 2;
    let fe_input = input.slice(s![.., .., offset..offset + crop, offset..offset + crop]);
    let front_end_field = effective_field(&front_end, fe_input)?;
    Ok(ModelFields {
        front_end: front_end_field,
        context: context_field,
        whole: whole_field,
        front_end_in_whole,
        stride,
    })
}

/// A preset's network cut into the parts [`model_fields`] runs, unpadded, with the sizes of
/// their inputs.
struct Split {
    front_end: Network,
    context: Network,
    whole: Network,
    /// Layers of the front-end (the index of its output among the activations).
    fe_end: usize,
    /// The front-end's output stride.
    stride: usize,
    /// Side of the input of the whole network.
    side: usize,
    /// Side of the front-end's centre crop.
    crop: usize,
}

fn split(model: Model, net: &Network, options: &FieldOptions) -> Result<Split> {
    let info = model.info();
    let layers = net.layers();
    let not_the_model = |reason: String| Error::InvalidSpec {
        context: format!("receptive fields of {}", info.name),
        reason,
    };
    let fe_end = layers
        .iter()
        .position(|l| l.name == info.final_layer)
        .map(|i| i + 1)
        .ok_or_else(|| {
            not_the_model(format!(
                "the network {} has no layer {}",
                net.name(),
                info.final_layer
            ))
        })?;
    let ctx_end = fe_end
        + layers[fe_end..]
            .iter()
            .take_while(|l| matches!(l.op, Op::Conv { .. }))
            .count();
    if ctx_end == fe_end {
        return Err(not_the_model(format!(
            "the network {} has no context module after {}",
            net.name(),
            info.final_layer
        )));
    }
    let front_end = unpadded(&net.sub_network(0..fe_end)?)?;
    let context = unpadded(&net.sub_network(fe_end..ctx_end)?)?;
    let whole = unpadded(&net.sub_network(0..ctx_end)?)?;
    let last = |n: &Network| n.receptive_fields().last().copied().unwrap_or((1, 1.0));
    let stride = last(&front_end).1.round() as usize;
    let margin = 2 * stride * options.margin;
    Ok(Split {
        side: last(&whole).0 + margin,
        crop: last(&front_end).0 + margin,
        front_end,
        context,
        whole,
        fe_end,
        stride,
    })
}

/// The floating-point operations (multiply-add = 2) [`model_fields`] does for `model` with the
/// widths of `net`: twice the forward passes' (the backward pass's input gradients cost what
/// the forward pass does), for the time it will take.
///
/// Errors: as [`model_fields`].
pub fn model_fields_flops(model: Model, net: &Network, options: &FieldOptions) -> Result<u64> {
    let parts = split(model, net, options)?;
    let flops = |n: &Network, side: usize| -> Result<u64> {
        Ok(
            n.report(crate::spec::Shape::new(1, n.in_channels(), side, side))?
                .iter()
                .map(|r| r.flops)
                .sum(),
        )
    };
    Ok(2 * (flops(&parts.whole, parts.side)? + flops(&parts.front_end, parts.crop)?))
}
