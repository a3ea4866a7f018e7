//! Backward passes of the layer ops, as plain loops accumulating in f64 that mirror the
//! forward loops of [`crate::cpu::reference`] term for term.
//!
//! Each forward term `y[n, co, oy, ox] += x[n, ci, iy, ix] * w[co, ci, ky, kx]` of the reference
//! convolution (with `iy = oy * stride + ky * dilation - pad_top`, and the same across) is
//! visited once here and its two partial derivatives are scattered into the input and weight
//! gradients, so the backward pass covers exactly the taps the forward pass used, whatever the
//! kernel, dilation, padding per side and stride.
//!
//! Conventions are Caffe's: the ReLU's derivative at 0 is 0 (the gradient passes where the
//! output is positive), a max-pooling window sends its gradient to its first largest input in
//! row-major order, and dropout scales the kept units by `1 / (1 - ratio)` at training time.
//!
//! Shapes are checked; a mismatch is an [`Error`], never a panic.

use crate::par::*;
use ndarray::{Array1, Array3, Array4, ArrayView4, Axis, Zip};
use rand::Rng;

use crate::error::{Error, Result};
pub(crate) use crate::spec::same_shape;
use crate::spec::{Conv2d, MaxPool2d, Shape, check_conv_weight, shape_of};

/// Calls `f(n, co, oy, ox, ci, ky, kx, iy, ix)` for every term of the reference convolution's
/// sum whose input tap lies inside the input (padded taps contribute nothing), for the input
/// channels `channels`.
fn for_each_tap(
    spec: &Conv2d,
    input: Shape,
    output: Shape,
    channels: std::ops::Range<usize>,
    mut f: impl FnMut([usize; 9]),
) {
    let (kh, kw) = spec.kernel;
    let (dh, dw) = spec.dilation;
    let (sh, sw) = spec.stride;
    let (pt, pl) = (spec.padding.top as isize, spec.padding.left as isize);
    let (ih, iw) = (input.h as isize, input.w as isize);
    for n in 0..output.n {
        for co in 0..output.c {
            for oy in 0..output.h {
                for ox in 0..output.w {
                    for ci in channels.clone() {
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
                                f([n, co, oy, ox, ci, ky, kx, iy as usize, ix as usize]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Gradient of a convolution's loss with respect to its input, given the gradient with
/// respect to its output **before** any fused ReLU (apply [`relu_backward`] first, or use
/// [`conv2d_backward`]); `spec.relu` and `spec.bias` are not looked at.
///
/// `dx[n, ci, iy, ix] = sum dy[n, co, oy, ox] * w[co, ci, ky, kx]` over the taps with
/// `iy = oy * stride + ky * dilation - pad_top` (likewise across).
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
    let out = spec.output_shape(input_shape, ctx)?;
    same_shape(
        ctx,
        "output gradient",
        shape_of(&grad_output),
        "convolution output",
        out,
    )?;
    let mut dx = Array4::<f32>::zeros(input_shape.dims());
    // Input channels in parallel: each input gradient gathers the same terms in the same order
    // as one pass over all channels would.
    let plane_shape = (input_shape.n, input_shape.h, input_shape.w);
    dx.axis_iter_mut(Axis(1))
        .into_par_iter()
        .enumerate()
        .for_each(|(ci, mut plane)| {
            let mut acc = Array3::<f64>::zeros(plane_shape);
            for_each_tap(
                spec,
                input_shape,
                out,
                ci..ci + 1,
                |[n, co, oy, ox, ci, ky, kx, iy, ix]| {
                    acc[[n, iy, ix]] +=
                        grad_output[[n, co, oy, ox]] as f64 * weight[[co, ci, ky, kx]] as f64;
                },
            );
            plane.assign(&acc.mapv(|v| v as f32));
        });
    Ok(dx)
}

/// Gradient of a convolution's loss with respect to its weights, given its input and the
/// gradient with respect to its output before any fused ReLU (see [`conv2d_grad_input`]).
///
/// `dw[co, ci, ky, kx] = sum dy[n, co, oy, ox] * x[n, ci, iy, ix]` over the batch and the
/// output pixels whose tap `(iy, ix)` lies inside the input.
///
/// Errors: an input the spec does not accept, or a `grad_output` of another shape than the
/// convolution's output.
pub fn conv2d_grad_weight(
    input: ArrayView4<f32>,
    grad_output: ArrayView4<f32>,
    spec: &Conv2d,
) -> Result<Array4<f32>> {
    let ctx = "conv2d backward (weight)";
    let out = spec.output_shape(shape_of(&input), ctx)?;
    same_shape(
        ctx,
        "output gradient",
        shape_of(&grad_output),
        "convolution output",
        out,
    )?;
    let mut dw = Array4::<f64>::zeros(spec.weight_shape());
    for_each_tap(
        spec,
        shape_of(&input),
        out,
        0..spec.in_channels,
        |[n, co, oy, ox, ci, ky, kx, iy, ix]| {
            dw[[co, ci, ky, kx]] +=
                grad_output[[n, co, oy, ox]] as f64 * input[[n, ci, iy, ix]] as f64;
        },
    );
    Ok(dw.mapv(|v| v as f32))
}

/// Gradient with respect to a per-channel bias: the output gradient summed over the batch and
/// every pixel, one value per channel of `grad_output`.
pub fn bias_grad(grad_output: ArrayView4<f32>) -> Array1<f32> {
    let (n, c, h, w) = grad_output.dim();
    Array1::from_shape_fn(c, |co| {
        let mut acc = 0.0f64;
        for b in 0..n {
            for y in 0..h {
                for x in 0..w {
                    acc += grad_output[[b, co, y, x]] as f64;
                }
            }
        }
        acc as f32
    })
}

/// The three gradients of a convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dGrads {
    /// With respect to the input, shaped like it.
    pub input: Array4<f32>,
    /// With respect to the weights, `[out, in, kh, kw]`.
    pub weight: Array4<f32>,
    /// With respect to the bias, present iff the spec has one.
    pub bias: Option<Array1<f32>>,
}

/// Backward pass of a convolution as the reference computes it, fused ReLU included: when
/// `spec.relu`, the output gradient first passes only where `output > 0` (Caffe's ReLU
/// derivative, 0 at 0), then the input, weight and bias gradients follow.
///
/// `output` is the layer's forward output (after the fused ReLU); it is only read when
/// `spec.relu`, but its shape is always checked.
///
/// Errors: any shape that does not match the spec and the input.
pub fn conv2d_backward(
    input: ArrayView4<f32>,
    spec: &Conv2d,
    weight: ArrayView4<f32>,
    output: ArrayView4<f32>,
    grad_output: ArrayView4<f32>,
) -> Result<Conv2dGrads> {
    let ctx = "conv2d backward";
    check_conv_weight(spec, &weight, ctx)?;
    let out = spec.output_shape(shape_of(&input), ctx)?;
    same_shape(ctx, "output", shape_of(&output), "convolution output", out)?;
    let masked;
    let grad = if spec.relu {
        masked = relu_backward(output, grad_output)?;
        masked.view()
    } else {
        grad_output
    };
    Ok(Conv2dGrads {
        input: conv2d_grad_input(grad, spec, weight, shape_of(&input))?,
        weight: conv2d_grad_weight(input, grad, spec)?,
        bias: spec.bias.then(|| bias_grad(grad)),
    })
}

/// ReLU backward from the forward output: the gradient passes where `output > 0` and is 0
/// elsewhere (0 at 0 and for NaN, as Caffe does). Using the output rather than the input gives
/// the same mask and works for in-place and fused ReLUs alike.
///
/// Errors: `output` and `grad_output` of different shapes.
pub fn relu_backward(output: ArrayView4<f32>, grad_output: ArrayView4<f32>) -> Result<Array4<f32>> {
    same_shape(
        "relu backward",
        "output",
        shape_of(&output),
        "output gradient",
        shape_of(&grad_output),
    )?;
    Ok(Zip::from(&output)
        .and(&grad_output)
        .map_collect(|&y, &g| if y > 0.0 { g } else { 0.0 }))
}

/// Max-pooling backward: each output's gradient goes to the input that won its window in the
/// forward pass, the first largest value in row-major window order (strictly larger values
/// replace the current winner, as in Caffe), windows clipped to the input as
/// [`crate::cpu::reference::max_pool2d`] clips them. Overlapping windows add up.
///
/// A window whose inputs are all NaN or `-inf` sends its gradient to its first input inside
/// the image.
///
/// Errors: an input the spec does not accept, or a `grad_output` of another shape than the
/// pooling output.
pub fn max_pool2d_backward(
    input: ArrayView4<f32>,
    spec: &MaxPool2d,
    grad_output: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let ctx = "max_pool2d backward";
    let out = spec.output_shape(shape_of(&input), ctx)?;
    same_shape(
        ctx,
        "output gradient",
        shape_of(&grad_output),
        "pooling output",
        out,
    )?;
    let (ih, iw) = (input.dim().2 as isize, input.dim().3 as isize);
    let mut dx = Array4::<f64>::zeros(input.dim());
    for n in 0..out.n {
        for c in 0..out.c {
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut best: Option<(f32, usize, usize)> = None;
                    for ky in 0..spec.kernel.0 {
                        let iy = (oy * spec.stride.0 + ky) as isize - spec.padding.top as isize;
                        if iy < 0 || iy >= ih {
                            continue;
                        }
                        for kx in 0..spec.kernel.1 {
                            let ix =
                                (ox * spec.stride.1 + kx) as isize - spec.padding.left as isize;
                            if ix < 0 || ix >= iw {
                                continue;
                            }
                            let v = input[[n, c, iy as usize, ix as usize]];
                            if best.is_none_or(|(m, _, _)| v > m) {
                                best = Some((v, iy as usize, ix as usize));
                            }
                        }
                    }
                    if let Some((_, y, x)) = best {
                        dx[[n, c, y, x]] += grad_output[[n, c, oy, ox]] as f64;
                    }
                }
            }
        }
    }
    Ok(dx.mapv(|v| v as f32))
}

/// Checks a dropout ratio: finite, at least 0 and below 1.
fn check_ratio(ratio: f32, context: &str) -> Result<()> {
    if ratio.is_finite() && (0.0..1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(Error::InvalidSpec {
            context: context.to_string(),
            reason: format!("dropout ratio {ratio} must be at least 0 and below 1"),
        })
    }
}

/// A dropout mask: each unit kept (`true`) with probability `1 - ratio`, as Caffe's Bernoulli
/// draw does, from the caller's random number generator.
///
/// Errors: a ratio outside `[0, 1)`.
pub fn dropout_mask(shape: Shape, ratio: f32, rng: &mut impl Rng) -> Result<Array4<bool>> {
    check_ratio(ratio, "dropout mask")?;
    let keep = 1.0 - ratio as f64;
    Ok(Array4::from_shape_simple_fn(shape.dims(), || {
        rng.random_bool(keep)
    }))
}

/// Dropout at training time with a given mask: `y = x * mask / (1 - ratio)` (Caffe's scaling of
/// the kept units; at test time dropout is the identity).
///
/// Errors: a ratio outside `[0, 1)` or a mask of another shape than the input.
pub fn dropout_forward(
    input: ArrayView4<f32>,
    mask: ArrayView4<bool>,
    ratio: f32,
) -> Result<Array4<f32>> {
    dropout_apply(input, mask, ratio, "dropout forward", "input")
}

/// Dropout backward with the forward mask: `dx = dy * mask / (1 - ratio)`.
///
/// Errors: a ratio outside `[0, 1)` or a mask of another shape than the gradient.
pub fn dropout_backward(
    grad_output: ArrayView4<f32>,
    mask: ArrayView4<bool>,
    ratio: f32,
) -> Result<Array4<f32>> {
    dropout_apply(
        grad_output,
        mask,
        ratio,
        "dropout backward",
        "output gradient",
    )
}

/// `x * mask / (1 - ratio)`, shared by both directions (dropout is linear in its input).
fn dropout_apply(
    x: ArrayView4<f32>,
    mask: ArrayView4<bool>,
    ratio: f32,
    context: &str,
    name: &'static str,
) -> Result<Array4<f32>> {
    check_ratio(ratio, context)?;
    let m = mask.dim();
    same_shape(
        context,
        name,
        shape_of(&x),
        "mask",
        Shape::new(m.0, m.1, m.2, m.3),
    )?;
    let scale = 1.0 / (1.0 - ratio as f64);
    Ok(Zip::from(&x)
        .and(&mask)
        .map_collect(|&v, &keep| if keep { (v as f64 * scale) as f32 } else { 0.0 }))
}
