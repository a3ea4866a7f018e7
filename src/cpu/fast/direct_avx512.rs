//! The direct AVX-512 convolution: register-blocked micro-kernels over a zero-padded copy of
//! the input, weights pre-packed per block of output channels, bias and ReLU fused into the
//! store. In f32 (`vfmadd`), or in bf16 (`vdpbf16ps`, AVX-512 BF16) with the input and the
//! weights packed as pairs of channels per `u32`; the tiling is the same for both
//! ([`Element`]).

use std::arch::x86_64::*;

use crate::par::*;

use super::CpuInfo;

use crate::spec::{Conv2d, Shape};

/// A raw pointer that may cross threads; every task writes a disjoint part of the output.
#[derive(Clone, Copy)]
pub(super) struct SyncPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint elements (distinct output channels or rows).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Arguments of one micro-kernel call, over input elements `T`: `f32`, or `u32` holding the
/// bf16 values of two consecutive input channels (and likewise for the weights).
pub(super) struct Tile<'a, T = f32> {
    /// Input at (channel 0, first row of the window, first column of the tile).
    pub(super) x: *const T,
    /// Elements between input channel planes.
    pub(super) x_plane: usize,
    /// Packed weights of the block.
    pub(super) w: *const T,
    /// `(offset in x, offset in w)` of each tap that touches the input.
    pub(super) taps: &'a [(usize, usize)],
    /// Input channels (pairs of them for bf16).
    pub(super) cin: usize,
    /// Weight elements per input channel (`taps * mr`).
    pub(super) w_ci: usize,
    /// Bias of the block's channels.
    pub(super) bias: Option<*const f32>,
    /// Start from the values already in `out` (a later chunk of input channels).
    pub(super) accumulate: bool,
    /// Apply the ReLU when storing (the last chunk of input channels).
    pub(super) relu: bool,
    /// Output at (first channel of the block, row, first column of the tile).
    pub(super) out: *mut f32,
    /// Elements between output channel planes.
    pub(super) out_plane: usize,
    /// Lanes of the last vector to store.
    pub(super) mask: __mmask16,
}

/// The accumulators' starting values for tile `$t`: the output (a later chunk of input
/// channels), else the bias, else zeros. (A macro, so both micro-kernels inline it.)
macro_rules! tile_start {
    ($t:expr, $mr:expr, $nv:expr) => {{
        let t = $t;
        let mut acc = [[_mm512_setzero_ps(); $nv]; $mr];
        if t.accumulate {
            for (m, row) in acc.iter_mut().enumerate() {
                // SAFETY: the same lanes the store writes.
                let o = unsafe { t.out.add(m * t.out_plane) };
                for (v, a) in row.iter_mut().enumerate() {
                    *a = unsafe {
                        if v + 1 == $nv {
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
                *row = [bv; $nv];
            }
        }
        acc
    }};
}

/// Stores the accumulators `$acc` of tile `$t`, with the ReLU when asked for.
macro_rules! tile_store {
    ($t:expr, $acc:expr) => {{
        let t = $t;
        let zero = _mm512_setzero_ps();
        for (m, row) in $acc.iter().enumerate() {
            let o = unsafe { t.out.add(m * t.out_plane) };
            let nv = row.len();
            for (v, &a) in row.iter().enumerate() {
                // max(0, NaN) keeps the NaN: the second operand wins when either is NaN.
                let r = if t.relu { _mm512_max_ps(zero, a) } else { a };
                unsafe {
                    if v + 1 == nv {
                        _mm512_mask_storeu_ps(o.add(16 * v), t.mask, r);
                    } else {
                        _mm512_storeu_ps(o.add(16 * v), r);
                    }
                }
            }
        }
    }};
}

/// One tile: `MR` output channels by `NV` vectors of 16 pixels (the last one masked).
///
/// # Safety
/// AVX-512F must be available; every unmasked lane of every load and store must be in
/// bounds.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MR: usize, const NV: usize>(t: &Tile) {
    let zero = _mm512_setzero_ps();
    let mut acc = tile_start!(t, MR, NV);
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
    tile_store!(t, acc);
}

/// One bf16 tile: as [`tile`], over pairs of input channels whose bf16 values share a `u32`
/// (input and weights alike); each `vdpbf16ps` adds both channels' products to the f32
/// accumulators.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be available; bounds as for [`tile`].
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_bf16<const MR: usize, const NV: usize>(t: &Tile<u32>) {
    let zero = _mm512_setzero_si512();
    let mut acc = tile_start!(t, MR, NV);
    for cp in 0..t.cin {
        // SAFETY (whole loop): offsets stay inside the padded input and packed weights.
        let xc = unsafe { t.x.add(cp * t.x_plane) };
        let wc = unsafe { t.w.add(cp * t.w_ci) };
        for &(xo, wo) in t.taps {
            let xp = unsafe { xc.add(xo) };
            let mut xv = [zero; NV];
            for (v, xr) in xv.iter_mut().enumerate() {
                *xr = if v + 1 == NV {
                    unsafe { _mm512_maskz_loadu_epi32(t.mask, xp.add(16 * v).cast()) }
                } else {
                    unsafe { _mm512_loadu_si512(xp.add(16 * v).cast()) }
                };
            }
            let wp = unsafe { wc.add(wo) };
            for (m, row) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_epi32(unsafe { *wp.add(m) } as i32);
                for (a, xr) in row.iter_mut().zip(xv.iter()) {
                    // SAFETY: both are 512-bit vectors; the bits are 32 bf16 values.
                    let (wb, xb) = unsafe {
                        (
                            std::mem::transmute::<__m512i, __m512bh>(wv),
                            std::mem::transmute::<__m512i, __m512bh>(*xr),
                        )
                    };
                    *a = _mm512_dpbf16_ps(*a, wb, xb);
                }
            }
        }
    }
    tile_store!(t, acc);
}

/// Calls micro-kernel `$f::<mr, nv>` for `mr` in `1..=14` and `nv` in `1..=2`.
macro_rules! dispatch_to {
    ($f:ident, $mr:expr, $nv:expr, $t:expr) => {
        dispatch_to!(@ $f, $mr, $nv, $t; 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    };
    (@ $f:ident, $mr:expr, $nv:expr, $t:expr; $($m:literal)*) => {
        match ($mr, $nv) {
            $(($m, 1) => unsafe { $f::<$m, 1>($t) },
              ($m, 2) => unsafe { $f::<$m, 2>($t) },)*
            (mr, nv) => unreachable!("tile {mr}x{nv}"),
        }
    };
}

/// Elements a micro-kernel reads: `f32`, or `u32` pairs of bf16 channels.
pub(super) trait Element: bytemuck::Pod + Send + Sync {
    /// Input channels per element.
    const CHANNELS: usize;

    /// Calls the micro-kernel for `mr` output channels and `nv` vectors.
    ///
    /// # Safety
    /// As [`tile`]; `mr` in `1..=MAX_MR`, `nv` in `1..=2`; the CPU has the kernel's features.
    unsafe fn dispatch(mr: usize, nv: usize, t: &Tile<Self>);

    /// Copies `x` (NCHW) into `buf` as [`pad_input`] does, in this element type.
    fn pad(s: &Conv2d, x: &[f32], is: Shape, buf: &mut Vec<f32>) -> Padded;
}

impl Element for f32 {
    const CHANNELS: usize = 1;

    unsafe fn dispatch(mr: usize, nv: usize, t: &Tile) {
        unsafe { dispatch(mr, nv, t) }
    }

    fn pad(s: &Conv2d, x: &[f32], is: Shape, buf: &mut Vec<f32>) -> Padded {
        pad_input(s, x, is, buf)
    }
}

impl Element for u32 {
    const CHANNELS: usize = 2;

    unsafe fn dispatch(mr: usize, nv: usize, t: &Tile<u32>) {
        dispatch_to!(tile_bf16, mr, nv, t)
    }

    fn pad(s: &Conv2d, x: &[f32], is: Shape, buf: &mut Vec<f32>) -> Padded {
        pad_input_bf16(s, x, is, buf)
    }
}

/// Calls `tile::<mr, nv>`.
///
/// # Safety
/// As [`tile`]; `mr` in `1..=MAX_MR`, `nv` in `1..=2`.
pub(super) unsafe fn dispatch(mr: usize, nv: usize, t: &Tile) {
    dispatch_to!(tile, mr, nv, t)
}

/// Geometry of the zero-padded input copy.
pub(super) struct Padded {
    /// Padded height and width.
    pub(super) hp: usize,
    pub(super) wp: usize,
    /// Elements between channel planes (an odd number of cache lines, so planes do not
    /// collide in the cache sets).
    pub(super) plane: usize,
}

/// Copies `x` (NCHW) into `buf` with the spec's zero padding.
pub(super) fn pad_input(s: &Conv2d, x: &[f32], is: Shape, buf: &mut Vec<f32>) -> Padded {
    let pad = padded(s, is);
    pad_planes(s, x, is, (pad.hp, pad.wp), pad.plane, buf);
    pad
}

/// The padded geometry of an input of shape `is`.
fn padded(s: &Conv2d, is: Shape) -> Padded {
    let p = s.padding;
    let (hp, wp) = (is.h + p.top + p.bottom, is.w + p.left + p.right);
    let mut lines = (hp * wp).div_ceil(16);
    if lines % 2 == 0 {
        lines += 1;
    }
    Padded {
        hp,
        wp,
        plane: lines * 16,
    }
}

/// The bf16 bits of `v`, rounded to the nearest (ties to even; NaN stays NaN).
#[inline]
pub(super) fn bf16_bits(v: f32) -> u32 {
    u32::from(half::bf16::from_f32(v).to_bits())
}

/// Copies `x` (NCHW) into `buf` as [`pad_input`] does, in bf16 pairs: plane `k` of an image
/// holds, at each padded pixel, channel `2k` rounded to bf16 in the low half of a `u32` and
/// channel `2k + 1` in the high half (zero past the last channel).
pub(super) fn pad_input_bf16(s: &Conv2d, x: &[f32], is: Shape, buf: &mut Vec<f32>) -> Padded {
    let pad = padded(s, is);
    let (pt, pl) = (s.padding.top, s.padding.left);
    let (ih, iw, wp) = (is.h, is.w, pad.wp);
    let pairs = is.c.div_ceil(2);
    let total = is.n * pairs * pad.plane;
    if buf.len() < total {
        buf.clear();
        buf.resize(total, 0.0);
    }
    let out: &mut [u32] = bytemuck::cast_slice_mut(&mut buf[..total]);
    out.par_chunks_mut(pad.plane)
        .enumerate()
        .for_each(|(i, dst)| {
            let (n, k) = (i / pairs, i % pairs);
            let plane = |c: usize| &x[(n * is.c + c) * ih * iw..(n * is.c + c + 1) * ih * iw];
            let lo = plane(2 * k);
            let hi = (2 * k + 1 < is.c).then(|| plane(2 * k + 1));
            fill_padded(dst, (pt, pl), (ih, iw), wp, |r, row| {
                let lo = &lo[r * iw..(r + 1) * iw];
                match hi {
                    Some(hi) => {
                        for ((d, &a), &b) in row.iter_mut().zip(lo).zip(&hi[r * iw..]) {
                            *d = bf16_bits(a) | bf16_bits(b) << 16;
                        }
                    }
                    None => {
                        for (d, &a) in row.iter_mut().zip(lo) {
                            *d = bf16_bits(a);
                        }
                    }
                }
            });
        });
    pad
}

/// Copies `x` (NCHW) into `buf`, one plane of `plane` values per image and channel, each an
/// `hp x wp` image with the spec's top and left padding and zeros everywhere else (at least
/// the spec's bottom and right padding). Returns whether every input value is finite.
pub(super) fn pad_planes(
    s: &Conv2d,
    x: &[f32],
    is: Shape,
    (hp, wp): (usize, usize),
    plane: usize,
    buf: &mut Vec<f32>,
) -> bool {
    debug_assert!(hp * wp <= plane && hp >= s.padding.top + is.h && wp >= s.padding.left + is.w);
    let total = is.n * is.c * plane;
    if buf.len() < total {
        buf.clear();
        buf.resize(total, 0.0);
    }
    let (pt, pl) = (s.padding.top, s.padding.left);
    let (ih, iw) = (is.h, is.w);
    buf[..total]
        .par_chunks_mut(plane)
        .zip(x.par_chunks(ih * iw))
        .map(|(dst, src)| {
            fill_padded(dst, (pt, pl), (ih, iw), wp, |r, row| {
                row.copy_from_slice(&src[r * iw..(r + 1) * iw]);
            });
            src.iter().fold(true, |ok, v| ok & v.is_finite())
        })
        // Counted (rayon's and std's `count` both visit every plane, where `all` would stop at
        // the first non-finite one and leave the rest unpadded).
        .filter(|finite| !finite)
        .count()
        == 0
}

/// Fills one padded plane `dst` (rows of `wp` values): zeros above, below, left and right of
/// the `ih x iw` image placed at `(pt, pl)`, whose row `r` `row(r, ..)` writes (`iw` values).
fn fill_padded<T: Copy + Default>(
    dst: &mut [T],
    (pt, pl): (usize, usize),
    (ih, iw): (usize, usize),
    wp: usize,
    mut row: impl FnMut(usize, &mut [T]),
) {
    let zero = T::default();
    dst[..pt * wp].fill(zero);
    for r in 0..ih {
        let line = &mut dst[(pt + r) * wp..(pt + r + 1) * wp];
        line[..pl].fill(zero);
        row(r, &mut line[pl..pl + iw]);
        line[pl + iw..].fill(zero);
    }
    dst[(pt + ih) * wp..].fill(zero);
}

/// Offset, inside an image's padded planes, of the tap-(0,0) input of each (input channel,
/// tap) pair `p = channel * kh * kw + tap`, for `pairs` pairs; the `pairs_pad - pairs` padding
/// pairs read the first pair's values (into rows that are dropped).
pub(super) fn pair_offsets(s: &Conv2d, pad: &Padded, pairs: usize, pairs_pad: usize) -> Vec<usize> {
    let taps = s.kernel.0 * s.kernel.1;
    let kw = s.kernel.1;
    let (dh, dw) = s.dilation;
    (0..pairs_pad)
        .map(|p| {
            if p < pairs {
                let (c, t) = (p / taps, p % taps);
                c * pad.plane + (t / kw) * dh * pad.wp + (t % kw) * dw
            } else {
                0
            }
        })
        .collect()
}

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
/// chunk every block of the group sweeps the band's tiles. `E` is the element the
/// micro-kernels read (`f32`, or `u32` pairs of bf16 channels, chunked in pairs).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<E: Element>(
    s: &Conv2d,
    packed: &[E],
    blocks: &[(usize, usize)],
    bias: Option<&[f32]>,
    x: &[f32],
    is: Shape,
    os: Shape,
    y: &mut [f32],
    scratch: &mut [Vec<f32>; 2],
) {
    let [xbuf, zbuf] = scratch;
    let pad = E::pad(s, x, is, xbuf);
    let xp: &[E] = bytemuck::cast_slice(&xbuf[..]);
    debug_assert!(pad.hp >= (os.h - 1) * s.stride.0 + s.extent().0);
    let geom = Geom {
        s,
        is,
        os,
        wp: pad.wp,
    };
    let plan = geom.plan();
    let taps = s.kernel.0 * s.kernel.1;
    // Input elements per pixel: channels, or pairs of them in bf16.
    let cin = s.in_channels.div_ceil(E::CHANNELS);
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
    let threads = current_num_threads().max(1);
    // Tasks are (image, band of rows, group of output-channel blocks). Bands hold about
    // BAND_PIXELS outputs, so each block's weights, once in cache, serve many tiles; the
    // blocks are then split into groups until there are about 8 tasks per thread.
    let band_rows = BAND_PIXELS.div_ceil(ow).clamp(1, oh);
    let bands = oh.div_ceil(band_rows);
    let groups = (threads * 8).div_ceil(os.n * bands).clamp(1, blocks.len());
    // Distinct padded rows a band reads per input channel.
    let rows_read = (s.kernel.0 * band_rows).min((band_rows - 1) * s.stride.0 + s.extent().0);
    let max_mr = blocks.iter().map(|b| b.1).max().unwrap_or(1);
    // Chunks of input channels whose padded rows and weights stay in the L2.
    let cpu = CpuInfo::get();
    let by_input = cpu.direct_input_bytes() / (rows_read * pad.wp * 4).max(1);
    let by_weight = cpu.direct_weight_bytes() / (taps * max_mr * 4).max(1);
    let chunks = cin.div_ceil(by_input.min(by_weight).clamp(1, cin));
    (0..os.n * bands * groups).into_par_iter().for_each(|task| {
        let (n, band, group) = (
            task / (bands * groups),
            task / groups % bands,
            task % groups,
        );
        let my_blocks = &blocks[group * blocks.len() / groups..(group + 1) * blocks.len() / groups];
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
                    // SAFETY: the element's features (AVX-512F, and AVX-512 BF16 for u32
                    // pairs) were detected when the method was chosen. Loads read
                    // channels (or pairs) ci0..ci1 at padded row <= (oh-1)*stride + (kh-1)*dh < hp and
                    // column <= ow-1 + (kw-1)*dw < wp (stride 1 horizontally), or in the
                    // flat layout at q + tap offset <= hp*wp - 1. Stores write this band's
                    // pixels of channels c0..c0+mr, which no other task writes.
                    unsafe { E::dispatch(mr, nv, &t) };
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
