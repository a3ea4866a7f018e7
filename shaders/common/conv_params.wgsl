// The uniform of every convolution kernel (`ConvParams` in src/gpu/ops/conv.rs; a test checks
// the two agree field by field). `input` and `output` are windows of larger NCHW tensors
// whose chunk starts at `in_base` / `out_base`; weights are rows of `w_row` elements per output
// channel from `w_base`; flags: 1 add bias, 2 ReLU, 4 accumulate into the existing output
// (input-channel split). `k_split` > 1 (tiled kernel only) splits the reduction over that many
// workgroups per tile, each writing its partial sums raw to its own slice of `output` (a scratch
// buffer laid out [image][slice][channel][pixel], `out_batch_stride` apart);
// conv2d_split_reduce.wgsl adds them. The gradient kernels read `range_start` / `range_len`:
// the range of the chunk's output pixels (images x rows x columns, flattened) a dispatch of the
// weight and bias gradients sums over.

struct Params {
    in_c: u32, in_h: u32, in_w: u32, in_base: u32,
    out_c: u32, out_h: u32, out_w: u32, out_base: u32,
    k_h: u32, k_w: u32, dil_h: u32, dil_w: u32,
    stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
    w_base: u32, w_row: u32, bias_base: u32, flags: u32,
    batch: u32, in_batch_stride: u32, out_batch_stride: u32, total: u32,
    k_split: u32, range_start: u32, range_len: u32, pad0: u32,
}

fn element_count() -> u32 {
    return p.total;
}
