//! The per-channel transposed convolution (the upsampling layer) on the fast path.

use crate::par::*;
use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::spec::{check_deconv_weight, shape_of};

/// Per-channel transposed convolution (no bias), multi-threaded over channel planes: each output
/// gathers the inputs whose stride-spread reaches it (the same terms the reference scatters).
pub fn deconv2d(
    input: ArrayView4<f32>,
    spec: &crate::spec::Deconv2d,
    weight: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let out = spec.output_shape(shape_of(&input), "deconv2d")?;
    check_deconv_weight(spec, &weight)?;
    let input = input.as_standard_layout();
    let weight = weight.as_standard_layout();
    let (x, w) = (
        input.as_slice().unwrap_or(&[]),
        weight.as_slice().unwrap_or(&[]),
    );
    let (ih, iw) = (input.dim().2, input.dim().3);
    let (k, s, pad) = (spec.kernel, spec.stride, spec.pad);
    let mut y = vec![0f32; out.len()];
    y.par_chunks_mut(out.plane())
        .enumerate()
        .for_each(|(p, yp)| {
            let xp = &x[p * ih * iw..(p + 1) * ih * iw];
            let wp = &w[(p % spec.channels) * k * k..][..k * k];
            for oy in 0..out.h {
                let ty = oy + pad;
                for ox in 0..out.w {
                    let tx = ox + pad;
                    let mut acc = 0f32;
                    for ky in (ty % s..k.min(ty + 1)).step_by(s) {
                        let iy = (ty - ky) / s;
                        if iy >= ih {
                            continue;
                        }
                        for kx in (tx % s..k.min(tx + 1)).step_by(s) {
                            let ix = (tx - kx) / s;
                            if ix < iw {
                                acc += xp[iy * iw + ix] * wp[ky * k + kx];
                            }
                        }
                    }
                    yp[oy * out.w + ox] = acc;
                }
            }
        });
    Array4::from_shape_vec(out.dims(), y)
        .map_err(|e| Error::Internal(format!("deconv2d output: {e}")))
}
