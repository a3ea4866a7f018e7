// Gradient of a convolution with respect to its bias, over one chunk (images, output channels)
// whose windows fit one binding: one invocation per output channel co < out_c of the chunk,
// summing grad_output (masked by the fused ReLU first) over the chunk's images and pixels.
//
// Bindings: `grad` (image b, chunk channel co at out_base + b * out_batch_stride +
// co * out_h * out_w), `output` (the bias gradient, the chunk's first channel at bias_base).
// Flag 4 adds to the values there (the later chunks of images). Params:
// shaders/common/conv_params.wgsl (total = out_c).

fn element(co: u32) {
    var acc = 0.0;
    let pixels = p.out_h * p.out_w;
    for (var b = 0u; b < p.batch; b++) {
        let plane = p.out_base + b * p.out_batch_stride + co * pixels;
        for (var px = 0u; px < pixels; px++) {
            acc += grad[plane + px];
        }
    }
    let at = p.bias_base + co;
    if ((p.flags & 4u) != 0u) {
        acc += output[at];
    }
    output[at] = acc;
}
