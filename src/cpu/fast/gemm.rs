//! The portable convolution: im2col over bands of output rows, then the `gemm` crate's
//! multi-threaded SGEMM, with bias and ReLU applied around it.

use crate::par::*;

use super::elementwise::relu_slice;
use crate::spec::{Conv2d, Shape};

/// Most f32 elements of im2col scratch per band (64 MiB) on the fallback path.
const SCRATCH_ELEMS: usize = 16 << 20;

/// Convolution of the NCHW input `x` (shape `is`) into `y` (shape `os`) with weights as an
/// `out x (in*kh*kw)` matrix.
pub(super) fn forward(
    s: &Conv2d,
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    is: Shape,
    os: Shape,
    y: &mut [f32],
) {
    let (c_in, ih, iw) = (s.in_channels, is.h, is.w);
    let (oh, ow) = (os.h, os.w);
    let taps = s.kernel.0 * s.kernel.1;
    let k = c_in * taps;
    let m = s.out_channels;
    let rows_per_band = (SCRATCH_ELEMS / (k * ow).max(1)).clamp(1, oh);
    let mut scratch = vec![
        0f32;
        if s.is_pointwise() {
            0
        } else {
            k * rows_per_band * ow
        }
    ];
    let parallelism = gemm_parallelism();
    for n in 0..os.n {
        let x = &x[n * c_in * ih * iw..(n + 1) * c_in * ih * iw];
        let y = &mut y[n * m * oh * ow..(n + 1) * m * oh * ow];
        match bias {
            Some(b) => {
                for (co, plane) in y.chunks_mut(oh * ow).enumerate() {
                    plane.fill(b[co]);
                }
            }
            None => y.fill(0.0),
        }
        for r0 in (0..oh).step_by(rows_per_band) {
            let rows = rows_per_band.min(oh - r0);
            let cols = rows * ow;
            let rhs: &[f32] = if s.is_pointwise() {
                &x[r0 * ow..]
            } else {
                im2col(x, s, ih, iw, ow, r0, rows, &mut scratch[..k * cols]);
                &scratch[..k * cols]
            };
            let rhs_rs = if s.is_pointwise() {
                (ih * iw) as isize
            } else {
                cols as isize
            };
            // SAFETY: dst is m x cols inside y (row stride oh*ow), lhs is m x k, rhs is
            // k x cols with row stride rhs_rs; all in bounds of their slices.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    y.as_mut_ptr().add(r0 * ow),
                    1,
                    (oh * ow) as isize,
                    true,
                    weight.as_ptr(),
                    1,
                    k as isize,
                    rhs.as_ptr(),
                    1,
                    rhs_rs,
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
    if s.relu {
        relu_slice(y);
    }
}

/// Fills `col` (k rows x rows*ow columns) with the input patches of output rows `r0..r0+rows`.
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col(
    x: &[f32],
    s: &Conv2d,
    ih: usize,
    iw: usize,
    ow: usize,
    r0: usize,
    rows: usize,
    col: &mut [f32],
) {
    let cols = rows * ow;
    let (kh, kw) = s.kernel;
    let per_channel = kh * kw * cols;
    col[..s.in_channels * per_channel]
        .par_chunks_mut(per_channel)
        .enumerate()
        .for_each(|(ci, col)| {
            let plane = &x[ci * ih * iw..(ci + 1) * ih * iw];
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut col[(ky * kw + kx) * cols..][..cols];
                    for r in 0..rows {
                        let iy = ((r0 + r) * s.stride.0 + ky * s.dilation.0) as isize
                            - s.padding.top as isize;
                        let dst = &mut row[r * ow..(r + 1) * ow];
                        if iy < 0 || iy >= ih as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * iw..(iy as usize + 1) * iw];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * s.stride.1 + kx * s.dilation.1) as isize
                                - s.padding.left as isize;
                            *d = if ix >= 0 && ix < iw as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        });
}
