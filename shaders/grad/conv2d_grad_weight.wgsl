// Gradient of a convolution with respect to its weights: one invocation per weight element,
// in the forward kernels' row layout [co][ky][kx][ci], summing over images and output pixels
//   grad_output[b, co, oy, ox] * input[b, ci, oy * stride_h + ky * dil_h - pad_top, ...]
// (zero where the tap falls in the padding). `grad_output` is masked by the fused ReLU first.
// Bindings: `input` (the layer's input), `grad` (its output's gradient), `output` (the
// weight gradient). Params: shaders/common/conv_params.wgsl (`batch` images; in_c and out_c
// whole layers).

fn element(i: u32) {
    let ci = i % p.in_c;
    let tap = (i / p.in_c) % (p.k_h * p.k_w);
    let co = i / (p.in_c * p.k_h * p.k_w);
    let ky = tap / p.k_w;
    let kx = tap % p.k_w;
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        let g_plane = (b * p.out_c + co) * p.out_h * p.out_w;
        let x_plane = (b * p.in_c + ci) * p.in_h * p.in_w;
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
    output[i] = acc;
}
