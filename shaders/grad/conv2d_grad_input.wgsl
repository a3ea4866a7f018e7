// Gradient of a convolution with respect to its input, over one chunk (images, input channels,
// output channels) whose windows fit one binding: one invocation per input element of the
// chunk (image b < batch, channel ci < in_c, row iy, column ix) gathers, over the chunk's
// output channels and the kernel taps that read it, grad_output[b, co, oy, ox] *
// w[co, ky, kx, ci], where
//   oy * stride_h + ky * dil_h - pad_top = iy  and  ox * stride_w + kx * dil_w - pad_left = ix.
// The host keeps out_c * k_h * k_w (the innermost loop's iterations in all) within its bound
// on loop steps, cutting the output channels into chunks that add up.
// `grad_output` is the gradient of the convolution's output before its fused ReLU (masked
// first with relu_grad.wgsl).
//
// Bindings: `grad` (the output's gradient: image b, chunk channel co at out_base +
// b * out_batch_stride + co * out_h * out_w), `weight` (the forward kernels' rows
// [co][ky][kx][ci] of w_row floats, the chunk's first input channel at w_base), `output` (the
// input's gradient: in_base + b * in_batch_stride + ci * in_h * in_w). Flag 4 adds to the
// values there (the later chunks of output channels). Params: shaders/common/conv_params.wgsl
// (in_c and out_c the chunk's channels, total = batch * in_c * in_h * in_w).

fn element(i: u32) {
    let ix = i % p.in_w;
    let iy = (i / p.in_w) % p.in_h;
    let ci = (i / (p.in_w * p.in_h)) % p.in_c;
    let b = i / (p.in_w * p.in_h * p.in_c);
    let taps = p.k_h * p.k_w;
    // Input channels of the whole layer: the stride of the taps within a weight row.
    let row_c = p.w_row / taps;
    let g_image = p.out_base + b * p.out_batch_stride;
    let out_plane = p.out_h * p.out_w;
    var acc = 0.0;
    for (var ky = 0u; ky < p.k_h; ky++) {
        let ty = i32(iy + p.pad_top) - i32(ky * p.dil_h);
        if (ty < 0 || ty % i32(p.stride_h) != 0) {
            continue;
        }
        let oy = u32(ty) / p.stride_h;
        if (oy >= p.out_h) {
            continue;
        }
        for (var kx = 0u; kx < p.k_w; kx++) {
            let tx = i32(ix + p.pad_left) - i32(kx * p.dil_w);
            if (tx < 0 || tx % i32(p.stride_w) != 0) {
                continue;
            }
            let ox = u32(tx) / p.stride_w;
            if (ox >= p.out_w) {
                continue;
            }
            let w_at = p.w_base + (ky * p.k_w + kx) * row_c + ci;
            let g_at = g_image + oy * p.out_w + ox;
            for (var co = 0u; co < p.out_c; co++) {
                acc += grad[g_at + co * out_plane] * weight[w_at + co * p.w_row];
            }
        }
    }
    let at = p.in_base + b * p.in_batch_stride + (ci * p.in_h + iy) * p.in_w + ix;
    if ((p.flags & 4u) != 0u) {
        acc += output[at];
    }
    output[at] = acc;
}
