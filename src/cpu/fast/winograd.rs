//! Winograd convolution F(m x m, 3 x 3) (Lavin & Gray, 2016) for stride-1 layers at any
//! dilation, on AVX-512.
//!
//! A dilation-`d` 3x3 convolution is `d^2` ordinary 3x3 convolutions on the grids of pixels
//! `d` apart, so a Winograd tile here is `m x m` outputs `d` apart (rows `r, r+d, ...` and
//! likewise columns) and its `(m+2) x (m+2)` input window is read `d` apart too: no copy into
//! subsampled images is needed. For each tile and input channel the window `d` is transformed
//! to `V = Bᵀ d B`; each of the `(m+2)^2` frequencies is then a matrix product
//! `M[oc][tile] = Σ_ic U[oc][ic] V[ic][tile]` with the weights transformed once,
//! `U = G g Gᵀ` (computed in f64); the outputs are `Y = Aᵀ M A`, with bias and ReLU fused
//! into their store. F(2x2, 3x3) does 16 products per 4 outputs where the direct method does
//! 36, F(4x4, 3x3) 36 per 16 where it does 144. Kernels larger than 3x3 are cut into 3x3
//! pieces (zero taps past the kernel) whose products add up: the sum then runs over pieces
//! times input channels (fc6: 9 x 512), added in runs of [`ROW_CHUNK`] to bound its rounding.
//!
//! Work is cut into blocks of [`TILE_BLOCK`] tiles of one image and chunks of about
//! [`OUT_CHUNK`] output channels. Each thread takes whole blocks (and, on small images, some
//! of their chunks): it transforms their input (16 tiles per vector), runs the products with
//! the direct convolution's register-blocked micro-kernel (a 1x1 convolution over the tiles),
//! and transforms back chunk by chunk, so the block's transformed data stays in its core's
//! caches.
//!
//! Winograd's transforms mix every value of a window, so one infinite input would turn the
//! whole tile into NaN: inputs with a NaN or an infinity are computed by the direct method
//! instead (the caller runs it when [`forward`] declines), which propagates them exactly as
//! the reference does; so are inputs with fewer than [`MIN_TILES`] tiles, where the larger
//! transformed weights would cost more to stream than the arithmetic saves.

use std::arch::x86_64::*;

use crate::par::*;

use super::direct_avx512::{SyncPtr, Tile, dispatch, pad_planes};
use super::pool::nan_max;
use super::split_blocks;
use crate::spec::{Conv2d, Shape};

/// Output tile of a Winograd scheme for 3x3 kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// F(2x2, 3x3): 2x2 outputs from 4x4 inputs (2.25x fewer multiplications than direct).
    F2,
    /// F(4x4, 3x3): 4x4 outputs from 6x6 inputs (4x fewer multiplications than direct).
    F4,
}

impl WinogradTile {
    /// Outputs along a tile edge.
    pub const fn m(self) -> usize {
        match self {
            Self::F2 => 2,
            Self::F4 => 4,
        }
    }

    /// Inputs along a tile edge (`m + 2`).
    pub const fn alpha(self) -> usize {
        self.m() + 2
    }

    /// Multiplications of the direct method per multiplication here, on whole tiles.
    pub const fn reduction(self) -> f64 {
        let (m, a) = (self.m() as f64, self.alpha() as f64);
        9.0 * m * m / (a * a)
    }
}

/// Tiles per block of work (a multiple of 32, the micro-kernel's width).
const TILE_BLOCK: usize = 64;
/// Most output channels whose products a block keeps at once (in whole micro-kernel blocks).
const OUT_CHUNK: usize = 256;
/// Fewest tiles (over the batch) worth the transformed weights' traffic; fewer run direct.
const MIN_TILES: usize = 32;
/// Longest run of rows (input channels times pieces) the products sum in one go; longer sums
/// add runs (fc6: nine runs of 512).
const ROW_CHUNK: usize = 512;
/// Input channels the transform prefetches ahead.
const PREFETCH_AHEAD: usize = 2;
/// Most output channels per micro-kernel tile.
const MR: usize = 14;

/// F(2x2, 3x3) at the points 0, 1, -1 and infinity (Lavin & Gray): `G`, `Bᵀ`, `Aᵀ`.
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
#[cfg_attr(not(test), allow(dead_code))]
const BT2: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
#[cfg_attr(not(test), allow(dead_code))]
const AT2: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// F(4x4, 3x3) at the points 0, 1, -1, 1/2, -2 and infinity: `G`, `Bᵀ`, `Aᵀ` (Cook-Toom
/// construction). These points round less than the usual 0, ±1, ±2 (Barabasz et al., "Error
/// analysis and improving the accuracy of Winograd convolution", 2020): in
/// `tests/cpu_winograd.rs`, 3.2-5.6e-6 relative error with 128-512 input channels, where the
/// usual points gave 1.2e-5 at 256 (with an earlier version of this file), over the per-layer
/// tolerance of 1e-5.
const G4: [[f64; 3]; 6] = [
    [1.0, 0.0, 0.0],
    [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
    [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
    [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
    [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
    [0.0, 0.0, 1.0],
];
#[cfg_attr(not(test), allow(dead_code))]
const BT4: [[f32; 6]; 6] = [
    [1.0, -1.5, -2.0, 1.5, 1.0, 0.0],
    [0.0, -1.0, 0.5, 2.5, 1.0, 0.0],
    [0.0, 1.0, -2.5, 0.5, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 0.5, -1.0, -0.5, 1.0, 0.0],
    [0.0, 1.0, -1.5, -2.0, 1.5, 1.0],
];
#[cfg_attr(not(test), allow(dead_code))]
const AT4: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 0.5, -2.0, 0.0],
    [0.0, 1.0, 1.0, 0.25, 4.0, 0.0],
    [0.0, 1.0, -1.0, 0.125, -8.0, 1.0],
];

/// Transformed weights, packed for the micro-kernel: for each frequency `xi`, the output
/// channels in blocks `(c0, mr)`, each stored as `[rows][mr]` at `(xi * out + c0) * rows`,
/// where row `r` is input channel `r % in` of 3x3 piece `r / in`.
pub(super) struct Packed {
    pub(super) tile: WinogradTile,
    u: Vec<f32>,
    blocks: Vec<(usize, usize)>,
    /// 3x3 pieces of the kernel along each axis (`ceil(k / 3)`).
    pieces: (usize, usize),
}

impl Packed {
    /// Values of the transformed weights.
    pub(super) fn len(&self) -> usize {
        self.u.len()
    }

    /// Transforms `[out, in, kh, kw]` weights: kernels larger than 3x3 are cut into 3x3
    /// pieces (zero taps past the kernel), whose products add up over `pieces * in` rows.
    pub(super) fn new(s: &Conv2d, weight: &[f32], tile: WinogradTile) -> Self {
        let a = tile.alpha();
        let pieces = (s.kernel.0.div_ceil(3), s.kernel.1.div_ceil(3));
        let k = pieces.0 * pieces.1 * s.in_channels;
        let mut p = Self {
            tile,
            u: vec![0.0; a * a * s.out_channels * k],
            blocks: split_blocks(s.out_channels, MR),
            pieces,
        };
        p.set(s, weight);
        p
    }

    /// Re-transforms new weights of the same shape in place.
    pub(super) fn set(&mut self, s: &Conv2d, weight: &[f32]) {
        let (cin, cout) = (s.in_channels, s.out_channels);
        let (kh, kw) = s.kernel;
        let (ph, pw) = self.pieces;
        let rows = ph * pw * cin;
        let a = self.tile.alpha();
        let g: &[[f64; 3]] = match self.tile {
            WinogradTile::F2 => &G2,
            WinogradTile::F4 => &G4,
        };
        let blocks = &self.blocks;
        // Cut the packed array into (frequency, block) parts, gather each block's parts and
        // fill the blocks in parallel.
        let mut parts: Vec<(usize, usize, Vec<&mut [f32]>)> = blocks
            .iter()
            .map(|&(c0, mr)| (c0, mr, Vec::new()))
            .collect();
        let mut rest: &mut [f32] = &mut self.u;
        for _ in 0..a * a {
            for (bi, &(_, mr)) in blocks.iter().enumerate() {
                let (part, tail) = rest.split_at_mut(mr * rows);
                rest = tail;
                parts[bi].2.push(part);
            }
        }
        debug_assert!(rest.is_empty() && cout == blocks.iter().map(|b| b.1).sum::<usize>());
        parts.into_par_iter().for_each(|(c0, mr, mut dst)| {
            for m in 0..mr {
                let oc = c0 + m;
                for r in 0..rows {
                    let (piece, ic) = (r / cin, r % cin);
                    let (y0, x0) = (3 * (piece / pw), 3 * (piece % pw));
                    let w = &weight[(oc * cin + ic) * kh * kw..(oc * cin + ic + 1) * kh * kw];
                    // The piece's tap (i, j), zero past the kernel.
                    let tap = |i: usize, j: usize| {
                        let (y, x) = (y0 + i, x0 + j);
                        if y < kh && x < kw {
                            f64::from(w[y * kw + x])
                        } else {
                            0.0
                        }
                    };
                    // U = G w Gᵀ in f64: first t = G w (a x 3), then t Gᵀ.
                    let t: Vec<[f64; 3]> = g
                        .iter()
                        .map(|gr| std::array::from_fn(|j| (0..3).map(|i| gr[i] * tap(i, j)).sum()))
                        .collect();
                    for (fa, tr) in t.iter().enumerate() {
                        for (fb, gb) in g.iter().enumerate() {
                            let u: f64 = tr.iter().zip(gb).map(|(x, y)| x * y).sum();
                            dst[fa * a + fb][r * mr + m] = u as f32;
                        }
                    }
                }
            }
        });
    }
}

/// First outputs of the tiles along an axis of `len` outputs: tiles cover `m` outputs `d`
/// apart, `d` tiles interleaved in each run of `m * d` outputs.
fn starts(len: usize, d: usize, m: usize) -> Vec<usize> {
    let run = m * d;
    let mut v = Vec::with_capacity(len.div_ceil(m) + d);
    for g in 0..len.div_ceil(run) {
        for r in 0..d {
            let s = g * run + r;
            if s < len {
                v.push(s);
            }
        }
    }
    v
}

// The transforms, written out (a loop over a constant matrix is not folded by the compiler:
// it would test every coefficient at run time). Each is checked against its matrix above by
// the `transforms_match_their_matrices` test.

/// A scheme's input transform along one axis (`A` values), as a static function so it
/// inlines into the AVX-512 code.
trait InputTransform<const A: usize> {
    fn bt(d: [__m512; A]) -> [__m512; A];
}

/// A scheme's output transform along one axis (`A` values to `M` outputs).
trait OutputTransform<const A: usize, const M: usize> {
    fn at(m: [__m512; A]) -> [__m512; M];
}

/// F(2x2, 3x3).
struct F2;
/// F(4x4, 3x3).
struct F4;

impl InputTransform<4> for F2 {
    #[inline(always)]
    fn bt(d: [__m512; 4]) -> [__m512; 4] {
        bt2(d)
    }
}
impl OutputTransform<4, 2> for F2 {
    #[inline(always)]
    fn at(m: [__m512; 4]) -> [__m512; 2] {
        at2(m)
    }
}
impl InputTransform<6> for F4 {
    #[inline(always)]
    fn bt(d: [__m512; 6]) -> [__m512; 6] {
        bt4(d)
    }
}
impl OutputTransform<6, 4> for F4 {
    #[inline(always)]
    fn at(m: [__m512; 6]) -> [__m512; 4] {
        at4(m)
    }
}

/// `a * x + b` on vectors.
#[inline(always)]
fn fma(a: f32, x: __m512, b: __m512) -> __m512 {
    // SAFETY: AVX-512F is enabled in every caller.
    unsafe { _mm512_fmadd_ps(_mm512_set1_ps(a), x, b) }
}

#[inline(always)]
fn add(a: __m512, b: __m512) -> __m512 {
    // SAFETY: AVX-512F is enabled in every caller.
    unsafe { _mm512_add_ps(a, b) }
}

#[inline(always)]
fn sub(a: __m512, b: __m512) -> __m512 {
    // SAFETY: AVX-512F is enabled in every caller.
    unsafe { _mm512_sub_ps(a, b) }
}

/// `Bᵀ d` of F(2x2, 3x3) ([`BT2`]).
#[inline(always)]
fn bt2(d: [__m512; 4]) -> [__m512; 4] {
    [
        sub(d[0], d[2]),
        add(d[1], d[2]),
        sub(d[2], d[1]),
        sub(d[1], d[3]),
    ]
}

/// `Aᵀ m` of F(2x2, 3x3) ([`AT2`]).
#[inline(always)]
fn at2(m: [__m512; 4]) -> [__m512; 2] {
    [add(add(m[0], m[1]), m[2]), sub(sub(m[1], m[2]), m[3])]
}

/// `Bᵀ d` of F(4x4, 3x3) ([`BT4`]).
#[inline(always)]
fn bt4(d: [__m512; 6]) -> [__m512; 6] {
    [
        add(fma(1.5, d[3], fma(-2.0, d[2], fma(-1.5, d[1], d[0]))), d[4]),
        fma(2.5, d[3], fma(0.5, d[2], sub(d[4], d[1]))),
        fma(0.5, d[3], fma(-2.5, d[2], add(d[4], d[1]))),
        fma(2.0, sub(d[3], d[1]), sub(d[4], d[2])),
        fma(0.5, sub(d[1], d[3]), sub(d[4], d[2])),
        add(fma(1.5, d[4], fma(-2.0, d[3], fma(-1.5, d[2], d[1]))), d[5]),
    ]
}

/// `Aᵀ m` of F(4x4, 3x3) ([`AT4`]).
#[inline(always)]
fn at4(m: [__m512; 6]) -> [__m512; 4] {
    let p = add(m[1], m[2]);
    let q = sub(m[1], m[2]);
    [
        add(add(m[0], p), add(m[3], m[4])),
        fma(-2.0, m[4], fma(0.5, m[3], q)),
        fma(4.0, m[4], fma(0.25, m[3], p)),
        add(fma(-8.0, m[4], fma(0.125, m[3], q)), m[5]),
    ]
}

/// The geometry of one call.
struct Geom {
    cin: usize,
    /// Offset of each 3x3 piece's first tap in a padded plane.
    pieces: Vec<usize>,
    /// Rows of the products: pieces times input channels.
    k: usize,
    cout: usize,
    dh: usize,
    dw: usize,
    /// Padded input plane.
    wp: usize,
    plane: usize,
    oh: usize,
    ow: usize,
    rows: Vec<usize>,
    cols: Vec<usize>,
    /// `(height, width)` of the max-pooled output when a 2x2, stride-2 max pool is fused
    /// into the output transform (dilation 1: tiles start at even rows and columns).
    pool: Option<(usize, usize)>,
}

impl Geom {
    fn tiles(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    /// `(first output row, first output column)` of tile `t`.
    fn start(&self, t: usize) -> (usize, usize) {
        (
            self.rows[t / self.cols.len()],
            self.cols[t % self.cols.len()],
        )
    }
}

/// Runs the layer: pads the input into `scratch[0]`, then every block of tiles (each worker's
/// buffers in `scratch[1]`). Returns `false`, computing nothing, for the direct method to run
/// instead: when the input holds a NaN or an infinity, has fewer than [`MIN_TILES`] tiles, or
/// a padded plane exceeds 2^31 values (beyond the gathers' 32-bit offsets).
///
/// With `pool` (the pooled output's height and width; the caller checked that the layer has
/// dilation 1 and the pool is 2x2 with stride 2 and no padding), `y` is the output of that
/// max pool, computed from each tile's outputs in registers: the convolution's own output is
/// never stored.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    s: &Conv2d,
    p: &Packed,
    bias: Option<&[f32]>,
    x: &[f32],
    is: Shape,
    os: Shape,
    y: &mut [f32],
    scratch: &mut [Vec<f32>; 2],
    pool: Option<(usize, usize)>,
) -> bool {
    let (m, a) = (p.tile.m(), p.tile.alpha());
    let (dh, dw) = s.dilation;
    let (oh, ow) = (os.h, os.w);
    // Few tiles would stream the (larger) transformed weights for little arithmetic.
    if os.n * oh.div_ceil(m) * ow.div_ceil(m) < MIN_TILES {
        return false;
    }
    // Windows of the last tiles' last pieces end at output + (3 (pieces - 1) + alpha - 1) * d
    // in padded coordinates.
    let (ph, pw) = p.pieces;
    let (hp, wp) = (
        oh + dh * (3 * (ph - 1) + a - 1),
        ow + dw * (3 * (pw - 1) + a - 1),
    );
    // Gathers index a padded plane with 32-bit offsets.
    if hp * wp > i32::MAX as usize {
        return false;
    }
    let [xbuf, wbuf] = scratch;
    if !pad_planes(s, x, is, (hp, wp), hp * wp, xbuf) {
        return false;
    }
    let pieces: Vec<usize> = (0..ph * pw)
        .map(|q| 3 * (q / pw) * dh * wp + 3 * (q % pw) * dw)
        .collect();
    let geom = Geom {
        cin: s.in_channels,
        k: pieces.len() * s.in_channels,
        pieces,
        cout: s.out_channels,
        dh,
        dw,
        wp,
        plane: hp * wp,
        oh,
        ow,
        rows: starts(oh, dh, m),
        cols: starts(ow, dw, m),
        pool,
    };
    debug_assert!(pool.is_none() || (dh, dw, m % 2) == (1, 1, 0));
    let xp: &[f32] = xbuf;
    let blocks_per_image = geom.tiles().div_ceil(TILE_BLOCK);
    let tile_jobs = os.n * blocks_per_image;
    // Output channels in chunks of whole micro-kernel blocks, so the products of a chunk stay
    // in cache for the output transform.
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for (i, &(c0, mr)) in p.blocks.iter().enumerate() {
        if i > start && c0 + mr - p.blocks[start].0 > OUT_CHUNK {
            chunks.push((start, i));
            start = i;
        }
    }
    chunks.push((start, p.blocks.len()));
    // With few blocks of tiles (small images), jobs also split the chunks between them, each
    // transforming its block's input again (a small cost next to the products).
    let threads = current_num_threads().max(1);
    let groups = (4 * threads).div_ceil(tile_jobs).clamp(1, chunks.len());
    let jobs = tile_jobs * groups;
    let workers = threads.min(jobs);
    // Each worker's transformed inputs and products, kept across calls in the scratch.
    let (v_len, m_len) = (
        a * a * geom.k * TILE_BLOCK,
        a * a * geom.cout.min(OUT_CHUNK + MR) * TILE_BLOCK,
    );
    let per_worker = v_len + m_len;
    if wbuf.len() < workers * per_worker {
        wbuf.clear();
        wbuf.resize(workers * per_worker, 0.0);
    }
    let y_ptr = SyncPtr(y.as_mut_ptr());
    wbuf[..workers * per_worker]
        .par_chunks_mut(per_worker)
        .enumerate()
        .for_each(|(w, buf)| {
            let (v, mbuf) = buf.split_at_mut(v_len);
            for job in (w..jobs).step_by(workers) {
                let (tj, grp) = (job / groups, job % groups);
                let (n, b) = (tj / blocks_per_image, tj % blocks_per_image);
                let my_chunks =
                    &chunks[grp * chunks.len() / groups..(grp + 1) * chunks.len() / groups];
                let t0 = b * TILE_BLOCK;
                let count = TILE_BLOCK.min(geom.tiles() - t0);
                let x_img = &xp[n * geom.cin * geom.plane..(n + 1) * geom.cin * geom.plane];
                // SAFETY: AVX-512F was detected when the method was chosen; see `block`.
                unsafe {
                    block(
                        &geom, p, my_chunks, bias, s.relu, x_img, t0, count, v, mbuf, y_ptr, n,
                    )
                };
            }
        });
    true
}

/// One block of `count` tiles from `t0` of image `n`, for the output channels of `chunks`
/// (ranges of `p.blocks`).
///
/// # Safety
/// AVX-512F must be available. `x_img` is the image's padded input (`cin` planes of
/// `geom.plane`); `v` and `mbuf` hold `alpha^2 * k * TILE_BLOCK` and
/// `alpha^2 * min(cout, OUT_CHUNK + MR) * TILE_BLOCK` values; `y` is the whole output, of which this call writes
/// only its tiles' outputs of image `n`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block(
    g: &Geom,
    p: &Packed,
    chunks: &[(usize, usize)],
    bias: Option<&[f32]>,
    relu: bool,
    x_img: &[f32],
    t0: usize,
    count: usize,
    v: &mut [f32],
    mbuf: &mut [f32],
    y: SyncPtr,
    n: usize,
) {
    match p.tile {
        WinogradTile::F2 => unsafe {
            input_transform::<4, F2>(g, x_img, t0, count, v);
            for &(b0, b1) in chunks {
                let blocks = &p.blocks[b0..b1];
                products(g, p, blocks, 16, count, v, mbuf);
                output_transform::<4, 2, F2>(g, blocks, bias, relu, t0, count, mbuf, y, n);
            }
        },
        WinogradTile::F4 => unsafe {
            input_transform::<6, F4>(g, x_img, t0, count, v);
            for &(b0, b1) in chunks {
                let blocks = &p.blocks[b0..b1];
                products(g, p, blocks, 36, count, v, mbuf);
                output_transform::<6, 4, F4>(g, blocks, bias, relu, t0, count, mbuf, y, n);
            }
        },
    }
}

/// `V[xi][ic][t] = (Bᵀ d B)[xi]` for the block's tiles, 16 at a time (lanes past `count`
/// repeat the block's last tile): each frequency's matrix is contiguous for the products.
#[inline(always)]
unsafe fn input_transform<const A: usize, S: InputTransform<A>>(
    g: &Geom,
    x_img: &[f32],
    t0: usize,
    count: usize,
    v: &mut [f32],
) {
    let (row_step, col_step) = (g.dh * g.wp, g.dw);
    // Window element (i, j) sits at this offset from the window's first element.
    let mut offsets = [[0i32; A]; A];
    for (i, row) in offsets.iter_mut().enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            *o = (i * row_step + j * col_step) as i32;
        }
    }
    for grp in 0..count.div_ceil(16) {
        let mut base = [0i32; 16];
        // The spans of the window's first row covered by runs of lanes in one tile row
        // (prefetched one channel ahead: gathers defeat the hardware prefetchers).
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(4);
        let mut row_of_span = usize::MAX;
        for (l, b) in base.iter_mut().enumerate() {
            let (r, c) = g.start(t0 + (grp * 16 + l).min(count - 1));
            let at = r * g.wp + c;
            *b = at as i32;
            let end = at + (A - 1) * col_step;
            match spans.last_mut() {
                Some(s) if r == row_of_span => s.1 = s.1.max(end),
                _ => {
                    spans.push((at, end));
                    row_of_span = r;
                }
            }
        }
        // SAFETY (whole loop): AVX-512F is enabled in the caller; gathers read
        // base + offset < hp * wp = plane (the padded plane covers every tile's window, and
        // `forward` checked the plane fits in i32); stores write 16 values at
        // (xi * k + r) * TILE_BLOCK + grp * 16 < v.len(); the window of piece r / cin lies in
        // the padded plane too (hp, wp cover the last pieces).
        unsafe {
            let base = _mm512_loadu_si512(base.as_ptr().cast());
            // Row r of the products is input channel r % cin of piece r / cin.
            let src = |r: usize| (r % g.cin) * g.plane + g.pieces[r / g.cin];
            for r in 0..g.k {
                let plane = x_img.as_ptr().add(src(r));
                if r + PREFETCH_AHEAD < g.k && spans.len() <= 4 {
                    let ahead = x_img.as_ptr().add(src(r + PREFETCH_AHEAD));
                    for i in 0..A {
                        for &(lo, hi) in &spans {
                            for at in (lo..=hi).step_by(16) {
                                _mm_prefetch::<_MM_HINT_T0>(ahead.add(at + i * row_step).cast());
                            }
                            _mm_prefetch::<_MM_HINT_T0>(ahead.add(hi + i * row_step).cast());
                        }
                    }
                }
                // Columns of the window transformed first: t[k][j] = Σ_i Bᵀ[k][i] d[i][j].
                let mut cols_t = [[_mm512_setzero_ps(); A]; A];
                for j in 0..A {
                    let mut d = [_mm512_setzero_ps(); A];
                    for (i, di) in d.iter_mut().enumerate() {
                        let idx = _mm512_add_epi32(base, _mm512_set1_epi32(offsets[i][j]));
                        *di = _mm512_i32gather_ps::<4>(idx, plane);
                    }
                    let t = S::bt(d);
                    for k in 0..A {
                        cols_t[k][j] = t[k];
                    }
                }
                let dst = v.as_mut_ptr().add(r * TILE_BLOCK + grp * 16);
                for (k, row) in cols_t.iter().enumerate() {
                    let t = S::bt(*row);
                    for (j, val) in t.iter().enumerate() {
                        _mm512_storeu_ps(dst.add((k * A + j) * g.k * TILE_BLOCK), *val);
                    }
                }
            }
        }
    }
}

/// `M[oc][xi] = Σ_ic U[xi][oc][ic] V[xi][ic]` for every frequency (each output channel's
/// frequencies stored together for the output transform), on the block's first
/// `ceil(count / 16) * 16` tiles.
#[inline(always)]
unsafe fn products(
    g: &Geom,
    p: &Packed,
    blocks: &[(usize, usize)],
    freqs: usize,
    count: usize,
    v: &[f32],
    mbuf: &mut [f32],
) {
    let vectors = count.div_ceil(16);
    let one_tap = [(0usize, 0usize)];
    let c_lo = blocks[0].0;
    // Sums longer than ROW_CHUNK rows are cut into runs: the first is summed in place, each
    // other into a small buffer then added, so rounding errors grow with a run's length, not
    // the whole sum's, and everything stays in the core's L1.
    let mut run = [0.0f32; MR * 32];
    for xi in 0..freqs {
        for &(c0, mr) in blocks {
            let w = &p.u[(xi * g.cout + c0) * g.k..(xi * g.cout + c0 + mr) * g.k];
            for vec0 in (0..vectors).step_by(2) {
                let nv = (vectors - vec0).min(2);
                let at = (c0 - c_lo) * freqs * TILE_BLOCK + xi * TILE_BLOCK + vec0 * 16;
                let out_plane = freqs * TILE_BLOCK;
                for r0 in (0..g.k).step_by(ROW_CHUNK) {
                    let r1 = (r0 + ROW_CHUNK).min(g.k);
                    let (out, plane) = if r0 == 0 {
                        (mbuf[at..].as_mut_ptr(), out_plane)
                    } else {
                        (run.as_mut_ptr(), 32)
                    };
                    let t = Tile {
                        x: v[(xi * g.k + r0) * TILE_BLOCK + vec0 * 16..].as_ptr(),
                        x_plane: TILE_BLOCK,
                        w: w[r0 * mr..].as_ptr(),
                        taps: &one_tap,
                        cin: r1 - r0,
                        w_ci: mr,
                        bias: None,
                        accumulate: false,
                        relu: false,
                        out,
                        out_plane: plane,
                        mask: 0xffff,
                    };
                    // SAFETY: reads rows r0..r1 (16 * nv values each) of frequency xi, inside
                    // v; mr * (r1 - r0) packed weights; writes mr rows of 16 * nv values at
                    // `at` (stride freqs * TILE_BLOCK) inside mbuf, or into `run`.
                    unsafe { dispatch(mr, nv, &t) };
                    if r0 > 0 {
                        for m in 0..mr {
                            let row = at + m * out_plane;
                            let dst = &mut mbuf[row..row + 16 * nv];
                            for (d, q) in dst.iter_mut().zip(&run[m * 32..]) {
                                *d += q;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for the block's tiles, plus bias and ReLU, stored into image `n`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_transform<const A: usize, const M: usize, S: OutputTransform<A, M>>(
    g: &Geom,
    blocks: &[(usize, usize)],
    bias: Option<&[f32]>,
    relu: bool,
    t0: usize,
    count: usize,
    mbuf: &[f32],
    y: SyncPtr,
    n: usize,
) {
    let zero = unsafe { _mm512_setzero_ps() };
    let mut out = [[[0.0f32; 16]; M]; M];
    let out_plane = g.oh * g.ow;
    for grp in 0..count.div_ceil(16) {
        let lanes = (count - grp * 16).min(16);
        // Output offset of each lane's tile, and whether all its m x m outputs are inside.
        let mut first = [0usize; 16];
        let mut whole = [false; 16];
        for l in 0..lanes {
            let (r, c) = g.start(t0 + grp * 16 + l);
            first[l] = r * g.ow + c;
            whole[l] = r + (M - 1) * g.dh < g.oh && c + (M - 1) * g.dw < g.ow;
        }
        let (c_lo, c_hi) = (
            blocks[0].0,
            blocks[blocks.len() - 1].0 + blocks[blocks.len() - 1].1,
        );
        for oc in c_lo..c_hi {
            // SAFETY (whole block): AVX-512F is enabled in the caller; loads read
            // ((oc - c_lo) * A*A + xi) * TILE_BLOCK + grp * 16 + 16 <= mbuf.len(); stores write this
            // tile's outputs inside channel oc of image n, which only this call writes.
            unsafe {
                let bv = bias.map_or(zero, |b| _mm512_set1_ps(b[oc]));
                let src = mbuf
                    .as_ptr()
                    .add((oc - c_lo) * A * A * TILE_BLOCK + grp * 16);
                // Columns first: s[i][b] = Σ_k Aᵀ[i][k] M[k][b].
                let mut s = [[zero; A]; M];
                for b in 0..A {
                    let mut col = [zero; A];
                    for (k, c) in col.iter_mut().enumerate() {
                        *c = _mm512_loadu_ps(src.add((k * A + b) * TILE_BLOCK));
                    }
                    for (si, ri) in s.iter_mut().zip(S::at(col)) {
                        si[b] = ri;
                    }
                }
                for (i, row) in s.iter().enumerate() {
                    let r = S::at(*row);
                    for (j, val) in r.iter().enumerate() {
                        let mut o = _mm512_add_ps(*val, bv);
                        if relu {
                            // max(0, NaN) keeps the NaN, as the other methods do.
                            o = _mm512_max_ps(zero, o);
                        }
                        _mm512_storeu_ps(out[i][j].as_mut_ptr(), o);
                    }
                }
                if let Some((ph, pw)) = g.pool {
                    pool_tiles::<M>(g, &out, &first[..lanes], (ph, pw), y, n * g.cout + oc);
                    continue;
                }
                let y_plane = y.get().add((n * g.cout + oc) * out_plane);
                for l in 0..lanes {
                    let dst = y_plane.add(first[l]);
                    if whole[l] {
                        for (i, row) in out.iter().enumerate() {
                            for (j, vals) in row.iter().enumerate() {
                                *dst.add(i * g.dh * g.ow + j * g.dw) = vals[l];
                            }
                        }
                    } else {
                        let (r0, c0) = (first[l] / g.ow, first[l] % g.ow);
                        for (i, row) in out.iter().enumerate() {
                            if r0 + i * g.dh >= g.oh {
                                break;
                            }
                            for (j, vals) in row.iter().enumerate() {
                                if c0 + j * g.dw >= g.ow {
                                    break;
                                }
                                *dst.add(i * g.dh * g.ow + j * g.dw) = vals[l];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 2x2, stride-2 max pool of the `m x m` outputs `out[i][j][lane]` of the tiles whose
/// first outputs are at `first` (`row * ow + column`, both even), stored into channel plane
/// `plane` of the pooled output `y` (`ph x pw` per plane). Windows are clipped at the output's
/// edges and reduced in the order of [`super::pool`]'s `max_pool2d_slices` (down the rows,
/// then across), so the values, NaN included, are the unfused pool's.
///
/// # Safety
/// `y` holds at least `(plane + 1) * ph * pw` values and no other thread writes these tiles'
/// pooled outputs.
#[inline(always)]
unsafe fn pool_tiles<const M: usize>(
    g: &Geom,
    out: &[[[f32; 16]; M]; M],
    first: &[usize],
    (ph, pw): (usize, usize),
    y: SyncPtr,
    plane: usize,
) {
    let dst = unsafe { y.get().add(plane * ph * pw) };
    for (l, &f) in first.iter().enumerate() {
        let (r0, c0) = (f / g.ow, f % g.ow);
        for pi in 0..M / 2 {
            let (r, pr) = (r0 + 2 * pi, r0 / 2 + pi);
            if r >= g.oh || pr >= ph {
                break;
            }
            let two_rows = r + 1 < g.oh;
            let down = |j: usize| {
                let a = out[2 * pi][j][l];
                if two_rows {
                    nan_max(a, out[2 * pi + 1][j][l])
                } else {
                    a
                }
            };
            for pj in 0..M / 2 {
                let (c, pc) = (c0 + 2 * pj, c0 / 2 + pj);
                if c >= g.ow || pc >= pw {
                    break;
                }
                let mut v = down(2 * pj);
                if c + 1 < g.ow {
                    v = nan_max(v, down(2 * pj + 1));
                }
                // SAFETY: pr < ph and pc < pw, inside the plane.
                unsafe { *dst.add(pr * pw + pc) = v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a written-out transform to unit vectors and compares with its matrix.
    fn check<const R: usize, const C: usize>(
        f: fn([__m512; C]) -> [__m512; R],
        mat: [[f32; C]; R],
    ) {
        for k in 0..C {
            // SAFETY: guarded by the AVX-512F check in the caller.
            let unit: [__m512; C] =
                std::array::from_fn(|i| unsafe { _mm512_set1_ps(if i == k { 1.0 } else { 0.0 }) });
            let out = f(unit);
            for (r, row) in mat.iter().enumerate() {
                let mut lanes = [0.0f32; 16];
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), out[r]) };
                assert!(
                    lanes.iter().all(|&v| v == row[k]),
                    "row {r} col {k}: {lanes:?}"
                );
            }
        }
    }

    #[test]
    fn transforms_match_their_matrices() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        check(bt2, BT2);
        check(at2, AT2);
        check(bt4, BT4);
        check(at4, AT4);
    }

    #[test]
    fn tiles_cover_every_output_once() {
        for len in 1..70 {
            for d in 1..20 {
                for m in [2, 4] {
                    let mut seen = vec![0; len];
                    for s in starts(len, d, m) {
                        for i in 0..m {
                            if s + i * d < len {
                                seen[s + i * d] += 1;
                            }
                        }
                    }
                    assert!(seen.iter().all(|&c| c == 1), "len {len} d {d} m {m}");
                }
            }
        }
    }
}
