// Gradient of a convolution with respect to its input: one invocation per input element
// (image b, channel ci, row iy, column ix) gathers, over the output channels and kernel taps
// that read it, grad_output[b, co, oy, ox] * w[co, ky, kx, ci], where
//   oy * stride_h + ky * dil_h - pad_top = iy  and  ox * stride_w + kx * dil_w - pad_left = ix.
// `grad_output` is the gradient of the convolution's output before its fused ReLU (mask it
// first with relu_grad.wgsl). Weights are the forward kernels' rows, [co][ky][kx][ci].
// Bindings: `grad` (the output's gradient), `weight`, `output` (the input's gradient).
// Params: shaders/common/conv_params.wgsl (in_* the input, out_* the output, in_c and out_c
// whole layers).

fn element(i: u32) {
    let ix = i % p.in_w;
    let iy = (i / p.in_w) % p.in_h;
    let ci = (i / (p.in_w * p.in_h)) % p.in_c;
    let b = i / (p.in_w * p.in_h * p.in_c);
    let taps = p.k_h * p.k_w;
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
            let tap = ky * p.k_w + kx;
            for (var co = 0u; co < p.out_c; co++) {
                let g = grad[((b * p.out_c + co) * p.out_h + oy) * p.out_w + ox];
                acc += g * weight[co * p.w_row + tap * p.in_c + ci];
            }
        }
    }
    output[i] = acc;
}
