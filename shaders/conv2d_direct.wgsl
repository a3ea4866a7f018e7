// Direct 2-D convolution: one invocation computes one output element.
//
// Kept for shapes where the tiled kernel wastes work (very few output channels or pixels) and
// as the simple baseline the tiled kernels are measured against.
//
// Buffers (NCHW, of the storage type `store_t`, f32 or f16, read into f32 and accumulated in
// f32): `input` and `output` are windows of larger tensors; element 0 of the
// chunk is at `in_base` / `out_base`. `weight` holds a row of `w_row` elements per output
// channel laid out as [kh][kw][in] (input channels innermost); `w_base` is the chunk's first
// input channel in row 0, so element (co, ky, kx, ci) of the chunk is at
// w_base + co * w_row + (ky * k_w + kx) * (w_row / (k_h * k_w)) + ci.
// The chunk covers `batch` images x `out_c` output channels x `in_c` input channels.
// flags: 1 add bias, 2 ReLU, 4 accumulate into the existing output (input-channel split).
// Params: shaders/common/conv_params.wgsl; entry point: shaders/common/linear.wgsl.

fn element(i: u32) {
    let plane = p.out_h * p.out_w;
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let co = (i / plane) % p.out_c;
    let b = i / (plane * p.out_c);
    var acc = 0.0;
    let in_img = p.in_base + b * p.in_batch_stride;
    let in_total = p.w_row / (p.k_h * p.k_w);
    for (var ci = 0u; ci < p.in_c; ci++) {
        let in_ch = in_img + ci * p.in_h * p.in_w;
        let w_ch = p.w_base + co * p.w_row + ci;
        for (var ky = 0u; ky < p.k_h; ky++) {
            let iy = i32(oy * p.stride_h + ky * p.dil_h) - i32(p.pad_top);
            if (iy < 0 || iy >= i32(p.in_h)) {
                continue;
            }
            for (var kx = 0u; kx < p.k_w; kx++) {
                let ix = i32(ox * p.stride_w + kx * p.dil_w) - i32(p.pad_left);
                if (ix < 0 || ix >= i32(p.in_w)) {
                    continue;
                }
                let w = f32(weight[w_ch + (ky * p.k_w + kx) * in_total]);
                acc += f32(input[in_ch + u32(iy) * p.in_w + u32(ix)]) * w;
            }
        }
    }
    let o = p.out_base + b * p.out_batch_stride + co * plane + oy * p.out_w + ox;
    output[o] = store_t(finish(acc, o, co));
}
