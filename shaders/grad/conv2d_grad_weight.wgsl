// Gradient of a convolution with respect to its weights, over one chunk (images, output
// channels, input channels) whose windows fit one binding and one range of its output pixels:
// one invocation per weight element of the chunk (output channel co < out_c, tap, input
// channel ci < in_c), in the forward kernels' row layout [co][ky][kx][ci], summing over the
// output pixels q in [range_start, range_start + range_len) of the chunk's images (flattened
// as image, row, column)
//   grad_output[b, co, oy, ox] * input[b, ci, oy * stride_h + ky * dil_h - pad_top, ...]
// (zero where the tap falls in the padding). One loop of range_len iterations: the host cuts
// longer reductions into ranges, each dispatch after the first adding to the sums.
// `grad_output` is masked by the fused ReLU first.
//
// Bindings: `input` (the layer's input: image b, chunk channel ci at in_base +
// b * in_batch_stride + ci * in_h * in_w), `grad` (its output's gradient: out_base +
// b * out_batch_stride + co * out_h * out_w), `output` (the weight gradient: rows of w_row
// floats, the chunk's first input channel at w_base). Flag 4 adds to the values there (later
// ranges and chunks of images). Params: shaders/common/conv_params.wgsl (in_c and out_c the
// chunk's channels, total = out_c * k_h * k_w * in_c).

fn element(i: u32) {
    let ci = i % p.in_c;
    let tap = (i / p.in_c) % (p.k_h * p.k_w);
    let co = i / (p.in_c * p.k_h * p.k_w);
    let ky = tap / p.k_w;
    let kx = tap % p.k_w;
    let out_plane = p.out_h * p.out_w;
    let in_plane = p.in_h * p.in_w;
    // Position of the range's first pixel, then stepped through the loop.
    var b = p.range_start / out_plane;
    var oy = (p.range_start % out_plane) / p.out_w;
    var ox = p.range_start % p.out_w;
    var acc = 0.0;
    for (var q = 0u; q < p.range_len; q++) {
        let iy = i32(oy * p.stride_h + ky * p.dil_h) - i32(p.pad_top);
        let ix = i32(ox * p.stride_w + kx * p.dil_w) - i32(p.pad_left);
        if (iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w)) {
            let g = grad[p.out_base + b * p.out_batch_stride + co * out_plane + oy * p.out_w + ox];
            let x = input[p.in_base + b * p.in_batch_stride + ci * in_plane
                + u32(iy) * p.in_w + u32(ix)];
            acc += g * x;
        }
        ox += 1u;
        if (ox == p.out_w) {
            ox = 0u;
            oy += 1u;
            if (oy == p.out_h) {
                oy = 0u;
                b += 1u;
            }
        }
    }
    let at = p.w_base + co * p.w_row + tap * (p.w_row / (p.k_h * p.k_w)) + ci;
    if ((p.flags & 4u) != 0u) {
        acc += output[at];
    }
    output[at] = acc;
}
