//! The weight gradient of a convolution with AVX-512, without im2col.
//!
//! `dw[co, ci, ky, kx] = sum over images and output pixels of dy[co, p] * x[ci, tap(p)]` is a
//! matrix product over the pixels. Output channels run along the vector lanes: a job copies
//! a chunk of pixels of the output gradient, for its block of up to 64 output channels, into a
//! small pixel-major buffer (`[pixel][channel]`, kept in L2), then sweeps every (input
//! channel, tap) pair of the layer in tiles of 6 to 12 pairs. A tile keeps its up to 24
//! accumulators (channel vectors x pairs) in registers across the whole chunk; per pixel it
//! loads the block's channel vectors once and broadcasts one input value per pair from the
//! zero-padded input copy (the forward path's layout), so any kernel, dilation, padding and
//! stride is only a matter of where each pair reads. Images are padded a few at a time
//! (within the slice path's scratch budget), and each call's work is cut into (group of
//! images, block of output channels) jobs, each summing into its own partial gradient; the
//! partials are added in a fixed order, so results do not depend on scheduling.

use std::arch::x86_64::*;

use crate::par::*;

use super::direct_avx512::{pad_input, pair_offsets};
use super::split_blocks;
use crate::spec::{Conv2d, Shape};

/// Most channel vectors (of 16) per block of output channels.
const MAX_VECS: usize = 4;
/// Pairs per tile for blocks of 1, 2, 3 and 4 vectors (at most 24 accumulators, and at most
/// 12 pair pointers so they stay in general-purpose registers).
const PAIRS: [usize; 4] = [12, 12, 8, 6];
/// Pair lists are padded to a multiple of every tile's pair count.
const PAIR_ROUND: usize = 24;
/// Output pixels per chunk of the pixel-major gradient copy.
const CHUNK: usize = 256;

/// A run of consecutive output pixels of one row: (index in the chunk, offset of the first
/// pixel's tap-(0,0) input inside a padded channel plane, pixels).
type Segment = (usize, usize, usize);

/// Arguments of one tile.
struct Tile<'a> {
    /// The chunk's pixel-major output gradient (`stride` floats per pixel).
    dyt: *const f32,
    stride: usize,
    segments: &'a [Segment],
    /// Input elements between horizontally neighbouring output pixels (the stride).
    step: usize,
    /// Where each pair's input starts (padded plane of its channel, offset of its tap).
    xs: &'a [*const f32],
    /// The tile's partial sums: one row of `stride` floats per pair.
    part: *mut f32,
}

/// One tile of `MV` channel vectors by `NP` pairs over a chunk.
///
/// # Safety
/// AVX-512F must be available; `dyt` must hold `stride >= 16 * MV` floats for every pixel the
/// segments name, `part` `NP` rows of `stride` floats, `xs` `NP` pointers, each readable at
/// every offset `segment offset + k * step` for the segments' pixels.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MV: usize, const NP: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); MV]; NP];
    for (j, row) in acc.iter_mut().enumerate() {
        for (m, a) in row.iter_mut().enumerate() {
            // SAFETY: inside the tile's partial rows.
            *a = unsafe { _mm512_loadu_ps(t.part.add(j * t.stride + 16 * m)) };
        }
    }
    let xs: [*const f32; NP] = std::array::from_fn(|j| t.xs[j]);
    for &(p, x0, len) in t.segments {
        // SAFETY (whole loop): the pixels and input offsets the caller vouches for.
        let mut d = unsafe { t.dyt.add(p * t.stride) };
        let mut o = x0;
        for _ in 0..len {
            let mut dv = [_mm512_setzero_ps(); MV];
            for (m, v) in dv.iter_mut().enumerate() {
                *v = unsafe { _mm512_loadu_ps(d.add(16 * m)) };
            }
            for (row, x) in acc.iter_mut().zip(xs.iter()) {
                let b = _mm512_set1_ps(unsafe { *x.add(o) });
                for (a, v) in row.iter_mut().zip(dv.iter()) {
                    *a = _mm512_fmadd_ps(*v, b, *a);
                }
            }
            d = unsafe { d.add(t.stride) };
            o += t.step;
        }
    }
    for (j, row) in acc.iter().enumerate() {
        for (m, a) in row.iter().enumerate() {
            unsafe { _mm512_storeu_ps(t.part.add(j * t.stride + 16 * m), *a) };
        }
    }
}

/// Calls the tile for a block of `mv` vectors.
///
/// # Safety
/// As [`tile`], with `NP = PAIRS[mv - 1]`; `mv` in `1..=MAX_VECS`.
unsafe fn dispatch(mv: usize, t: &Tile) {
    // SAFETY: forwarded.
    unsafe {
        match mv {
            1 => tile::<1, 12>(t),
            2 => tile::<2, 12>(t),
            3 => tile::<3, 8>(t),
            4 => tile::<4, 6>(t),
            _ => unreachable!("weight-gradient block of {mv} vectors"),
        }
    }
}

/// Copies pixels `p0..p0 + len` of channels `c0..c0 + stride` of one image's output
/// gradient (`[channel][ohow]`, `co` channels) into `dyt` as `[pixel][stride]`, channels past
/// `co` as zeros: 16 x 16 blocks transposed in registers, the rest element by element.
#[allow(clippy::too_many_arguments)]
fn transpose_chunk(
    dy: &[f32],
    ohow: usize,
    co: usize,
    c0: usize,
    stride: usize,
    p0: usize,
    len: usize,
    dyt: &mut [f32],
) {
    for cb in (0..stride).step_by(16) {
        let full_channels = c0 + cb + 16 <= co;
        let mut i = 0;
        if full_channels {
            while i + 16 <= len {
                // SAFETY: AVX-512F was checked by the caller of `weight_grad`; the 16 rows
                // read `dy[(c0 + cb + r) * ohow + p0 + i..][..16]` inside the image (channels
                // below `co`, pixels below `p0 + len <= ohow`), and the 16 stores write
                // `dyt[(i + r) * stride + cb..][..16]` inside the chunk (`len * stride`).
                unsafe {
                    transpose16(
                        dy.as_ptr().add((c0 + cb) * ohow + p0 + i),
                        ohow,
                        dyt.as_mut_ptr().add(i * stride + cb),
                        stride,
                    )
                };
                i += 16;
            }
        }
        for c in cb..cb + 16 {
            let ch = c0 + c;
            for k in i..len {
                dyt[k * stride + c] = if ch < co { dy[ch * ohow + p0 + k] } else { 0.0 };
            }
        }
    }
}

/// Transposes a 16 x 16 block: row `r` of the source (`src + r * src_stride`, 16 floats)
/// becomes column `r` of the destination (`dst + k * dst_stride + r`).
///
/// # Safety
/// AVX-512F must be available; the 16 source rows and 16 destination rows of 16 floats must
/// be in bounds.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    // SAFETY: the caller vouches for the rows.
    let mut r: [__m512; 16] =
        std::array::from_fn(|k| unsafe { _mm512_loadu_ps(src.add(k * src_stride)) });
    let mut t = [_mm512_setzero_ps(); 16];
    // Pairs of rows interleaved: per 128-bit lane, (r0[0], r1[0], r0[1], r1[1]) ...
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // Groups of four rows: per 128-bit lane, one column of the four.
    for k in 0..4 {
        r[4 * k] = _mm512_shuffle_ps::<0x44>(t[4 * k], t[4 * k + 2]);
        r[4 * k + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * k], t[4 * k + 2]);
        r[4 * k + 2] = _mm512_shuffle_ps::<0x44>(t[4 * k + 1], t[4 * k + 3]);
        r[4 * k + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * k + 1], t[4 * k + 3]);
    }
    // 128-bit lanes across the groups, in two rounds.
    for k in 0..4 {
        t[k] = _mm512_shuffle_f32x4::<0x88>(r[k], r[k + 4]);
        t[k + 4] = _mm512_shuffle_f32x4::<0xDD>(r[k], r[k + 4]);
        t[k + 8] = _mm512_shuffle_f32x4::<0x88>(r[k + 8], r[k + 12]);
        t[k + 12] = _mm512_shuffle_f32x4::<0xDD>(r[k + 8], r[k + 12]);
    }
    for k in 0..8 {
        r[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[k + 8]);
        r[k + 8] = _mm512_shuffle_f32x4::<0xDD>(t[k], t[k + 8]);
    }
    for (k, v) in r.iter().enumerate() {
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(dst.add(k * dst_stride), *v) };
    }
}

/// A float buffer with a 64-byte aligned window of `len` elements.
struct Aligned {
    buf: Vec<f32>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0f32; len + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        Self { buf, start }
    }

    fn slice(&mut self, len: usize) -> &mut [f32] {
        &mut self.buf[self.start..self.start + len]
    }
}

/// `dw` (`[out, in, kh, kw]`, overwritten) from the layer's input `x` (shape `is`) and the
/// output gradient `dy` (shape `os`, after any ReLU mask). `pad_buf` and `partials` are
/// scratch, grown as needed; at most `budget` bytes of padded input at a time.
///
/// AVX-512F must be available (the caller checks).
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad(
    s: &Conv2d,
    x: &[f32],
    is: Shape,
    dy: &[f32],
    os: Shape,
    dw: &mut [f32],
    pad_buf: &mut Vec<f32>,
    partials: &mut Vec<f32>,
    budget: usize,
) {
    if s.out_channels <= 8 && s.stride.1 == 1 {
        weight_grad_dot(s, x, is, dy, os, dw, pad_buf, partials, budget);
    } else {
        weight_grad_lanes(s, x, is, dy, os, dw, pad_buf, partials, budget);
    }
}

/// [`weight_grad`] with the output channels along the vector lanes (16 or more channels, or
/// horizontal strides above 1).
#[allow(clippy::too_many_arguments)]
fn weight_grad_lanes(
    s: &Conv2d,
    x: &[f32],
    is: Shape,
    dy: &[f32],
    os: Shape,
    dw: &mut [f32],
    pad_buf: &mut Vec<f32>,
    partials: &mut Vec<f32>,
    budget: usize,
) {
    let (co, ci) = (s.out_channels, s.in_channels);
    let (kh, kw) = s.kernel;
    let (sh, sw) = s.stride;
    let taps = kh * kw;
    let pairs = ci * taps;
    let pairs_pad = pairs.div_ceil(PAIR_ROUND) * PAIR_ROUND;
    let vecs = co.div_ceil(16);
    let co_pad = vecs * 16;
    let blocks = split_blocks(vecs, MAX_VECS);
    // Images padded per call: as many as fit the scratch budget (at least one).
    let p = s.padding;
    let padded = ci * (is.h + p.top + p.bottom) * (is.w + p.left + p.right);
    let per_call = (budget / (4 * padded).max(1)).clamp(1, is.n);
    let threads = current_num_threads().max(1);
    let groups = (threads * 8).div_ceil(blocks.len()).clamp(1, per_call);
    let group_len = pairs_pad * co_pad;
    let total = groups * group_len;
    if partials.len() < total {
        partials.clear();
        partials.resize(total, 0.0);
    }
    partials[..total].fill(0.0);
    let ohow = os.h * os.w;
    let (x_len, dy_len) = (is.len() / is.n, co * ohow);
    for n0 in (0..is.n).step_by(per_call) {
        let n_call = per_call.min(is.n - n0);
        let chunk = Shape { n: n_call, ..is };
        let pad = pad_input(s, &x[n0 * x_len..(n0 + n_call) * x_len], chunk, pad_buf);
        let xp: &[f32] = pad_buf;
        let offsets = pair_offsets(s, &pad, pairs, pairs_pad);
        // Disjoint partial regions, one per (group, block), each `[pair][block lanes]`.
        let mut jobs = Vec::with_capacity(groups * blocks.len());
        let mut rest: &mut [f32] = &mut partials[..total];
        for g in 0..groups {
            for &(v0, nv) in &blocks {
                let (region, tail) = rest.split_at_mut(pairs_pad * nv * 16);
                jobs.push((g, v0, nv, region));
                rest = tail;
            }
        }
        let x_image = ci * pad.plane;
        let dy = &dy[n0 * dy_len..(n0 + n_call) * dy_len];
        jobs.into_par_iter().for_each(|(g, v0, nv, region)| {
            let stride = nv * 16;
            let np = PAIRS[nv - 1];
            let mut dyt = Aligned::new(CHUNK * stride);
            let dyt = dyt.slice(CHUNK * stride);
            let mut segments: Vec<Segment> = Vec::new();
            let mut xs: Vec<*const f32> = vec![std::ptr::null(); np];
            let (i0, i1) = (g * n_call / groups, (g + 1) * n_call / groups);
            for n in i0..i1 {
                let dy_img = &dy[n * co * ohow..(n + 1) * co * ohow];
                let x_img = &xp[n * x_image..(n + 1) * x_image];
                for p0 in (0..ohow).step_by(CHUNK) {
                    let p1 = (p0 + CHUNK).min(ohow);
                    let len = p1 - p0;
                    transpose_chunk(dy_img, ohow, co, v0 * 16, stride, p0, len, dyt);
                    segments.clear();
                    let mut p = p0;
                    while p < p1 {
                        let (oy, ox) = (p / os.w, p % os.w);
                        let run = (os.w - ox).min(p1 - p);
                        segments.push((p - p0, oy * sh * pad.wp + ox * sw, run));
                        p += run;
                    }
                    for (t, part) in region.chunks_exact_mut(np * stride).enumerate() {
                        for (j, x) in xs.iter_mut().enumerate() {
                            *x = x_img[offsets[t * np + j]..].as_ptr();
                        }
                        let tile = Tile {
                            dyt: dyt.as_ptr(),
                            stride,
                            segments: &segments,
                            step: sw,
                            xs: &xs,
                            part: part.as_mut_ptr(),
                        };
                        // SAFETY: AVX-512F was checked by the caller. `dyt` holds `len` pixels
                        // of `stride` floats; `part` is `np` rows of the region; each pair
                        // reads its channel's padded plane at row `oy * sh + ky * dh < hp`
                        // and column `ox * sw + kx * dw < wp` for the chunk's output pixels
                        // (the padded input covers every window), inside this image's planes.
                        unsafe { dispatch(nv, &tile) };
                    }
                }
            }
        });
    }
    // dw[co][pair] = sum over groups of the partials, in group order.
    let parts: &[f32] = &partials[..total];
    let block_of: Vec<(usize, usize)> = (0..vecs)
        .map(|v| {
            let &(v0, nv) = blocks
                .iter()
                .find(|&&(v0, nv)| v >= v0 && v < v0 + nv)
                .unwrap_or(&(0, 1));
            (v0, nv)
        })
        .collect();
    dw[..co * pairs]
        .par_chunks_mut(pairs)
        .enumerate()
        .for_each(|(c, row)| {
            let (v0, nv) = block_of[c / 16];
            let stride = nv * 16;
            let lane = c - v0 * 16;
            for (p, out) in row.iter_mut().enumerate() {
                let mut sum = 0f32;
                for g in 0..groups {
                    sum += parts[g * group_len + pairs_pad * v0 * 16 + p * stride + lane];
                }
                *out = sum;
            }
        });
}

/// Arguments of one tile of the pixel-vectorised weight gradient.
struct DotTile<'a> {
    /// Each channel's output gradient plane (of this image).
    dy: &'a [*const f32],
    /// Each pair's input (its channel's padded plane at its tap's offset).
    xs: &'a [*const f32],
    /// Output rows `r0..r1`, `ow` pixels each.
    rows: (usize, usize),
    ow: usize,
    /// Input elements between consecutive output rows (vertical stride times the pitch).
    row_step: usize,
    /// The tile's partial sums: per pair, per channel, 16 lanes.
    part: *mut f32,
}

/// One tile of `C` output channels by `NP` pairs, vectorised over the pixels of each row.
///
/// # Safety
/// AVX-512F must be available; every channel pointer readable at `oy * ow + ox` and every pair
/// pointer at `oy * row_step + ox` for the rows and columns of the tile; `part` holds
/// `NP * C * 16` floats.
#[target_feature(enable = "avx512f")]
unsafe fn dot_tile<const C: usize, const NP: usize>(t: &DotTile) {
    let mut acc = [[_mm512_setzero_ps(); NP]; C];
    for (c, row) in acc.iter_mut().enumerate() {
        for (j, a) in row.iter_mut().enumerate() {
            // SAFETY: inside the tile's partial sums.
            *a = unsafe { _mm512_loadu_ps(t.part.add((j * C + c) * 16)) };
        }
    }
    let full = t.ow / 16 * 16;
    let tail: __mmask16 = ((1u32 << (t.ow - full)) - 1) as __mmask16;
    for oy in t.rows.0..t.rows.1 {
        // SAFETY (whole loop): the rows and columns the caller vouches for.
        let d: [*const f32; C] = std::array::from_fn(|c| unsafe { t.dy[c].add(oy * t.ow) });
        let x: [*const f32; NP] = std::array::from_fn(|j| unsafe { t.xs[j].add(oy * t.row_step) });
        let mut ox = 0;
        while ox < full {
            let dv: [__m512; C] = std::array::from_fn(|c| unsafe { _mm512_loadu_ps(d[c].add(ox)) });
            for (j, xp) in x.iter().enumerate() {
                let xv = unsafe { _mm512_loadu_ps(xp.add(ox)) };
                for (row, v) in acc.iter_mut().zip(dv.iter()) {
                    row[j] = _mm512_fmadd_ps(*v, xv, row[j]);
                }
            }
            ox += 16;
        }
        if tail != 0 {
            let dv: [__m512; C] =
                std::array::from_fn(|c| unsafe { _mm512_maskz_loadu_ps(tail, d[c].add(ox)) });
            for (j, xp) in x.iter().enumerate() {
                let xv = unsafe { _mm512_maskz_loadu_ps(tail, xp.add(ox)) };
                for (row, v) in acc.iter_mut().zip(dv.iter()) {
                    row[j] = _mm512_fmadd_ps(*v, xv, row[j]);
                }
            }
        }
    }
    for (c, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            unsafe { _mm512_storeu_ps(t.part.add((j * C + c) * 16), *a) };
        }
    }
}

/// Pairs per tile of the pixel-vectorised kernel for 1, 2, 4 and 8 channels.
fn dot_pairs(c: usize) -> usize {
    match c {
        1 | 2 => 12,
        4 => 6,
        _ => 3,
    }
}

/// Calls the pixel-vectorised tile for `c` (1, 2, 4 or 8) channels.
///
/// # Safety
/// As [`dot_tile`] with `NP = dot_pairs(c)`.
unsafe fn dot_dispatch(c: usize, t: &DotTile) {
    // SAFETY: forwarded.
    unsafe {
        match c {
            1 => dot_tile::<1, 12>(t),
            2 => dot_tile::<2, 12>(t),
            4 => dot_tile::<4, 6>(t),
            8 => dot_tile::<8, 3>(t),
            _ => unreachable!("weight-gradient tile of {c} channels"),
        }
    }
}

/// [`weight_grad`] for up to 8 output channels at horizontal stride 1, vectorised over the
/// pixels of each output row instead of the channels: a tile keeps `channels x pairs` vectors
/// of 16 partial sums (up to 24) in registers over a band of rows, loading one vector of the
/// output gradient per channel and one of the input per pair for every 16 pixels. Jobs are
/// (image, band of rows, the band's output gradient kept in L2), each with its own 16-lane
/// partial sums, added in a fixed order.
#[allow(clippy::too_many_arguments)]
fn weight_grad_dot(
    s: &Conv2d,
    x: &[f32],
    is: Shape,
    dy: &[f32],
    os: Shape,
    dw: &mut [f32],
    pad_buf: &mut Vec<f32>,
    partials: &mut Vec<f32>,
    budget: usize,
) {
    let (co, ci) = (s.out_channels, s.in_channels);
    let c_pad = co.next_power_of_two();
    let np = dot_pairs(c_pad);
    let (kh, kw) = s.kernel;
    let taps = kh * kw;
    let pairs = ci * taps;
    let pairs_pad = pairs.div_ceil(np) * np;
    let p = s.padding;
    let padded = ci * (is.h + p.top + p.bottom) * (is.w + p.left + p.right);
    let per_call = (budget / (4 * padded).max(1)).clamp(1, is.n);
    let threads = current_num_threads().max(1);
    // Bands of rows per image whose output gradient stays in L2 (about 128 KiB) while every
    // tile sweeps it, and at least about 4 jobs per thread.
    let band_rows = ((128 << 10) / (4 * c_pad * os.w).max(1)).max(1);
    let bands =
        os.h.div_ceil(band_rows)
            .max((threads * 4).div_ceil(per_call))
            .clamp(1, os.h);
    let job_len = pairs_pad * c_pad * 16;
    let total = per_call * bands * job_len;
    if partials.len() < total {
        partials.clear();
        partials.resize(total, 0.0);
    }
    partials[..total].fill(0.0);
    let ohow = os.h * os.w;
    let (x_len, dy_len) = (is.len() / is.n, co * ohow);
    for n0 in (0..is.n).step_by(per_call) {
        let n_call = per_call.min(is.n - n0);
        let chunk = Shape { n: n_call, ..is };
        let pad = pad_input(s, &x[n0 * x_len..(n0 + n_call) * x_len], chunk, pad_buf);
        let xp: &[f32] = pad_buf;
        let offsets = pair_offsets(s, &pad, pairs, pairs_pad);
        let dy = &dy[n0 * dy_len..(n0 + n_call) * dy_len];
        let x_image = ci * pad.plane;
        partials[..n_call * bands * job_len]
            .par_chunks_mut(job_len)
            .enumerate()
            .for_each(|(job, part)| {
                let (n, band) = (job / bands, job % bands);
                let rows = (band * os.h / bands, (band + 1) * os.h / bands);
                let x_img = &xp[n * x_image..(n + 1) * x_image];
                let dy_img = &dy[n * dy_len..(n + 1) * dy_len];
                // Channels past the last read channel 0 into sums that are dropped.
                let d: Vec<*const f32> = (0..c_pad)
                    .map(|c| dy_img[if c < co { c * ohow } else { 0 }..].as_ptr())
                    .collect();
                let mut xs: Vec<*const f32> = vec![std::ptr::null(); np];
                for (t, tile_part) in part.chunks_exact_mut(np * c_pad * 16).enumerate() {
                    for (j, xq) in xs.iter_mut().enumerate() {
                        *xq = x_img[offsets[t * np + j]..].as_ptr();
                    }
                    let tile = DotTile {
                        dy: &d,
                        xs: &xs,
                        rows,
                        ow: os.w,
                        row_step: s.stride.0 * pad.wp,
                        part: tile_part.as_mut_ptr(),
                    };
                    // SAFETY: AVX-512F was checked by the caller. Channel planes hold
                    // `oh * ow` values; pair `j` reads padded row `oy * sh + ky * dh < hp` at
                    // columns `ox + kx * dw < wp` (stride 1 horizontally) inside its
                    // channel's plane of this image; `tile_part` is `np * c_pad * 16` floats.
                    unsafe { dot_dispatch(c_pad, &tile) };
                }
            });
    }
    // dw[c][pair] = sum over jobs and lanes, in order.
    let parts: &[f32] = &partials[..total];
    let jobs = total / job_len;
    dw[..co * pairs]
        .par_chunks_mut(pairs)
        .enumerate()
        .for_each(|(c, row)| {
            for (q, out) in row.iter_mut().enumerate() {
                let mut sum = 0f32;
                for t in 0..jobs {
                    let at = t * job_len + (q * c_pad + c) * 16;
                    sum += parts[at..at + 16].iter().sum::<f32>();
                }
                *out = sum;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_transpose() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let src: Vec<f32> = (0..16 * 20).map(|v| v as f32).collect();
        let mut dst = vec![-1f32; 16 * 18];
        // SAFETY: AVX-512F checked; 16 rows of 20 and of 18 floats.
        unsafe { transpose16(src.as_ptr(), 20, dst.as_mut_ptr(), 18) };
        for r in 0..16 {
            for k in 0..16 {
                assert_eq!(dst[k * 18 + r], src[r * 20 + k], "row {r} column {k}");
            }
        }
    }
}
