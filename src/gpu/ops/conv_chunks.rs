//! How a convolution is cut into dispatches: chunks over images, output channels and input
//! channels whose windows fit one storage binding, and the split of deep reductions over
//! several workgroups per output tile (split-K) when a layer has too few tiles to fill a GPU.

use crate::error::Result;
use crate::gpu::dispatch::exceeds_binding;
use crate::gpu::shader::{MAX_REDUCTION_DEPTH, TILE_M, TILE_N};
use crate::spec::{Conv2d, Shape};

/// The tiled convolution splits its reduction (split-K) when it would launch fewer workgroups
/// than this: a large GPU needs several resident workgroups per multiprocessor to hide memory
/// latency, and a layer with few output tiles (few pixels, such as fc6 on a small input, or few
/// channels) would leave most of it idle.
pub const SPLIT_TARGET_WORKGROUPS: usize = 512;
/// Least reduction depth (input channels x taps) per slice of a split reduction.
pub const SPLIT_MIN_DEPTH: usize = 256;
/// Most slices a reduction is split into.
pub const SPLIT_MAX_SLICES: usize = 16;
/// Most bytes of partial sums one split convolution holds.
pub const SPLIT_SCRATCH_BYTES: u64 = 64 << 20;

/// Slices the tiled convolution splits its reduction of depth `depth` into, when one slice
/// launches `tiles` workgroups and writes `partial` floats; 1 for no split. At most
/// `max_elems` floats of partial sums, so they fit one binding.
pub(crate) fn split_slices(tiles: usize, depth: usize, partial: usize, max_elems: usize) -> usize {
    if tiles >= SPLIT_TARGET_WORKGROUPS {
        return 1;
    }
    let room = ((SPLIT_SCRATCH_BYTES / 4) as usize).min(max_elems);
    SPLIT_TARGET_WORKGROUPS
        .div_ceil(tiles.max(1))
        .min(depth / SPLIT_MIN_DEPTH)
        .min(SPLIT_MAX_SLICES)
        .min(room / partial.max(1))
        .max(1)
}

/// Least reduction depth per slice when a split-K factor is asked for
/// ([`crate::GpuConv2d::with_split_slices`]): one step of the deepest tile shape.
pub const SPLIT_FORCED_MIN_DEPTH: usize = 16;

/// Slices a reduction of depth `depth` is cut into when `asked` are asked for: fewer where a
/// slice would get under [`SPLIT_FORCED_MIN_DEPTH`] of the reduction or the partial sums
/// (`partial` floats per slice) would exceed [`SPLIT_SCRATCH_BYTES`] or `max_elems`; 1 for no
/// split.
pub(crate) fn forced_slices(asked: usize, depth: usize, partial: usize, max_elems: usize) -> usize {
    let room = ((SPLIT_SCRATCH_BYTES / 4) as usize).min(max_elems);
    asked
        .min(depth / SPLIT_FORCED_MIN_DEPTH)
        .min(room / partial.max(1))
        .max(1)
}

/// Most bytes of partial sums the tiled convolution of `spec` producing `output` holds when its
/// reduction is split, computed without a device: the largest over windows of any number of
/// whole images (a window of fewer channels only arises, with storage bindings of 128 MiB or
/// more, for outputs of over 1,024 tiles per image, which are never split). This is the
/// heuristic's split; a split-K factor asked for ([`forced_slices`], a tuner's choice on a GPU)
/// may hold more, up to [`SPLIT_SCRATCH_BYTES`], which the built plan then reports.
pub(crate) fn split_scratch_bytes(spec: &Conv2d, output: Shape) -> u64 {
    let image_tiles =
        spec.out_channels.div_ceil(TILE_M as usize) * output.plane().div_ceil(TILE_N as usize);
    let depth = spec.in_channels * spec.kernel.0 * spec.kernel.1;
    let image = spec.out_channels * output.plane();
    (1..=output.n.max(1))
        .map(
            |nb| match split_slices(nb * image_tiles, depth, nb * image, usize::MAX) {
                1 => 0,
                slices => (slices * nb * image) as u64 * 4,
            },
        )
        .max()
        .unwrap_or(0)
}

/// Most bytes of weights the packed register-blocked convolution
/// ([`crate::ConvAlgorithm::BlockedPacked`]) copies into scratch at a time: blocks of 64 output
/// channels are packed and convolved in rounds of at most this many bytes (at least one block).
pub const PACK_SCRATCH_BYTES: u64 = 16 << 20;

/// Blocks of 64 output channels the packed register-blocked convolution packs per round when
/// one block holds `block_elems` elements of `elem_bytes` bytes and there are `blocks`, the
/// round within `max_elems` elements (one binding); 0 where one block exceeds that.
pub(crate) fn pack_round_blocks(
    block_elems: usize,
    elem_bytes: u64,
    blocks: usize,
    max_elems: usize,
) -> usize {
    let per_round = (PACK_SCRATCH_BYTES / (block_elems as u64 * elem_bytes).max(1)) as usize;
    per_round
        .clamp(1, blocks.max(1))
        .min(max_elems / block_elems.max(1))
}

/// Most bytes of packed weights the packed register-blocked convolution of `spec` holds in
/// scratch, with `elem_bytes`-byte elements, computed without a device: one round of blocks
/// over the whole reduction (chunks over input channels only make rounds smaller).
pub(crate) fn pack_scratch_bytes(spec: &Conv2d, elem_bytes: u64) -> u64 {
    let block = 64 * spec.in_channels * spec.kernel.0 * spec.kernel.1;
    let blocks = spec.out_channels.div_ceil(64);
    (pack_round_blocks(block, elem_bytes, blocks, usize::MAX) * block) as u64 * elem_bytes
}

/// A piece of a convolution whose input, weight and output windows each fit one binding:
/// images `n0..n0+nb`, output channels `co0..co0+co_n`, input channels `ci0..ci0+ci_n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvChunk {
    pub n0: usize,
    pub nb: usize,
    pub co0: usize,
    pub co_n: usize,
    pub ci0: usize,
    pub ci_n: usize,
}

/// Splits a convolution over batch, output channels and input channels (partial sums
/// accumulated in the output) so every window holds at most `max` elements and every
/// reduction runs over at most [`MAX_REDUCTION_DEPTH`] input channels x taps.
pub(crate) fn conv_chunks(
    spec: &Conv2d,
    input: Shape,
    output: Shape,
    max: usize,
) -> Result<Vec<ConvChunk>> {
    let w_row = spec.in_channels * spec.kernel.0 * spec.kernel.1;
    let too_big = |what: String, elems: usize| exceeds_binding(what, elems, max);
    if w_row > max {
        return Err(too_big("the weights of one output channel".into(), w_row));
    }
    if input.plane() > max {
        return Err(too_big(
            format!("one input channel plane ({}x{})", input.h, input.w),
            input.plane(),
        ));
    }
    if output.plane() > max {
        return Err(too_big(
            format!("one output channel plane ({}x{})", output.h, output.w),
            output.plane(),
        ));
    }
    let co_n = spec.out_channels.min(max / output.plane()).min(max / w_row);
    let taps = spec.kernel.0 * spec.kernel.1;
    let ci_n = spec
        .in_channels
        .min(max / input.plane())
        .min((MAX_REDUCTION_DEPTH / taps).max(1));
    let nb = if co_n == spec.out_channels && ci_n == spec.in_channels {
        input
            .n
            .min(max / (input.c * input.plane()))
            .min(max / (output.c * output.plane()))
            .max(1)
    } else {
        1
    };
    let mut chunks = Vec::new();
    for n0 in (0..input.n).step_by(nb) {
        for co0 in (0..spec.out_channels).step_by(co_n) {
            for ci0 in (0..spec.in_channels).step_by(ci_n) {
                chunks.push(ConvChunk {
                    n0,
                    nb: nb.min(input.n - n0),
                    co0,
                    co_n: co_n.min(spec.out_channels - co0),
                    ci0,
                    ci_n: ci_n.min(spec.in_channels - ci0),
                });
            }
        }
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_once_within_the_limit() {
        let spec = Conv2d::new(64, 48, 3).pad(1);
        let input = Shape::new(2, 64, 40, 30);
        let output = spec.output_shape(input, "t").unwrap();
        for max in [1usize << 30, 64 * 1200, 20_000, 5000, 1200] {
            let chunks = conv_chunks(&spec, input, output, max).unwrap();
            let mut seen = vec![0u32; input.n * spec.out_channels * spec.in_channels];
            for c in &chunks {
                assert!(c.ci_n * input.plane() <= max || c.nb == 1 && c.ci_n == 1);
                assert!(c.co_n * output.plane() <= max);
                assert!(c.co_n * spec.in_channels * 9 <= max);
                if c.nb > 1 {
                    assert!(c.nb * input.c * input.plane() <= max);
                }
                for n in c.n0..c.n0 + c.nb {
                    for co in c.co0..c.co0 + c.co_n {
                        for ci in c.ci0..c.ci0 + c.ci_n {
                            seen[(n * spec.out_channels + co) * spec.in_channels + ci] += 1;
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "max {max}");
        }
        assert!(conv_chunks(&spec, input, output, 1000).is_err());
    }

    #[test]
    fn deep_reductions_are_cut_over_input_channels() {
        // 1,400 x 49 = 68,600 > MAX_REDUCTION_DEPTH: 1,003 channels, then 397.
        let spec = Conv2d::new(1400, 1, 7);
        let input = Shape::new(1, 1400, 7, 7);
        let output = spec.output_shape(input, "t").unwrap();
        let chunks = conv_chunks(&spec, input, output, 1 << 30).unwrap();
        let cut: Vec<_> = chunks.iter().map(|c| (c.ci0, c.ci_n)).collect();
        assert_eq!(cut, [(0, 1003), (1003, 397)]);
        // fc6 stays whole.
        let spec = Conv2d::new(512, 4096, 7).dilation(4);
        let input = Shape::new(1, 512, 30, 30);
        let output = spec.output_shape(input, "t").unwrap();
        assert_eq!(conv_chunks(&spec, input, output, 1 << 30).unwrap().len(), 1);
    }

    #[test]
    fn split_slices_fill_the_gpu_within_depth_and_memory() {
        // Enough tiles: no split.
        assert_eq!(
            split_slices(SPLIT_TARGET_WORKGROUPS, 1 << 20, 1, usize::MAX),
            1
        );
        // fc6-like (64 tiles, depth 25088): 8 slices bring 512 workgroups.
        assert_eq!(split_slices(64, 25088, 1 << 20, usize::MAX), 8);
        // Shallow reductions are not split below SPLIT_MIN_DEPTH per slice.
        assert_eq!(split_slices(1, 3 * SPLIT_MIN_DEPTH + 5, 100, usize::MAX), 3);
        assert_eq!(split_slices(1, SPLIT_MIN_DEPTH * 2 - 1, 100, usize::MAX), 1);
        // At most SPLIT_MAX_SLICES, and the partial sums fit the scratch cap and one binding.
        assert_eq!(split_slices(1, 1 << 20, 100, usize::MAX), SPLIT_MAX_SLICES);
        let cap = (SPLIT_SCRATCH_BYTES / 4) as usize;
        assert_eq!(split_slices(1, 1 << 20, cap / 3, usize::MAX), 3);
        assert_eq!(split_slices(1, 1 << 20, 1000, 2500), 2);
    }

    #[test]
    fn pack_rounds_hold_whole_blocks_within_the_cap_and_one_binding() {
        // 1x1, 1024 input channels: 256 KiB a block, 16 MiB a round, 16 blocks in all.
        let block = 64 * 1024;
        assert_eq!(pack_round_blocks(block, 4, 16, usize::MAX), 16);
        assert_eq!(pack_round_blocks(block, 4, 100, usize::MAX), 64);
        // A block over the cap still packs alone.
        assert_eq!(pack_round_blocks(64 * 49 * 2048, 4, 16, usize::MAX), 1);
        // One binding bounds a round; a block over it cannot be packed.
        assert_eq!(pack_round_blocks(block, 4, 16, 3 * block + 1), 3);
        assert_eq!(pack_round_blocks(block, 4, 16, block - 1), 0);
        // The device-free bound: fc6 7x7 512 -> 4096, f32: two blocks of 6.4 MB per round.
        let fc6 = Conv2d::new(512, 4096, 7).dilation(4);
        assert_eq!(pack_scratch_bytes(&fc6, 4), 2 * 64 * 49 * 512 * 4);
        let small = Conv2d::new(64, 21, 1);
        assert_eq!(pack_scratch_bytes(&small, 2), 64 * 64 * 2);
    }

    #[test]
    fn forced_slices_are_granted_within_depth_and_memory() {
        // Granted as asked whatever the number of tiles, beyond SPLIT_MAX_SLICES too.
        assert_eq!(forced_slices(4, 25088, 1 << 10, usize::MAX), 4);
        assert_eq!(forced_slices(40, 25088, 1 << 10, usize::MAX), 40);
        // At least SPLIT_FORCED_MIN_DEPTH per slice; 1 means no split.
        assert_eq!(
            forced_slices(16, 3 * SPLIT_FORCED_MIN_DEPTH + 1, 10, usize::MAX),
            3
        );
        assert_eq!(
            forced_slices(16, SPLIT_FORCED_MIN_DEPTH - 1, 10, usize::MAX),
            1
        );
        assert_eq!(forced_slices(1, 1 << 20, 10, usize::MAX), 1);
        // The partial sums fit the scratch cap and one binding.
        let cap = (SPLIT_SCRATCH_BYTES / 4) as usize;
        assert_eq!(forced_slices(16, 1 << 20, cap / 5, usize::MAX), 5);
        assert_eq!(forced_slices(16, 1 << 20, 1000, 2500), 2);
    }
}
