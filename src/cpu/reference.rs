//! The CPU reference: every op as direct loops accumulating in f64.
//!
//! Written to be obviously correct rather than fast; this is the oracle the GPU kernels and the
//! fast CPU path are checked against. Convolutions compute their output channels in parallel,
//! each output the same sum in the same order as on one thread.

use crate::par::*;
use ndarray::{Array3, Array4, ArrayView1, ArrayView4, Axis};

use crate::error::Result;
use crate::net::Op;
use crate::spec::{
    Conv2d, Deconv2d, MaxPool2d, Zoom, check_conv_params, check_deconv_weight, shape_of,
};

/// Direct 2-D convolution (any kernel, dilation, padding, stride), bias and ReLU as the spec says.
pub fn conv2d(
    input: ArrayView4<f32>,
    spec: &Conv2d,
    weight: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
) -> Result<Array4<f32>> {
    let ctx = "conv2d";
    check_conv_params(spec, &weight, bias.as_ref(), ctx)?;
    let out = spec.output_shape(shape_of(&input), ctx)?;
    let (kh, kw) = spec.kernel;
    let (dh, dw) = spec.dilation;
    let (sh, sw) = spec.stride;
    let (pt, pl) = (spec.padding.top as isize, spec.padding.left as isize);
    let (ih, iw) = (input.dim().2 as isize, input.dim().3 as isize);
    let mut y = Array4::<f32>::zeros(out.dims());
    // Output channels in parallel; every output is the same sum in the same order.
    y.axis_iter_mut(Axis(1))
        .into_par_iter()
        .enumerate()
        .for_each(|(co, mut plane)| {
            for n in 0..out.n {
                for oy in 0..out.h {
                    for ox in 0..out.w {
                        let mut acc = bias.as_ref().map_or(0.0, |b| b[co] as f64);
                        for ci in 0..spec.in_channels {
                            for ky in 0..kh {
                                let iy = (oy * sh + ky * dh) as isize - pt;
                                if iy < 0 || iy >= ih {
                                    continue;
                                }
                                for kx in 0..kw {
                                    let ix = (ox * sw + kx * dw) as isize - pl;
                                    if ix < 0 || ix >= iw {
                                        continue;
                                    }
                                    acc += input[[n, ci, iy as usize, ix as usize]] as f64
                                        * weight[[co, ci, ky, kx]] as f64;
                                }
                            }
                        }
                        if spec.relu && acc < 0.0 {
                            acc = 0.0;
                        }
                        plane[[n, oy, ox]] = acc as f32;
                    }
                }
            }
        });
    Ok(y)
}

/// Max pooling; padded positions never win (Caffe's and PyTorch's semantics).
pub fn max_pool2d(input: ArrayView4<f32>, spec: &MaxPool2d) -> Result<Array4<f32>> {
    let out = spec.output_shape(shape_of(&input), "max_pool2d")?;
    let (ih, iw) = (input.dim().2 as isize, input.dim().3 as isize);
    let mut y = Array4::<f32>::zeros(out.dims());
    for n in 0..out.n {
        for c in 0..out.c {
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut m = f32::NEG_INFINITY;
                    let mut nan = false;
                    for ky in 0..spec.kernel.0 {
                        let iy = (oy * spec.stride.0 + ky) as isize - spec.padding.top as isize;
                        for kx in 0..spec.kernel.1 {
                            let ix =
                                (ox * spec.stride.1 + kx) as isize - spec.padding.left as isize;
                            if iy >= 0 && iy < ih && ix >= 0 && ix < iw {
                                let v = input[[n, c, iy as usize, ix as usize]];
                                nan |= v.is_nan();
                                if v > m {
                                    m = v;
                                }
                            }
                        }
                    }
                    y[[n, c, oy, ox]] = if nan { f32::NAN } else { m };
                }
            }
        }
    }
    Ok(y)
}

/// Elementwise `max(x, 0)`; NaN stays NaN.
pub fn relu(input: ArrayView4<f32>) -> Array4<f32> {
    input.mapv(|v| if v < 0.0 { 0.0 } else { v })
}

/// Softmax over channels at every pixel (computed in f64 after subtracting the maximum).
pub fn softmax(input: ArrayView4<f32>) -> Array4<f32> {
    let (n, c, h, w) = input.dim();
    let mut y = Array4::<f32>::zeros((n, c, h, w));
    for b in 0..n {
        for yy in 0..h {
            for xx in 0..w {
                let m = (0..c)
                    .map(|k| input[[b, k, yy, xx]] as f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c)
                    .map(|k| (input[[b, k, yy, xx]] as f64 - m).exp())
                    .sum();
                for k in 0..c {
                    y[[b, k, yy, xx]] = ((input[[b, k, yy, xx]] as f64 - m).exp() / sum) as f32;
                }
            }
        }
    }
    y
}

/// Index of the largest channel at every pixel (the first one on ties), as `[n, h, w]`.
pub fn argmax(input: ArrayView4<f32>) -> Array3<u32> {
    let (n, c, h, w) = input.dim();
    Array3::from_shape_fn((n, h, w), |(b, yy, xx)| {
        let mut best = 0;
        for k in 1..c {
            if input[[b, k, yy, xx]] > input[[b, best, yy, xx]] {
                best = k;
            }
        }
        best as u32
    })
}

/// Linear interpolation leaving out a term of weight 0, so that an infinite neighbour at
/// weight 0 does not make the result NaN (`0 * inf`).
fn lerp(lo: f64, hi: f64, t: f64) -> f64 {
    if t == 0.0 {
        lo
    } else {
        t * hi + (1.0 - t) * lo
    }
}

/// Bilinear zoom sampling at `(y / f, x / f)`, repeating the last row and column at the edge.
/// An output depends only on the inputs it gives a positive weight, so NaN and infinities
/// spread no further than the interpolation reaches.
pub fn zoom(input: ArrayView4<f32>, spec: &Zoom) -> Result<Array4<f32>> {
    let out = spec.output_shape(shape_of(&input), "zoom")?;
    let (ih, iw) = (input.dim().2, input.dim().3);
    let f = spec.factor;
    let mut y = Array4::<f32>::zeros(out.dims());
    for b in 0..out.n {
        for c in 0..out.c {
            for oy in 0..out.h {
                let r0 = oy / f;
                let r1 = (r0 + 1).min(ih - 1);
                let rt = (oy % f) as f64 / f as f64;
                for ox in 0..out.w {
                    let c0 = ox / f;
                    let c1 = (c0 + 1).min(iw - 1);
                    let ct = (ox % f) as f64 / f as f64;
                    let at = |r: usize, col: usize| input[[b, c, r, col]] as f64;
                    let v0 = lerp(at(r0, c0), at(r1, c0), rt);
                    let v1 = lerp(at(r0, c1), at(r1, c1), rt);
                    y[[b, c, oy, ox]] = lerp(v0, v1, ct) as f32;
                }
            }
        }
    }
    Ok(y)
}

/// Per-channel transposed convolution (no bias): every input pixel adds `x * w[ky, kx]` to the
/// output at `(iy * stride + ky - pad, ix * stride + kx - pad)`.
pub fn deconv2d(
    input: ArrayView4<f32>,
    spec: &Deconv2d,
    weight: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let out = spec.output_shape(shape_of(&input), "deconv2d")?;
    check_deconv_weight(spec, &weight)?;
    let (ih, iw) = (input.dim().2, input.dim().3);
    let mut y = ndarray::Array4::<f64>::zeros(out.dims());
    for b in 0..out.n {
        for c in 0..out.c {
            for iy in 0..ih {
                for ix in 0..iw {
                    let v = input[[b, c, iy, ix]] as f64;
                    for ky in 0..spec.kernel {
                        let oy = (iy * spec.stride + ky) as isize - spec.pad as isize;
                        if oy < 0 || oy >= out.h as isize {
                            continue;
                        }
                        for kx in 0..spec.kernel {
                            let ox = (ix * spec.stride + kx) as isize - spec.pad as isize;
                            if ox < 0 || ox >= out.w as isize {
                                continue;
                            }
                            y[[b, c, oy as usize, ox as usize]] +=
                                v * weight[[c, 0, ky, kx]] as f64;
                        }
                    }
                }
            }
        }
    }
    Ok(y.mapv(|v| v as f32))
}

/// Applies one network op with the reference implementation.
pub fn apply(op: &Op, x: ArrayView4<f32>) -> Result<Array4<f32>> {
    match op {
        Op::Conv { spec, weight, bias } => {
            conv2d(x, spec, weight.view(), bias.as_ref().map(|b| b.view()))
        }
        Op::MaxPool(p) => max_pool2d(x, p),
        Op::Relu => Ok(relu(x)),
        Op::Softmax => Ok(softmax(x)),
        Op::Zoom(z) => zoom(x, z),
        Op::Deconv { spec, weight } => deconv2d(x, spec, weight.view()),
    }
}
