//! Backward passes on the fast path: a convolution's weight, bias and input gradients, max
//! pooling's and the ReLU's gradients, and the softmax cross-entropy with its gradient, all
//! multi-threaded and checked against the f64 loops of `crate::train::grad`.
//!
//! * Weight gradient: with AVX-512, the direct kernel of `grad_avx512.rs` (no im2col);
//!   elsewhere im2col over bands of output rows and an SGEMM per band.
//! * Input gradient, stride 1: the convolution of the output gradient with the kernel flipped
//!   in both axes and its input and output channels swapped, at the same dilation, padded by
//!   `(k - 1) * d - pad` per side (cropped where that is negative), which is the forward
//!   path's convolution ([`CpuConv2d`]) on other weights.
//! * Input gradient, other strides: `W^T dy` per band of output rows with an SGEMM, then the
//!   columns are added back into the input's positions (col2im).
//!
//! Conventions are the reference's: the ReLU passes the gradient where its output is positive,
//! a pooling window sends its gradient to its first largest input in row-major order, and the
//! loss is Caffe's `SoftmaxWithLoss` with an ignore label and `VALID` normalisation.

use crate::par::*;
use ndarray::{Array1, Array4, ArrayView3, ArrayView4};

use super::CpuConv2d;
use super::gemm::im2col;
use super::pool::window;
use crate::error::{Error, Result};
use crate::spec::{Conv2d, MaxPool2d, Padding, Shape, check_conv_weight, same_shape, shape_of};

/// Most f32 elements of im2col scratch per band on the SGEMM paths (16 MiB).
const COL_ELEMS: usize = 4 << 20;

/// Scratch buffers of the backward passes, reused across layers and steps.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct GradScratch {
    /// The forward path's padded input and flat output.
    pub(crate) conv: [Vec<f32>; 2],
    /// A cropped output gradient (input gradients of layers padded past the kernel).
    crop: Vec<f32>,
    /// The padded input of the weight gradient.
    pad: Vec<f32>,
    /// Partial weight gradients.
    partials: Vec<f32>,
    /// im2col columns.
    col: Vec<f32>,
    /// Bytes of padded input per call of the direct kernels.
    budget: usize,
}

impl Default for GradScratch {
    fn default() -> Self {
        Self::with_budget(super::SCRATCH_BUDGET)
    }
}

impl GradScratch {
    /// Scratch whose direct kernels pad at most `budget` bytes of input at a time.
    pub(crate) fn with_budget(budget: usize) -> Self {
        Self {
            conv: [Vec::new(), Vec::new()],
            crop: Vec::new(),
            pad: Vec::new(),
            partials: Vec::new(),
            col: Vec::new(),
            budget,
        }
    }
}

/// How a convolution's input gradient is computed.
enum InputGrad {
    /// Stride 1: a forward convolution of the cropped output gradient.
    Direct {
        conv: Box<CpuConv2d>,
        /// Rows and columns cut from the output gradient first (top, left, bottom, right).
        crop: Padding,
    },
    /// Any stride: `W^T dy` then col2im; `weight` is `[out, in * kh * kw]`.
    Columns { weight: Vec<f32> },
}

/// A convolution's backward pass with its weights prepared (keep it across steps and give it
/// the new weights with [`ConvBackward::set_weights`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct ConvBackward {
    spec: Conv2d,
    input: Option<InputGrad>,
    portable: bool,
}

/// The backward convolution's spec and crop for a stride-1 layer: padding `(k - 1) * d - pad`
/// per side where it is not negative, the rest cropped.
fn transposed_spec(s: &Conv2d) -> (Conv2d, Padding) {
    let (eh, ew) = (
        (s.kernel.0 - 1) * s.dilation.0,
        (s.kernel.1 - 1) * s.dilation.1,
    );
    let p = s.padding;
    let split = |e: usize, pad: usize| (e.saturating_sub(pad), pad.saturating_sub(e));
    let (pt, ct) = split(eh, p.top);
    let (pb, cb) = split(eh, p.bottom);
    let (pl, cl) = split(ew, p.left);
    let (pr, cr) = split(ew, p.right);
    let spec = Conv2d {
        in_channels: s.out_channels,
        out_channels: s.in_channels,
        kernel: s.kernel,
        dilation: s.dilation,
        stride: (1, 1),
        padding: Padding::new(pt, pl, pb, pr),
        bias: false,
        relu: false,
    };
    (spec, Padding::new(ct, cl, cb, cr))
}

/// Whether the stride-1 input gradient as a convolution on an output gradient of `os` would
/// mostly read padding: the padded output gradient at least twice its area (a dilated layer
/// without padding of its own, fc6 on a small input), with enough output channels for the
/// SGEMM's reduction. Measured on the VOC context module's dilation-16 layer and a
/// width-reduced fc6, `W^T dy` with col2im is then faster (about 90 against 65, and 75 against
/// 40 GFLOP per CPU-second); with little padding the convolution is (90 against 85 on a 3x3 at
/// 672 channels), and so it is at 21 channels whatever the padding.
fn mostly_padding(s: &Conv2d, os: Shape) -> bool {
    let (t, crop) = transposed_spec(s);
    let p = t.padding;
    let h = os.h.saturating_sub(crop.top + crop.bottom).max(1);
    let w = os.w.saturating_sub(crop.left + crop.right).max(1);
    let padded = (h + p.top + p.bottom) * (w + p.left + p.right);
    s.out_channels >= 64 && padded >= 2 * os.h * os.w
}

/// `[in, out, kh, kw]` weights flipped in both axes from `[out, in, kh, kw]`.
fn flip_transpose(s: &Conv2d, w: &[f32], out: &mut [f32]) {
    let (co, ci) = (s.out_channels, s.in_channels);
    let (kh, kw) = s.kernel;
    let taps = kh * kw;
    for o in 0..co {
        for i in 0..ci {
            let src = &w[(o * ci + i) * taps..(o * ci + i + 1) * taps];
            let dst = &mut out[(i * co + o) * taps..(i * co + o + 1) * taps];
            for t in 0..taps {
                dst[taps - 1 - t] = src[t];
            }
        }
    }
}

impl ConvBackward {
    /// Prepares the backward pass of a layer with `[out, in, kh, kw]` weights; the input
    /// gradient only when given the layer's input shape (the first trained layer needs none),
    /// which chooses the method. `portable` forces the SGEMM paths.
    pub(crate) fn new(
        spec: Conv2d,
        weight: &[f32],
        input_grad: Option<Shape>,
        portable: bool,
    ) -> Result<Self> {
        spec.validate("conv2d backward")?;
        if weight.len() != spec.weight_len() {
            return Err(Error::Internal(format!(
                "conv2d backward: {} weights for a layer of {}",
                weight.len(),
                spec.weight_len()
            )));
        }
        let direct = |is: Shape| {
            spec.stride == (1, 1)
                && spec
                    .output_shape(is, "conv2d backward")
                    .is_ok_and(|os| !mostly_padding(&spec, os))
        };
        let input = if let Some(is) = input_grad
            && !direct(is)
        {
            Some(InputGrad::Columns {
                weight: weight.to_vec(),
            })
        } else if input_grad.is_some() {
            let (t, crop) = transposed_spec(&spec);
            let mut flipped = vec![0f32; weight.len()];
            flip_transpose(&spec, weight, &mut flipped);
            let w = ArrayView4::from_shape(t.weight_shape(), &flipped)
                .map_err(|e| Error::Internal(format!("conv2d backward weights: {e}")))?;
            let conv = if portable {
                CpuConv2d::portable(t, w, None)?
            } else {
                CpuConv2d::with_method(t, w, None, CpuConv2d::auto_for_training(&t))?
            };
            Some(InputGrad::Direct {
                conv: Box::new(conv),
                crop,
            })
        } else {
            None
        };
        Ok(Self {
            spec,
            input,
            portable,
        })
    }

    /// New `[out, in, kh, kw]` weights (after an update).
    pub(crate) fn set_weights(&mut self, weight: &[f32], flipped: &mut Vec<f32>) -> Result<()> {
        match &mut self.input {
            None => Ok(()),
            Some(InputGrad::Columns { weight: w }) => {
                w.copy_from_slice(weight);
                Ok(())
            }
            Some(InputGrad::Direct { conv, .. }) => {
                flipped.resize(weight.len(), 0.0);
                flip_transpose(&self.spec, weight, flipped);
                conv.set_weights_flat(flipped, None)
            }
        }
    }

    /// The weight gradient (`dw`, `[out, in, kh, kw]`) and, when the layer has one, the bias
    /// gradient (`db`), both overwritten, from the layer's input `x` (shape `is`) and the
    /// output gradient `dy` after any ReLU mask.
    pub(crate) fn params(
        &self,
        x: &[f32],
        is: Shape,
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        scratch: &mut GradScratch,
    ) -> Result<()> {
        let s = &self.spec;
        let os = s.output_shape(is, "conv2d backward (weight)")?;
        if x.len() != is.len() || dy.len() != os.len() || dw.len() != s.weight_len() {
            return Err(Error::Internal(format!(
                "conv2d backward (weight) on slices of {}, {} and {} values for {is}, {os}",
                x.len(),
                dy.len(),
                dw.len()
            )));
        }
        if let Some(db) = db {
            bias_grad_slices(dy, os, db);
        }
        #[cfg(target_arch = "x86_64")]
        if !self.portable && std::is_x86_feature_detected!("avx512f") {
            super::grad_avx512::weight_grad(
                s,
                x,
                is,
                dy,
                os,
                dw,
                &mut scratch.pad,
                &mut scratch.partials,
                scratch.budget,
            );
            return Ok(());
        }
        weight_grad_gemm(s, x, is, dy, os, dw, &mut scratch.col);
        Ok(())
    }

    /// The input gradient `dx` (shape `is`, overwritten) from the output gradient `dy` after
    /// any ReLU mask.
    ///
    /// Errors: a layer prepared without its input gradient, or slices of other lengths.
    pub(crate) fn input(
        &self,
        dy: &[f32],
        is: Shape,
        dx: &mut [f32],
        scratch: &mut GradScratch,
    ) -> Result<()> {
        let s = &self.spec;
        let os = s.output_shape(is, "conv2d backward (input)")?;
        if dy.len() != os.len() || dx.len() != is.len() {
            return Err(Error::Internal(format!(
                "conv2d backward (input) on slices of {} and {} values for {os}, {is}",
                dy.len(),
                dx.len()
            )));
        }
        match &self.input {
            None => Err(Error::Internal(
                "conv2d backward: the input gradient was not prepared".into(),
            )),
            Some(InputGrad::Columns { weight }) => {
                input_grad_columns(s, weight, dy, os, dx, is, &mut scratch.col);
                Ok(())
            }
            Some(InputGrad::Direct { conv, crop }) => {
                if *crop == Padding::default() {
                    return conv.forward_slices_within(
                        dy,
                        os,
                        dx,
                        &mut scratch.conv,
                        scratch.budget,
                    );
                }
                let (h, w) = (os.h - crop.top - crop.bottom, os.w - crop.left - crop.right);
                let cropped = Shape::new(os.n, os.c, h, w);
                scratch.crop.resize(cropped.len(), 0.0);
                scratch
                    .crop
                    .par_chunks_mut(h * w)
                    .zip(dy.par_chunks(os.h * os.w))
                    .for_each(|(dst, src)| {
                        for (r, d) in dst.chunks_mut(w).enumerate() {
                            let at = (r + crop.top) * os.w + crop.left;
                            d.copy_from_slice(&src[at..at + w]);
                        }
                    });
                conv.forward_slices_within(
                    &scratch.crop,
                    cropped,
                    dx,
                    &mut scratch.conv,
                    scratch.budget,
                )
            }
        }
    }
}

/// `db[c] = sum over images and pixels of dy[c]`, accumulated in f64.
fn bias_grad_slices(dy: &[f32], os: Shape, db: &mut [f32]) {
    let plane = os.h * os.w;
    db.par_iter_mut().enumerate().for_each(|(c, out)| {
        let mut acc = 0f64;
        for n in 0..os.n {
            let p = &dy[(n * os.c + c) * plane..(n * os.c + c + 1) * plane];
            // Eight f32 lanes summed per step, then widened: exact enough and vectorised.
            let mut lanes = [0f64; 8];
            let chunks = p.chunks_exact(8);
            let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
            for ch in chunks {
                for (l, &v) in lanes.iter_mut().zip(ch) {
                    *l += v as f64;
                }
            }
            acc += lanes.iter().sum::<f64>() + tail;
        }
        *out = acc as f32;
    });
}

/// Output rows per im2col band for `k` column rows of `ow` pixels.
fn band_rows(k: usize, ow: usize, oh: usize) -> usize {
    (COL_ELEMS / (k * ow).max(1)).clamp(1, oh)
}

/// The weight gradient with im2col and SGEMM: per image and band of output rows,
/// `dw += dy_band * col^T`.
fn weight_grad_gemm(
    s: &Conv2d,
    x: &[f32],
    is: Shape,
    dy: &[f32],
    os: Shape,
    dw: &mut [f32],
    col: &mut Vec<f32>,
) {
    let taps = s.kernel.0 * s.kernel.1;
    let k = s.in_channels * taps;
    let (co, oh, ow) = (s.out_channels, os.h, os.w);
    let rows = band_rows(k, ow, oh);
    col.resize(k * rows * ow, 0.0);
    dw.fill(0.0);
    let parallelism = gemm_parallelism();
    for n in 0..os.n {
        let x = &x[n * is.c * is.h * is.w..(n + 1) * is.c * is.h * is.w];
        let dy = &dy[n * co * oh * ow..(n + 1) * co * oh * ow];
        for r0 in (0..oh).step_by(rows) {
            let r = rows.min(oh - r0);
            let cols = r * ow;
            im2col(x, s, is.h, is.w, ow, r0, r, &mut col[..k * cols]);
            // SAFETY: dst is co x k (row stride k); lhs is co x cols inside dy (row stride
            // oh * ow); rhs is cols x k with element (c, j) at col[j * cols + c].
            unsafe {
                gemm::gemm(
                    co,
                    k,
                    cols,
                    dw.as_mut_ptr(),
                    1,
                    k as isize,
                    true,
                    dy.as_ptr().add(r0 * ow),
                    1,
                    (oh * ow) as isize,
                    col.as_ptr(),
                    cols as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    }
}

/// The input gradient with SGEMM and col2im: per image and band of output rows,
/// `col = W^T dy_band`, then every column element is added to the input pixel it was read
/// from.
fn input_grad_columns(
    s: &Conv2d,
    weight: &[f32],
    dy: &[f32],
    os: Shape,
    dx: &mut [f32],
    is: Shape,
    col: &mut Vec<f32>,
) {
    let (kh, kw) = s.kernel;
    let taps = kh * kw;
    let k = s.in_channels * taps;
    let (co, oh, ow) = (s.out_channels, os.h, os.w);
    let (ih, iw) = (is.h, is.w);
    let rows = band_rows(k, ow, oh);
    col.resize(k * rows * ow, 0.0);
    dx.fill(0.0);
    let parallelism = gemm_parallelism();
    for n in 0..os.n {
        let dy = &dy[n * co * oh * ow..(n + 1) * co * oh * ow];
        let dx = &mut dx[n * is.c * ih * iw..(n + 1) * is.c * ih * iw];
        for r0 in (0..oh).step_by(rows) {
            let r = rows.min(oh - r0);
            let cols = r * ow;
            // SAFETY: dst is k x cols (row stride cols) inside col; lhs is W^T, k x co with
            // element (j, o) at weight[o * k + j]; rhs is co x cols inside dy (row stride
            // oh * ow).
            unsafe {
                gemm::gemm(
                    k,
                    cols,
                    co,
                    col.as_mut_ptr(),
                    1,
                    cols as isize,
                    false,
                    weight.as_ptr(),
                    k as isize,
                    1,
                    dy.as_ptr().add(r0 * ow),
                    1,
                    (oh * ow) as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            let col: &[f32] = col;
            dx.par_chunks_mut(ih * iw)
                .enumerate()
                .for_each(|(ci, plane)| {
                    for t in 0..taps {
                        let (ky, kx) = (t / kw, t % kw);
                        let row = &col[(ci * taps + t) * cols..(ci * taps + t + 1) * cols];
                        for rr in 0..r {
                            let iy = ((r0 + rr) * s.stride.0 + ky * s.dilation.0) as isize
                                - s.padding.top as isize;
                            if iy < 0 || iy >= ih as isize {
                                continue;
                            }
                            let dst = &mut plane[iy as usize * iw..(iy as usize + 1) * iw];
                            for (ox, &v) in row[rr * ow..(rr + 1) * ow].iter().enumerate() {
                                let ix = (ox * s.stride.1 + kx * s.dilation.1) as isize
                                    - s.padding.left as isize;
                                if ix >= 0 && ix < iw as isize {
                                    dst[ix as usize] += v;
                                }
                            }
                        }
                    }
                });
        }
    }
}

/// ReLU backward in place: `g = 0` where `y <= 0` (or NaN), from the forward output `y`.
pub(crate) fn relu_backward_inplace(y: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(g, y)| {
            for (g, &y) in g.iter_mut().zip(y) {
                // A select (vectorised, no branch): zero where y <= 0 or y is NaN.
                *g = if y > 0.0 { *g } else { 0.0 };
            }
        });
}

/// Max-pooling backward on slices: `dx` (shape `is`, overwritten) gets each output's
/// gradient at its window's first largest input (row-major, strictly larger values win, as
/// `crate::train::grad::max_pool2d_backward`).
pub(crate) fn max_pool2d_backward_slices(
    x: &[f32],
    is: Shape,
    spec: &MaxPool2d,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    let os = spec.output_shape(is, "max_pool2d backward")?;
    if x.len() != is.len() || dy.len() != os.len() || dx.len() != is.len() {
        return Err(Error::Internal(format!(
            "max_pool2d backward on slices of {}, {} and {} values for {is} and {os}",
            x.len(),
            dy.len(),
            dx.len()
        )));
    }
    let (ih, iw, oh, ow) = (is.h, is.w, os.h, os.w);
    let (kh, kw) = spec.kernel;
    let (sh, sw) = spec.stride;
    let (pt, pl) = (spec.padding.top, spec.padding.left);
    let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, sw, pl, kw, iw)).collect();
    dx.par_chunks_mut(ih * iw)
        .zip(x.par_chunks(ih * iw))
        .zip(dy.par_chunks(oh * ow))
        .for_each(|((dxp, xp), dyp)| {
            dxp.fill(0.0);
            for oy in 0..oh {
                let (a, b) = window(oy, sh, pt, kh, ih);
                for (ox, &(c0, c1)) in cols.iter().enumerate() {
                    let mut best = a * iw + c0;
                    let mut m = xp[best];
                    for r in a..b {
                        for (c, &v) in xp[r * iw + c0..r * iw + c1].iter().enumerate() {
                            if v > m {
                                m = v;
                                best = r * iw + c0 + c;
                            }
                        }
                    }
                    dxp[best] += dyp[oy * ow + ox];
                }
            }
        });
    Ok(())
}

/// Softmax cross-entropy over the channels of `scores` (shape `s`) against `labels`
/// (`[n, h, w]`, each a class or `ignore`), with `VALID` normalisation: returns the loss and
/// the number of non-ignored pixels, and writes the gradient (shape `s`). As
/// `crate::train::softmax_cross_entropy`: `-ln p` as `logsumexp - score`, capped at
/// `-ln(f32::MIN_POSITIVE)`, each pixel's term and the sums in f64; the probabilities as
/// `exp(s - max) / sum` in f32 over whole class planes (vectorised; [`exp_nonpositive`]).
///
/// Errors: a label that is neither a class nor `ignore` (nothing is written then).
pub(crate) fn softmax_loss(
    scores: &[f32],
    s: Shape,
    labels: &[u32],
    ignore: u32,
    grad: &mut [f32],
) -> Result<(f64, usize)> {
    let plane = s.h * s.w;
    if scores.len() != s.len() || grad.len() != s.len() || labels.len() != s.n * plane {
        return Err(Error::Internal(format!(
            "softmax loss on slices of {}, {} and {} values for {s}",
            scores.len(),
            labels.len(),
            grad.len()
        )));
    }
    let mut valid = 0usize;
    for (i, &l) in labels.iter().enumerate() {
        if l == ignore {
            continue;
        }
        if l as usize >= s.c {
            let (b, y, x) = (i / plane, i % plane / s.w, i % s.w);
            return Err(Error::InvalidSpec {
                context: "softmax cross-entropy".into(),
                reason: format!(
                    "label {l} at [{b}, {y}, {x}] is neither one of the {} classes nor the \
                     ignore label {ignore}",
                    s.c
                ),
            });
        }
        valid += 1;
    }
    let norm = valid.max(1) as f64;
    let cap = -(f32::MIN_POSITIVE as f64).ln();
    let c = s.c;
    let inv_norm = (1.0 / norm) as f32;
    // Per image, in f32 class planes (vectorised): the maximum over the classes, the
    // exponentials of the differences (kept in the gradient), their sum; then the loss per
    // pixel in f64, summed over the image; images added in order.
    let sums: Vec<f64> = grad
        .par_chunks_mut(c * plane)
        .zip(scores.par_chunks(c * plane))
        .zip(labels.par_chunks(plane))
        .map(|((g, sc), lab)| {
            let mut m = sc[..plane].to_vec();
            for k in 1..c {
                for (m, &v) in m.iter_mut().zip(&sc[k * plane..(k + 1) * plane]) {
                    // NaN-propagating maximum.
                    *m = if v > *m || v.is_nan() { v } else { *m };
                }
            }
            let mut sum = vec![0f32; plane];
            for k in 0..c {
                let (gk, sk) = (
                    &mut g[k * plane..(k + 1) * plane],
                    &sc[k * plane..(k + 1) * plane],
                );
                for (((e, &v), &m), sum) in gk.iter_mut().zip(sk).zip(&m).zip(sum.iter_mut()) {
                    *e = exp_nonpositive(v - m);
                    *sum += *e;
                }
            }
            // Per pixel: the scale of its exponentials (0 where ignored) and its loss term.
            let mut total = 0f64;
            for (p, (&l, sum)) in lab.iter().zip(sum.iter_mut()).enumerate() {
                if l == ignore {
                    *sum = 0.0;
                    continue;
                }
                let lse = m[p] as f64 + (*sum as f64).ln();
                total += (lse - sc[l as usize * plane + p] as f64).min(cap);
                *sum = inv_norm / *sum;
            }
            for k in 0..c {
                for (e, &scale) in g[k * plane..(k + 1) * plane].iter_mut().zip(&sum) {
                    *e *= scale;
                }
            }
            for (p, &l) in lab.iter().enumerate() {
                if l != ignore {
                    g[l as usize * plane + p] -= inv_norm;
                }
            }
            total
        })
        .collect();
    Ok((sums.iter().sum::<f64>() / norm, valid))
}

/// `e^x` for `x <= 0` in f32 (the softmax's arguments minus their maximum), as plain
/// arithmetic that vectorises: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (ln 2 in two parts, as
/// Cephes' `expf`), `e^r` from Cephes' degree-7 polynomial (relative error about 1e-7), times
/// `2^n` built in the exponent bits. Arguments below -87 give `e^-87` (a normal number; the
/// exact value would be negligible beside the maximum's 1 in the sum); NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = if x < -87.0 { -87.0 } else { x };
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut y = 1.987_569_1e-4;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    // n is in -126..=0 here, so 2^n is a normal number.
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    let e = y * scale;
    if x.is_nan() { x } else { e }
}

/// Gradient of a convolution's loss with respect to its weights on the fast path, given its
/// input and the gradient with respect to its output before any fused ReLU (as
/// `crate::train::grad::conv2d_grad_weight`, which it matches up to f32 rounding).
///
/// Errors: an input the spec does not accept, or a `grad_output` of another shape than the
/// convolution's output.
pub fn conv2d_grad_weight(
    input: ArrayView4<f32>,
    grad_output: ArrayView4<f32>,
    spec: &Conv2d,
) -> Result<Array4<f32>> {
    let ctx = "conv2d backward (weight)";
    let is = shape_of(&input);
    let os = spec.output_shape(is, ctx)?;
    same_shape(
        ctx,
        "output gradient",
        shape_of(&grad_output),
        "expected",
        os,
    )?;
    let back = ConvBackward::new(*spec, &vec![0.0; spec.weight_len()], None, false)?;
    let x = input.as_standard_layout();
    let dy = grad_output.as_standard_layout();
    let mut dw = Array4::<f32>::zeros(spec.weight_shape());
    back.params(
        x.as_slice().unwrap_or(&[]),
        is,
        dy.as_slice().unwrap_or(&[]),
        dw.as_slice_mut().unwrap_or(&mut []),
        None,
        &mut GradScratch::default(),
    )?;
    Ok(dw)
}

/// Gradient of a convolution's loss with respect to its input on the fast path, given the
/// gradient with respect to its output before any fused ReLU (as
/// `crate::train::grad::conv2d_grad_input`).
///
/// Errors: a weight shape other than the spec's, or a `grad_output` shape other than the
/// convolution's output shape for `input_shape`.
pub fn conv2d_grad_input(
    grad_output: ArrayView4<f32>,
    spec: &Conv2d,
    weight: ArrayView4<f32>,
    input_shape: Shape,
) -> Result<Array4<f32>> {
    let ctx = "conv2d backward (input)";
    check_conv_weight(spec, &weight, ctx)?;
    let os = spec.output_shape(input_shape, ctx)?;
    same_shape(
        ctx,
        "output gradient",
        shape_of(&grad_output),
        "expected",
        os,
    )?;
    let w = weight.as_standard_layout();
    let back = ConvBackward::new(*spec, w.as_slice().unwrap_or(&[]), Some(input_shape), false)?;
    let dy = grad_output.as_standard_layout();
    let mut dx = Array4::<f32>::zeros(input_shape.dims());
    back.input(
        dy.as_slice().unwrap_or(&[]),
        input_shape,
        dx.as_slice_mut().unwrap_or(&mut []),
        &mut GradScratch::default(),
    )?;
    Ok(dx)
}

/// Gradient with respect to a per-channel bias: the output gradient summed over the batch and
/// every pixel (accumulated in f64).
pub fn bias_grad(grad_output: ArrayView4<f32>) -> Array1<f32> {
    let os = shape_of(&grad_output);
    let dy = grad_output.as_standard_layout();
    let mut db = Array1::<f32>::zeros(os.c);
    if let (Some(dy), Some(out)) = (dy.as_slice(), db.as_slice_mut()) {
        bias_grad_slices(dy, os, out);
    }
    db
}

/// Max-pooling backward on the fast path: each output's gradient goes to its window's first
/// largest input (as `crate::train::grad::max_pool2d_backward`).
///
/// Errors: an input the spec does not accept, or a `grad_output` of another shape than the
/// pooling output.
pub fn max_pool2d_backward(
    input: ArrayView4<f32>,
    spec: &MaxPool2d,
    grad_output: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let ctx = "max_pool2d backward";
    let is = shape_of(&input);
    let os = spec.output_shape(is, ctx)?;
    same_shape(
        ctx,
        "output gradient",
        shape_of(&grad_output),
        "expected",
        os,
    )?;
    let x = input.as_standard_layout();
    let dy = grad_output.as_standard_layout();
    let mut dx = Array4::<f32>::zeros(is.dims());
    max_pool2d_backward_slices(
        x.as_slice().unwrap_or(&[]),
        is,
        spec,
        dy.as_slice().unwrap_or(&[]),
        dx.as_slice_mut().unwrap_or(&mut []),
    )?;
    Ok(dx)
}

/// Softmax cross-entropy on the fast path (as `crate::train::softmax_cross_entropy`): the
/// loss normalised by the non-ignored pixels, their number, and the gradient with respect to
/// the scores. `labels` are `[n, h, w]`, each a class or `ignore` (255 in Caffe's setup).
///
/// Errors: labels of another `[n, h, w]` than the scores, a zero dimension, or a label that is
/// neither a class nor `ignore`.
pub fn softmax_cross_entropy(
    scores: ArrayView4<f32>,
    labels: ArrayView3<u32>,
    ignore: u32,
) -> Result<(f64, usize, Array4<f32>)> {
    let ctx = "softmax cross-entropy";
    let s = shape_of(&scores);
    s.check_nonzero(ctx)?;
    if labels.dim() != (s.n, s.h, s.w) {
        return Err(Error::ShapeMismatch {
            context: ctx.to_string(),
            left_name: "labels [n, h, w]",
            left: labels.shape().to_vec(),
            right_name: "scores [n, classes, h, w]",
            right: s.dims().to_vec(),
        });
    }
    let x = scores.as_standard_layout();
    let l: Vec<u32> = labels.iter().copied().collect();
    let mut grad = Array4::<f32>::zeros(s.dims());
    let (loss, valid) = softmax_loss(
        x.as_slice().unwrap_or(&[]),
        s,
        &l,
        ignore,
        grad.as_slice_mut().unwrap_or(&mut []),
    )?;
    Ok((loss, valid, grad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Padding one image at a time (the budget of a large batch) gives the gradients of
    /// padding the whole batch at once.
    #[test]
    fn batches_padded_in_parts_give_the_same_gradients() {
        // Output channels along the lanes (19) and along the pixels (5).
        for co in [19, 5] {
            parts_match(co);
        }
    }

    fn parts_match(co: usize) {
        let mut r = StdRng::seed_from_u64(3);
        let spec = Conv2d::new(5, co, 3)
            .dilation(2)
            .padding(Padding::new(3, 1, 0, 2));
        let is = Shape::new(5, 5, 13, 17);
        let os = spec.output_shape(is, "test").unwrap();
        let mut v = |n: usize| {
            (0..n)
                .map(|_| r.random_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        };
        let (x, dy, w) = (v(is.len()), v(os.len()), v(spec.weight_len()));
        let back = ConvBackward::new(spec, &w, Some(is), false).unwrap();
        let run = |budget: usize| {
            let mut scratch = GradScratch::with_budget(budget);
            let (mut dw, mut dx) = (vec![0f32; w.len()], vec![0f32; x.len()]);
            back.params(&x, is, &dy, &mut dw, None, &mut scratch)
                .unwrap();
            back.input(&dy, is, &mut dx, &mut scratch).unwrap();
            (dw, dx)
        };
        let (whole_w, whole_x) = run(1 << 30);
        let (part_w, part_x) = run(1);
        assert_eq!(whole_x, part_x, "input gradient");
        let scale = whole_w.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in whole_w.iter().zip(&part_w) {
            assert!((a - b).abs() <= 1e-5 * scale, "weight gradient {a} vs {b}");
        }
    }
}
