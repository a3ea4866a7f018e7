// Gradient of a convolution with respect to its bias, over one chunk (images, output channels)
// whose windows fit one binding and one range of its output pixels: one invocation per output
// channel co < out_c of the chunk, summing grad_output (masked by the fused ReLU first) over
// the pixels q in [range_start, range_start + range_len) of the chunk's images (flattened as
// image, pixel). One loop of range_len iterations: the host cuts longer sums into ranges, each
// dispatch after the first adding to the sums.
//
// Bindings: `grad` (image b, chunk channel co at out_base + b * out_batch_stride +
// co * out_h * out_w), `output` (the bias gradient, the chunk's first channel at bias_base).
// Flag 4 adds to the values there (later ranges and chunks of images). Params:
// shaders/common/conv_params.wgsl (total = out_c).

fn element(co: u32) {
    let pixels = p.out_h * p.out_w;
    var b = p.range_start / pixels;
    var px = p.range_start % pixels;
    var acc = 0.0;
    for (var q = 0u; q < p.range_len; q++) {
        acc += grad[p.out_base + b * p.out_batch_stride + co * pixels + px];
        px += 1u;
        if (px == pixels) {
            px = 0u;
            b += 1u;
        }
    }
    let at = p.bias_base + co;
    if ((p.flags & 4u) != 0u) {
        acc += output[at];
    }
    output[at] = acc;
}
