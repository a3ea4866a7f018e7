// Gradient of a convolution with respect to its weights, over one chunk (images, output
// channels, input channels) whose windows fit one binding: one invocation per weight element
// of the chunk (output channel co < out_c, tap, input channel ci < in_c), in the forward
// kernels' row layout [co][ky][kx][ci], summing over the chunk's images and output pixels
//   grad_output[b, co, oy, ox] * input[b, ci, oy * stride_h + ky * dil_h - pad_top, ...]
// (zero where the tap falls in the padding). `grad_output` is masked by the fused ReLU first.
//
// Bindings: `input` (the layer's input: image b, chunk channel ci at in_base +
// b * in_batch_stride + ci * in_h * in_w), `grad` (its output's gradient: out_base +
// b * out_batch_stride + co * out_h * out_w), `output` (the weight gradient: rows of w_row
// floats, the chunk's first input channel at w_base). Flag 4 adds to the values there (the
// later chunks of images). Params: shaders/common/conv_params.wgsl (in_c and out_c the chunk's
// channels, total = out_c * k_h * k_w * in_c).

fn element(i: u32) {
    let ci = i % p.in_c;
    let tap = (i / p.in_c) % (p.k_h * p.k_w);
    let co = i / (p.in_c * p.k_h * p.k_w);
    let ky = tap / p.k_w;
    let kx = tap % p.k_w;
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        let g_plane = p.out_base + b * p.out_batch_stride + co * p.out_h * p.out_w;
        let x_plane = p.in_base + b * p.in_batch_stride + ci * p.in_h * p.in_w;
        for (var oy = 0u; oy < p.out_h; oy++) {
            let iy = i32(oy * p.stride_h + ky * p.dil_h) - i32(p.pad_top);
            if (iy < 0 || iy >= i32(p.in_h)) {
                continue;
            }
            for (var ox = 0u; ox < p.out_w; ox++) {
                let ix = i32(ox * p.stride_w + kx * p.dil_w) - i32(p.pad_left);
                if (ix < 0 || ix >= i32(p.in_w)) {
                    continue;
                }
                acc += grad[g_plane + oy * p.out_w + ox]
                    * input[x_plane + u32(iy) * p.in_w + u32(ix)];
            }
        }
    }
    let at = p.w_base + co * p.w_row + tap * (p.w_row / (p.k_h * p.k_w)) + ci;
    if ((p.flags & 4u) != 0u) {
        acc += output[at];
    }
    output[at] = acc;
}
