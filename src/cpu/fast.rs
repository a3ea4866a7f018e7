//! The fast CPU path: im2col over bands of output rows plus a multi-threaded SGEMM (the `gemm`
//! crate, which uses AVX-512/AVX2/NEON as the CPU offers). Used for CPU runs of networks and as
//! the CPU side of GPU-vs-CPU benchmarks; checked against [`super::reference`].

use ndarray::{Array4, ArrayView1, ArrayView4, s};

use crate::cpu::reference::{check_conv_params, shape_of};
use crate::error::Result;
use crate::spec::Conv2d;

/// Most f32 elements of im2col scratch per band (64 MiB).
const SCRATCH_ELEMS: usize = 16 << 20;

/// A convolution layer prepared for the CPU: weights stored as an `out x (in*kh*kw)` matrix.
pub struct CpuConv2d {
    spec: Conv2d,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl CpuConv2d {
    /// Validates and stores the weights `[out, in, kh, kw]` and bias.
    pub fn new(
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Result<Self> {
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        Ok(Self {
            spec,
            weight: weight.iter().copied().collect(),
            bias: bias.map(|b| b.to_vec()),
        })
    }

    /// The layer's spec.
    pub fn spec(&self) -> &Conv2d {
        &self.spec
    }

    /// Runs the layer on an NCHW input.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        let s = &self.spec;
        let out_shape = s.output_shape(shape_of(&input), "conv2d")?;
        let input = input.as_standard_layout();
        let (c_in, ih, iw) = (s.in_channels, input.dim().2, input.dim().3);
        let (oh, ow) = (out_shape.h, out_shape.w);
        let taps = s.kernel.0 * s.kernel.1;
        let k = c_in * taps;
        let m = s.out_channels;
        let mut out = Array4::<f32>::zeros(out_shape.dims());
        let rows_per_band = (SCRATCH_ELEMS / (k * ow).max(1)).clamp(1, oh);
        let mut scratch = vec![
            0f32;
            if s.is_pointwise() {
                0
            } else {
                k * rows_per_band * ow
            }
        ];
        let threads = rayon::current_num_threads();
        for n in 0..out_shape.n {
            let x = input.slice(s![n, .., .., ..]);
            let x = x.as_slice().expect("standard layout");
            let mut y = out.slice_mut(s![n, .., .., ..]);
            let y = y.as_slice_mut().expect("standard layout");
            if let Some(b) = &self.bias {
                for (co, plane) in y.chunks_mut(oh * ow).enumerate() {
                    plane.fill(b[co]);
                }
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
                        self.bias.is_some(),
                        self.weight.as_ptr(),
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
                        gemm::Parallelism::Rayon(threads),
                    );
                }
            }
        }
        if s.relu {
            out.par_mapv_inplace(|v| if v < 0.0 { 0.0 } else { v });
        }
        Ok(out)
    }
}

/// Fills `col` (k rows x rows*ow columns) with the input patches of output rows `r0..r0+rows`.
#[allow(clippy::too_many_arguments)]
fn im2col(
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
    for ci in 0..s.in_channels {
        let plane = &x[ci * ih * iw..(ci + 1) * ih * iw];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * cols..][..cols];
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
    }
}

/// Convolution on the CPU's fast path (prepares the weights, then runs once).
pub fn conv2d(
    input: ArrayView4<f32>,
    spec: &Conv2d,
    weight: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
) -> Result<Array4<f32>> {
    CpuConv2d::new(*spec, weight, bias)?.forward(input)
}
