//! Max pooling on the fast path.

use crate::par::*;
use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::spec::{MaxPool2d, Shape, shape_of};

/// The larger of two values, NaN if either is NaN.
#[inline(always)]
pub(super) fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// Max pooling, multi-threaded over channel planes; padded positions never win and a NaN in a
/// window gives NaN (as [`crate::cpu::reference::max_pool2d`]).
pub fn max_pool2d(input: ArrayView4<f32>, spec: &MaxPool2d) -> Result<Array4<f32>> {
    let is = shape_of(&input);
    let os = spec.output_shape(is, "max_pool2d")?;
    let input = input.as_standard_layout();
    let x = input.as_slice().ok_or_else(|| Error::InvalidSpec {
        context: "max_pool2d".into(),
        reason: "input is not contiguous".into(),
    })?;
    let mut out = Array4::<f32>::zeros(os.dims());
    let y = out.as_slice_mut().ok_or_else(|| Error::InvalidSpec {
        context: "max_pool2d".into(),
        reason: "output is not contiguous".into(),
    })?;
    max_pool2d_slices(x, is, spec, y)?;
    Ok(out)
}

/// Clamped input range `[start, end)` of window `o` along one axis (never empty: padding is
/// smaller than the kernel and the last window starts inside the input or the near padding).
#[inline]
pub(super) fn window(o: usize, s: usize, p: usize, k: usize, size: usize) -> (usize, usize) {
    let start = (o * s).saturating_sub(p);
    let end = (o * s + k).saturating_sub(p).min(size);
    (start, end)
}

/// [`max_pool2d`] on a contiguous NCHW input of shape `is` into a contiguous output.
pub(crate) fn max_pool2d_slices(
    x: &[f32],
    is: Shape,
    spec: &MaxPool2d,
    y: &mut [f32],
) -> Result<()> {
    let os = spec.output_shape(is, "max_pool2d")?;
    if x.len() != is.len() || y.len() != os.len() {
        return Err(Error::Internal(format!(
            "max_pool2d on slices of {} and {} values for shapes {is} and {os}",
            x.len(),
            y.len()
        )));
    }
    let (ih, iw) = (is.h, is.w);
    let (oh, ow) = (os.h, os.w);
    let (kh, kw) = spec.kernel;
    let (sh, sw) = spec.stride;
    let (pt, pl) = (spec.padding.top, spec.padding.left);
    let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, sw, pl, kw, iw)).collect();
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(ih * iw))
        .for_each(|(yp, xp)| {
            // Per output row: the maxima down the window's rows (contiguous, vectorised), then
            // across each window's columns of that one row.
            let mut vmax = vec![0f32; iw];
            for oy in 0..oh {
                let (a, b) = window(oy, sh, pt, kh, ih);
                vmax.copy_from_slice(&xp[a * iw..(a + 1) * iw]);
                for r in a + 1..b {
                    for (m, &v) in vmax.iter_mut().zip(&xp[r * iw..(r + 1) * iw]) {
                        *m = nan_max(*m, v);
                    }
                }
                let dst = &mut yp[oy * ow..(oy + 1) * ow];
                for (d, &(c0, c1)) in dst.iter_mut().zip(&cols) {
                    let mut m = vmax[c0];
                    for &v in &vmax[c0 + 1..c1] {
                        m = nan_max(m, v);
                    }
                    *d = m;
                }
            }
        });
    Ok(())
}
