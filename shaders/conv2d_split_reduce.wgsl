// Second pass of a convolution whose reduction was split over `slices` workgroups per tile
// (conv2d_tiled.wgsl with k_split > 1): adds each output element's partial sums in slice order
// (so the result does not depend on scheduling), then applies the flags with the convolution
// kernels' `finish` (shaders/common/conv_finish.wgsl). One invocation per output element of the
// chunk's images of `out_c` channels x `pixels`.
//
// `partial` is the scratch buffer laid out [image][slice][channel][pixel], in the storage type
// (so f16 plans keep f16 partial sums); `output` is the window of the convolution's output
// whose chunk starts at `out_base`.

struct Params {
    out_c: u32, pixels: u32, slices: u32, total: u32,
    out_base: u32, out_batch_stride: u32, bias_base: u32, flags: u32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    let image = p.out_c * p.pixels;
    let e = i % image;
    var v = 0.0;
    var at = (i / image) * p.slices * image + e;
    for (var s = 0u; s < p.slices; s++) {
        v += f32(partial[at]);
        at += image;
    }
    let o = p.out_base + (i / image) * p.out_batch_stride + e;
    output[o] = store_t(finish(v, o, e / p.pixels));
}
