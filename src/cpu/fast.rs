//! The fast CPU path.
//!
//! On x86-64 CPUs with AVX-512 a convolution with horizontal stride 1 runs as a direct,
//! register-blocked convolution over a zero-padded copy of the input: each micro-kernel call
//! computes a tile of up to [`MAX_MR`] output channels by 16 or 32 consecutive output pixels
//! (of one row, or of the output laid out at the padded input's row pitch when rows are narrow),
//! accumulating every input channel and kernel tap in registers (weights pre-packed at
//! [`CpuConv2d::new`], bias and ReLU fused into the store). Dilation only changes the offsets
//! of the taps, and taps that fall wholly into the padding are skipped. Work is cut into bands
//! of output rows, groups of output channels and cache-sized chunks of input channels, and
//! spread over the rayon thread pool. Elsewhere (no AVX-512, or horizontal stride above 1) the path falls
//! back to im2col over bands of output rows plus the `gemm` crate's multi-threaded SGEMM.
//!
//! Also here: multi-threaded [`max_pool2d`] and [`relu_inplace`]. Everything is checked against
//! [`super::reference`].

use std::sync::Mutex;

use ndarray::{Array4, ArrayView1, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::spec::{Conv2d, MaxPool2d, Shape, check_conv_params, check_deconv_weight, shape_of};

/// Most f32 elements of im2col scratch per band (64 MiB) on the fallback path.
const SCRATCH_ELEMS: usize = 16 << 20;

/// Most output channels per micro-kernel tile of the direct path.
pub const MAX_MR: usize = 14;

/// How the layer runs.
enum Method {
    /// im2col + SGEMM; weights as an `out x (in*kh*kw)` matrix.
    Gemm { weight: Vec<f32> },
    /// Direct AVX-512 convolution; weights packed per block of output channels as
    /// `[in][kh*kw][block]`, blocks stored one after the other.
    #[cfg(target_arch = "x86_64")]
    Direct {
        packed: Vec<f32>,
        /// `(first output channel, channels in the block)`.
        blocks: Vec<(usize, usize)>,
    },
}

/// A convolution layer prepared for the CPU: weights packed for the chosen method, plus a
/// reusable scratch buffer for the padded input.
///
/// The layer is `Send + Sync`; concurrent calls on one layer take turns on the scratch buffer
/// (each call itself uses every rayon thread).
pub struct CpuConv2d {
    spec: Conv2d,
    method: Method,
    bias: Option<Vec<f32>>,
    /// Padded input and, in the flattened layout, the padded-width output.
    scratch: Mutex<[Vec<f32>; 2]>,
}

impl CpuConv2d {
    /// Validates the weights `[out, in, kh, kw]` and bias and packs them for the fastest method
    /// this CPU supports.
    pub fn new(
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Result<Self> {
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        let weight = weight.as_standard_layout();
        let flat = weight.as_slice().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "weights are not contiguous".into(),
        })?;
        let method = Self::choose(&spec, flat);
        Ok(Self {
            spec,
            method,
            bias: bias.map(|b| b.to_vec()),
            scratch: Mutex::new([Vec::new(), Vec::new()]),
        })
    }

    #[cfg(target_arch = "x86_64")]
    fn choose(spec: &Conv2d, weight: &[f32]) -> Method {
        if spec.stride.1 == 1 && std::is_x86_feature_detected!("avx512f") {
            let blocks = split_blocks(spec.out_channels, MAX_MR);
            let taps = spec.kernel.0 * spec.kernel.1;
            let k = spec.in_channels * taps;
            let mut packed = Vec::with_capacity(weight.len());
            for &(c0, mr) in &blocks {
                for kk in 0..k {
                    for m in 0..mr {
                        packed.push(weight[(c0 + m) * k + kk]);
                    }
                }
            }
            return Method::Direct { packed, blocks };
        }
        Method::Gemm {
            weight: weight.to_vec(),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn choose(_spec: &Conv2d, weight: &[f32]) -> Method {
        Method::Gemm {
            weight: weight.to_vec(),
        }
    }

    /// The layer's spec.
    pub fn spec(&self) -> &Conv2d {
        &self.spec
    }

    /// Whether this layer runs on the direct AVX-512 kernel (else im2col + SGEMM).
    pub fn is_direct(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.method, Method::Direct { .. }) {
            return true;
        }
        false
    }

    /// Output shape for an input shape (errors as [`Conv2d::output_shape`]).
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "conv2d")
    }

    /// Runs the layer on an NCHW input.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        let out_shape = self.output_shape(shape_of(&input))?;
        // Every element is written by the kernels, so uninitialised memory would do; zeros keep
        // this safe at the cost of one pass of page faults.
        let mut out = Array4::<f32>::zeros(out_shape.dims());
        self.forward_into(input, &mut out)?;
        Ok(out)
    }

    /// Runs the layer on an NCHW input into `output`, which must already have the output shape
    /// (reuse it across calls to avoid allocating).
    pub fn forward_into(&self, input: ArrayView4<f32>, output: &mut Array4<f32>) -> Result<()> {
        let out_shape = self.output_shape(shape_of(&input))?;
        if output.shape() != out_shape.dims() {
            return Err(Error::ShapeMismatch {
                context: "conv2d".into(),
                left_name: "output",
                left: output.shape().to_vec(),
                right_name: "expected output",
                right: out_shape.dims().to_vec(),
            });
        }
        if !output.is_standard_layout() {
            let mut tmp = Array4::<f32>::zeros(out_shape.dims());
            self.forward_into(input, &mut tmp)?;
            output.assign(&tmp);
            return Ok(());
        }
        let input = input.as_standard_layout();
        let x = input.as_slice().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "input is not contiguous".into(),
        })?;
        let in_shape = shape_of(&input.view());
        let y = output.as_slice_mut().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "output is not contiguous".into(),
        })?;
        // A poisoned lock only means another call panicked mid-way; the scratch is rewritten
        // before use, so it is still fine to take.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        match &self.method {
            Method::Gemm { weight } => self.forward_gemm(weight, x, in_shape, out_shape, y),
            #[cfg(target_arch = "x86_64")]
            Method::Direct { packed, blocks } => direct::forward(
                &self.spec,
                packed,
                blocks,
                self.bias.as_deref(),
                x,
                in_shape,
                out_shape,
                y,
                &mut scratch,
            ),
        }
        Ok(())
    }

    fn forward_gemm(&self, weight: &[f32], x: &[f32], is: Shape, os: Shape, y: &mut [f32]) {
        let s = &self.spec;
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
        let threads = rayon::current_num_threads();
        for n in 0..os.n {
            let x = &x[n * c_in * ih * iw..(n + 1) * c_in * ih * iw];
            let y = &mut y[n * m * oh * ow..(n + 1) * m * oh * ow];
            match &self.bias {
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
                        gemm::Parallelism::Rayon(threads),
                    );
                }
            }
        }
        if s.relu {
            relu_slice(y);
        }
    }
}

/// Splits `n` channels into the fewest blocks of at most `max` channels, sizes differing by at
/// most one.
fn split_blocks(n: usize, max: usize) -> Vec<(usize, usize)> {
    let count = n.div_ceil(max);
    let (base, extra) = (n / count, n % count);
    let mut start = 0;
    (0..count)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let b = (start, len);
            start += len;
            b
        })
        .collect()
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

/// The direct AVX-512 convolution.
#[cfg(target_arch = "x86_64")]
mod direct {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use crate::spec::{Conv2d, Shape};

    /// A raw pointer that may cross threads; every task writes a disjoint part of the output.
    #[derive(Clone, Copy)]
    struct SyncPtr(*mut f32);
    // SAFETY: tasks write disjoint elements (distinct output channels or rows).
    unsafe impl Send for SyncPtr {}
    unsafe impl Sync for SyncPtr {}

    impl SyncPtr {
        /// The pointer (a method, so closures capture the whole `Send` wrapper).
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    /// Arguments of one micro-kernel call.
    struct Tile<'a> {
        /// Input at (channel 0, first row of the window, first column of the tile).
        x: *const f32,
        /// Elements between input channel planes.
        x_plane: usize,
        /// Packed weights of the block.
        w: *const f32,
        /// `(offset in x, offset in w)` of each tap that touches the input.
        taps: &'a [(usize, usize)],
        /// Input channels.
        cin: usize,
        /// Weight elements per input channel (`taps * mr`).
        w_ci: usize,
        /// Bias of the block's channels.
        bias: Option<*const f32>,
        /// Start from the values already in `out` (a later chunk of input channels).
        accumulate: bool,
        /// Apply the ReLU when storing (the last chunk of input channels).
        relu: bool,
        /// Output at (first channel of the block, row, first column of the tile).
        out: *mut f32,
        /// Elements between output channel planes.
        out_plane: usize,
        /// Lanes of the last vector to store.
        mask: __mmask16,
    }

    /// One tile: `MR` output channels by `NV` vectors of 16 pixels (the last one masked).
    ///
    /// # Safety
    /// AVX-512F must be available; every unmasked lane of every load and store must be in
    /// bounds.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const MR: usize, const NV: usize>(t: &Tile) {
        let zero = _mm512_setzero_ps();
        let mut acc = [[zero; NV]; MR];
        if t.accumulate {
            for (m, row) in acc.iter_mut().enumerate() {
                // SAFETY: the same lanes the store below writes.
                let o = unsafe { t.out.add(m * t.out_plane) };
                for (v, a) in row.iter_mut().enumerate() {
                    *a = unsafe {
                        if v + 1 == NV {
                            _mm512_maskz_loadu_ps(t.mask, o.add(16 * v))
                        } else {
                            _mm512_loadu_ps(o.add(16 * v))
                        }
                    };
                }
            }
        } else if let Some(b) = t.bias {
            for (m, row) in acc.iter_mut().enumerate() {
                // SAFETY: the bias has the block's MR channels.
                let bv = _mm512_set1_ps(unsafe { *b.add(m) });
                *row = [bv; NV];
            }
        }
        if let [(xo, wo)] = *t.taps {
            // One tap (1x1 kernels, or all but one tap in the padding): a tight loop.
            for ci in 0..t.cin {
                // SAFETY: as in the general loop below.
                let xp = unsafe { t.x.add(ci * t.x_plane + xo) };
                let wp = unsafe { t.w.add(ci * t.w_ci + wo) };
                let mut xv = [zero; NV];
                for (v, xr) in xv.iter_mut().enumerate() {
                    *xr = if v + 1 == NV {
                        unsafe { _mm512_maskz_loadu_ps(t.mask, xp.add(16 * v)) }
                    } else {
                        unsafe { _mm512_loadu_ps(xp.add(16 * v)) }
                    };
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(unsafe { *wp.add(m) });
                    for (a, xr) in row.iter_mut().zip(xv.iter()) {
                        *a = _mm512_fmadd_ps(wv, *xr, *a);
                    }
                }
            }
        } else {
            for ci in 0..t.cin {
                // SAFETY (whole loop): offsets stay inside the padded input and packed weights.
                let xc = unsafe { t.x.add(ci * t.x_plane) };
                let wc = unsafe { t.w.add(ci * t.w_ci) };
                for &(xo, wo) in t.taps {
                    let xp = unsafe { xc.add(xo) };
                    let mut xv = [zero; NV];
                    for (v, xr) in xv.iter_mut().enumerate() {
                        *xr = if v + 1 == NV {
                            unsafe { _mm512_maskz_loadu_ps(t.mask, xp.add(16 * v)) }
                        } else {
                            unsafe { _mm512_loadu_ps(xp.add(16 * v)) }
                        };
                    }
                    let wp = unsafe { wc.add(wo) };
                    for (m, row) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(unsafe { *wp.add(m) });
                        for (a, xr) in row.iter_mut().zip(xv.iter()) {
                            *a = _mm512_fmadd_ps(wv, *xr, *a);
                        }
                    }
                }
            }
        }
        for (m, row) in acc.iter().enumerate() {
            let o = unsafe { t.out.add(m * t.out_plane) };
            for (v, &a) in row.iter().enumerate() {
                // max(0, NaN) keeps the NaN: the second operand wins when either is NaN.
                let r = if t.relu { _mm512_max_ps(zero, a) } else { a };
                unsafe {
                    if v + 1 == NV {
                        _mm512_mask_storeu_ps(o.add(16 * v), t.mask, r);
                    } else {
                        _mm512_storeu_ps(o.add(16 * v), r);
                    }
                }
            }
        }
    }

    /// Calls `tile::<mr, nv>`.
    ///
    /// # Safety
    /// As [`tile`]; `mr` in `1..=MAX_MR`, `nv` in `1..=2`.
    unsafe fn dispatch(mr: usize, nv: usize, t: &Tile) {
        macro_rules! go {
            ($($m:literal)*) => {
                match (mr, nv) {
                    $(($m, 1) => unsafe { tile::<$m, 1>(t) },
                      ($m, 2) => unsafe { tile::<$m, 2>(t) },)*
                    _ => unreachable!("tile {mr}x{nv}"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }

    /// Geometry of the zero-padded input copy.
    struct Padded {
        /// Padded height and width.
        hp: usize,
        wp: usize,
        /// Elements between channel planes (an odd number of cache lines, so planes do not
        /// collide in the cache sets).
        plane: usize,
    }

    /// Copies `x` (NCHW) into `buf` with the spec's zero padding.
    fn pad_input(s: &Conv2d, x: &[f32], is: Shape, buf: &mut Vec<f32>) -> Padded {
        let p = s.padding;
        let (hp, wp) = (is.h + p.top + p.bottom, is.w + p.left + p.right);
        let mut lines = (hp * wp).div_ceil(16);
        if lines % 2 == 0 {
            lines += 1;
        }
        let plane = lines * 16;
        let total = is.n * is.c * plane;
        if buf.len() < total {
            buf.clear();
            buf.resize(total, 0.0);
        }
        let (ih, iw) = (is.h, is.w);
        buf[..total]
            .par_chunks_mut(plane)
            .zip(x.par_chunks(ih * iw))
            .for_each(|(dst, src)| {
                dst[..p.top * wp].fill(0.0);
                for r in 0..ih {
                    let row = &mut dst[(p.top + r) * wp..(p.top + r + 1) * wp];
                    row[..p.left].fill(0.0);
                    row[p.left..p.left + iw].copy_from_slice(&src[r * iw..(r + 1) * iw]);
                    row[p.left + iw..].fill(0.0);
                }
                dst[(p.top + ih) * wp..].fill(0.0);
            });
        Padded { hp, wp, plane }
    }

    /// Target bytes of padded input rows one task works on (kept in L2).
    const INPUT_BYTES: usize = 384 << 10;
    /// Target bytes of one block's packed weights for one chunk of input channels.
    const WEIGHT_BYTES: usize = 160 << 10;
    /// Target output pixels per band of rows.
    const BAND_PIXELS: usize = 512;

    /// One micro-kernel tile of output pixels.
    #[derive(Clone, Copy)]
    struct Span {
        /// Offset of the tile's first tap-(0,0) input element inside a padded channel plane.
        x: usize,
        /// Offset of the tile's first output element inside an output channel plane.
        out: usize,
        /// Pixels in the tile (1..=32).
        width: usize,
        /// First and last output row the tile covers.
        rows: (usize, usize),
        /// First output column, when the tile lies in one row (else taps are never skipped
        /// horizontally).
        col: Option<usize>,
    }

    /// How the output is cut into tiles.
    #[derive(Clone, Copy, Debug)]
    struct Plan {
        /// Tiles run along the output laid out at the padded input's pitch (else along rows).
        flat: bool,
        /// Pixels per tile (16 or 32).
        tile_w: usize,
    }

    /// Everything the tiling needs to know about a layer on one input size.
    struct Geom<'a> {
        s: &'a Conv2d,
        is: Shape,
        os: Shape,
        wp: usize,
    }

    impl Geom<'_> {
        /// Output row pitch of the tiles' target.
        fn pitch(&self, plan: Plan) -> usize {
            if plan.flat { self.wp } else { self.os.w }
        }

        /// The tiles of output rows `r0..r1`.
        fn spans(&self, plan: Plan, r0: usize, r1: usize, out: &mut Vec<Span>) {
            let (oh, ow, tw) = (self.os.h, self.os.w, plan.tile_w);
            out.clear();
            if plan.flat {
                let pitch = self.wp;
                let end = (r1 * pitch).min((oh - 1) * pitch + ow);
                for q in (r0 * pitch..end).step_by(tw) {
                    let width = tw.min(end - q);
                    let rows = (q / pitch, (q + width - 1) / pitch);
                    out.push(Span {
                        x: q,
                        out: q,
                        width,
                        rows,
                        col: None,
                    });
                }
            } else {
                for oy in r0..r1 {
                    for ox0 in (0..ow).step_by(tw) {
                        out.push(Span {
                            x: oy * self.s.stride.0 * self.wp + ox0,
                            out: oy * ow + ox0,
                            width: tw.min(ow - ox0),
                            rows: (oy, oy),
                            col: Some(ox0),
                        });
                    }
                }
            }
        }

        /// `(input offset, tap index)` of the taps of `sp` that touch the input (the others
        /// read only padding).
        fn taps(&self, sp: &Span, list: &mut Vec<(usize, usize)>) {
            let s = self.s;
            let (kh, kw) = s.kernel;
            let (dh, dw) = s.dilation;
            list.clear();
            for ky in 0..kh {
                let lo = sp.rows.0 * s.stride.0 + ky * dh;
                let hi = sp.rows.1 * s.stride.0 + ky * dh;
                if hi < s.padding.top || lo >= s.padding.top + self.is.h {
                    continue;
                }
                for kx in 0..kw {
                    if let Some(ox0) = sp.col {
                        let c = ox0 + kx * dw;
                        if c + sp.width <= s.padding.left || c >= s.padding.left + self.is.w {
                            continue;
                        }
                    }
                    list.push((ky * dh * self.wp + kx * dw, ky * kw + kx));
                }
            }
        }

        /// Vector multiply-adds per input and output channel of one image under `plan`, plus
        /// the copy out of the flat layout.
        fn cost(&self, plan: Plan) -> usize {
            let mut spans = Vec::new();
            let mut list = Vec::new();
            self.spans(plan, 0, self.os.h, &mut spans);
            let mut total = 0;
            for sp in &spans {
                self.taps(sp, &mut list);
                total += list.len() * sp.width.div_ceil(16);
            }
            if plan.flat {
                total += self.os.h * self.wp / 16 / self.s.in_channels.max(1) * 4;
            }
            total
        }

        /// The cheapest plan.
        fn plan(&self) -> Plan {
            let mut best = Plan {
                flat: false,
                tile_w: 32,
            };
            let mut best_cost = self.cost(best);
            for flat in [false, true] {
                if flat && self.s.stride != (1, 1) {
                    continue;
                }
                for tile_w in [32, 16] {
                    let plan = Plan { flat, tile_w };
                    let c = self.cost(plan);
                    // Prefer wide row tiles unless another plan saves over 2 %.
                    if c * 50 < best_cost * 49 {
                        best = plan;
                        best_cost = c;
                    }
                }
            }
            best
        }
    }

    /// The whole convolution: pads the input into `scratch[0]`, then runs every tile.
    ///
    /// Tiles are 16 or 32 consecutive output pixels of one row, or, when that wastes fewer
    /// vector lanes (narrow rows with little padding, stride 1), of the output laid out with
    /// the padded input's row pitch (the extra columns are computed into `scratch[1]` and
    /// dropped when copying out); the cheapest tiling counting skipped taps wins. Tasks are
    /// (image, band of output rows, group of output-channel blocks); within a task the input
    /// channels are split into chunks whose padded rows and weights stay in L2, and for each
    /// chunk every block of the group sweeps the band's tiles.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        s: &Conv2d,
        packed: &[f32],
        blocks: &[(usize, usize)],
        bias: Option<&[f32]>,
        x: &[f32],
        is: Shape,
        os: Shape,
        y: &mut [f32],
        scratch: &mut [Vec<f32>; 2],
    ) {
        let [xbuf, zbuf] = scratch;
        let pad = pad_input(s, x, is, xbuf);
        let xp: &[f32] = xbuf;
        debug_assert!(pad.hp >= (os.h - 1) * s.stride.0 + s.extent().0);
        let geom = Geom {
            s,
            is,
            os,
            wp: pad.wp,
        };
        let plan = geom.plan();
        let taps = s.kernel.0 * s.kernel.1;
        let cin = s.in_channels;
        let (oh, ow) = (os.h, os.w);
        let pitch = geom.pitch(plan);
        let z_len = os.n * s.out_channels * oh * pitch;
        let y_ptr = if plan.flat {
            if zbuf.len() < z_len {
                zbuf.clear();
                zbuf.resize(z_len, 0.0);
            }
            SyncPtr(zbuf.as_mut_ptr())
        } else {
            SyncPtr(y.as_mut_ptr())
        };
        let out_plane = oh * pitch;
        let threads = rayon::current_num_threads().max(1);
        // Tasks are (image, band of rows, group of output-channel blocks). Bands hold about
        // BAND_PIXELS outputs, so each block's weights, once in cache, serve many tiles; the
        // blocks are then split into groups until there are about 8 tasks per thread.
        let band_rows = BAND_PIXELS.div_ceil(ow).clamp(1, oh);
        let bands = oh.div_ceil(band_rows);
        let groups = (threads * 8).div_ceil(os.n * bands).clamp(1, blocks.len());
        // Distinct padded rows a band reads per input channel.
        let rows_read = (s.kernel.0 * band_rows).min((band_rows - 1) * s.stride.0 + s.extent().0);
        let max_mr = blocks.iter().map(|b| b.1).max().unwrap_or(1);
        let by_input = INPUT_BYTES / (rows_read * pad.wp * 4).max(1);
        let by_weight = WEIGHT_BYTES / (taps * max_mr * 4).max(1);
        let chunks = cin.div_ceil(by_input.min(by_weight).clamp(1, cin));
        (0..os.n * bands * groups).into_par_iter().for_each(|task| {
            let (n, band, group) = (
                task / (bands * groups),
                task / groups % bands,
                task % groups,
            );
            let my_blocks =
                &blocks[group * blocks.len() / groups..(group + 1) * blocks.len() / groups];
            let x_img = &xp[n * cin * pad.plane..];
            let (r0, r1) = (band * band_rows, ((band + 1) * band_rows).min(oh));
            let mut spans = Vec::new();
            geom.spans(plan, r0, r1, &mut spans);
            let tap_lists: Vec<Vec<(usize, usize)>> = spans
                .iter()
                .map(|sp| {
                    let mut list = Vec::with_capacity(taps);
                    geom.taps(sp, &mut list);
                    list
                })
                .collect();
            let mut scaled = Vec::with_capacity(taps);
            for chunk in 0..chunks {
                let (ci0, ci1) = (chunk * cin / chunks, (chunk + 1) * cin / chunks);
                for &(c0, mr) in my_blocks {
                    let w_blk = &packed[(c0 * cin + ci0 * mr) * taps..(c0 * cin + ci1 * mr) * taps];
                    for (sp, list) in spans.iter().zip(&tap_lists) {
                        scaled.clear();
                        scaled.extend(list.iter().map(|&(xo, t)| (xo, t * mr)));
                        let nv = sp.width.div_ceil(16);
                        let rem = sp.width - (nv - 1) * 16;
                        let mask: __mmask16 = if rem == 16 { 0xffff } else { (1u16 << rem) - 1 };
                        let out_off = (n * s.out_channels + c0) * out_plane + sp.out;
                        let t = Tile {
                            x: x_img[ci0 * pad.plane + sp.x..].as_ptr(),
                            x_plane: pad.plane,
                            w: w_blk.as_ptr(),
                            taps: &scaled,
                            cin: ci1 - ci0,
                            w_ci: taps * mr,
                            bias: bias.map(|b| b[c0..].as_ptr()),
                            accumulate: chunk > 0,
                            relu: s.relu && chunk + 1 == chunks,
                            // SAFETY: inside the output (channel c0 + m < out, tile in plane).
                            out: unsafe { y_ptr.get().add(out_off) },
                            out_plane,
                            mask,
                        };
                        // SAFETY: AVX-512F was detected when the method was chosen. Loads read
                        // channels ci0..ci1 at padded row <= (oh-1)*stride + (kh-1)*dh < hp and
                        // column <= ow-1 + (kw-1)*dw < wp (stride 1 horizontally), or in the
                        // flat layout at q + tap offset <= hp*wp - 1. Stores write this band's
                        // pixels of channels c0..c0+mr, which no other task writes.
                        unsafe { dispatch(mr, nv, &t) };
                    }
                }
            }
        });
        if plan.flat {
            // Drop the padding columns.
            let z: &[f32] = &zbuf[..z_len];
            y.par_chunks_mut(oh * ow)
                .zip(z.par_chunks(out_plane))
                .for_each(|(dst, src)| {
                    for (d, s) in dst.chunks_mut(ow).zip(src.chunks(pitch)) {
                        d.copy_from_slice(&s[..ow]);
                    }
                });
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

/// `max(x, 0)` on a slice, multi-threaded; NaN stays NaN.
fn relu_slice(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    });
}

/// Elementwise `max(x, 0)` in place, multi-threaded; NaN stays NaN (as
/// [`super::reference::relu`]).
pub fn relu_inplace(x: &mut Array4<f32>) {
    match x.as_slice_memory_order_mut() {
        Some(s) => relu_slice(s),
        None => x.par_mapv_inplace(|v| if v < 0.0 { 0.0 } else { v }),
    }
}

/// The larger of two values, NaN if either is NaN.
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// Max pooling, multi-threaded over channel planes; padded positions never win and a NaN in a
/// window gives NaN (as [`super::reference::max_pool2d`]).
pub fn max_pool2d(input: ArrayView4<f32>, spec: &MaxPool2d) -> Result<Array4<f32>> {
    let os = spec.output_shape(shape_of(&input), "max_pool2d")?;
    let input = input.as_standard_layout();
    let x = input.as_slice().ok_or_else(|| Error::InvalidSpec {
        context: "max_pool2d".into(),
        reason: "input is not contiguous".into(),
    })?;
    let (ih, iw) = (input.dim().2, input.dim().3);
    let (oh, ow) = (os.h, os.w);
    let (kh, kw) = spec.kernel;
    let (sh, sw) = spec.stride;
    let (pt, pl) = (spec.padding.top, spec.padding.left);
    // Clamped input ranges of each output column / row (never empty: padding < kernel and the
    // last window starts inside the input or the near padding).
    let range = |o: usize, s: usize, p: usize, k: usize, size: usize| {
        let start = (o * s).saturating_sub(p);
        let end = (o * s + k).saturating_sub(p).min(size);
        (start, end)
    };
    let cols: Vec<(usize, usize)> = (0..ow).map(|ox| range(ox, sw, pl, kw, iw)).collect();
    let mut out = Array4::<f32>::zeros(os.dims());
    let y = out.as_slice_mut().ok_or_else(|| Error::InvalidSpec {
        context: "max_pool2d".into(),
        reason: "output is not contiguous".into(),
    })?;
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(ih * iw))
        .for_each(|(yp, xp)| {
            // Per output row: the maxima down the window's rows (contiguous, vectorised), then
            // across each window's columns of that one row.
            let mut vmax = vec![0f32; iw];
            for oy in 0..oh {
                let (a, b) = range(oy, sh, pt, kh, ih);
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
    Ok(out)
}

/// Softmax over channels at every pixel, multi-threaded, in f32 (same formula as the
/// reference: `exp(x - max) / sum`, so NaN and infinities behave the same way).
pub fn softmax(input: ArrayView4<f32>) -> Array4<f32> {
    let input = input.as_standard_layout();
    let (n, c, h, w) = input.dim();
    let plane = h * w;
    let x = input.as_slice().unwrap_or(&[]);
    let mut y = vec![0f32; x.len()];
    const CHUNK: usize = 4096;
    for b in 0..n {
        let xi = &x[b * c * plane..(b + 1) * c * plane];
        let yi = &mut y[b * c * plane..(b + 1) * c * plane];
        let mut m = vec![f32::NEG_INFINITY; plane];
        m.par_chunks_mut(CHUNK).enumerate().for_each(|(i, m)| {
            for k in 0..c {
                let row = &xi[k * plane + i * CHUNK..][..m.len()];
                for (m, &v) in m.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
        });
        yi.par_chunks_mut(plane)
            .zip(xi.par_chunks(plane))
            .for_each(|(y, x)| {
                for ((y, &x), &m) in y.iter_mut().zip(x).zip(&m) {
                    *y = (x - m).exp();
                }
            });
        let mut sum = vec![0f32; plane];
        {
            let yr: &[f32] = yi;
            sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, s)| {
                for k in 0..c {
                    let row = &yr[k * plane + i * CHUNK..][..s.len()];
                    for (s, &v) in s.iter_mut().zip(row) {
                        *s += v;
                    }
                }
            });
        }
        yi.par_chunks_mut(plane).for_each(|y| {
            for (y, &s) in y.iter_mut().zip(&sum) {
                *y /= s;
            }
        });
    }
    Array4::from_shape_vec((n, c, h, w), y).unwrap_or_else(|_| Array4::zeros((n, c, h, w)))
}

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
    Array4::from_shape_vec(out.dims(), y).map_err(|e| Error::InvalidSpec {
        context: "deconv2d".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_channels_evenly() {
        for n in 1..100 {
            let b = split_blocks(n, MAX_MR);
            assert_eq!(b.iter().map(|&(_, l)| l).sum::<usize>(), n);
            assert!(b.iter().all(|&(_, l)| (1..=MAX_MR).contains(&l)));
            assert_eq!(b.len(), n.div_ceil(MAX_MR));
            for w in b.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0);
            }
        }
    }
}
