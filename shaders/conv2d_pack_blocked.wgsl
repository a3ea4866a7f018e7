// Copies a convolution's weights into the layout conv2d_blocked_packed.wgsl reads: per block of
// BLOCK_C output channels, one row of BLOCK_C weights per reduction step, steps ordered by tap
// (ky, kx), then input channel. One element per invocation; channels past `out_c` are zero.
//
// Params: shaders/common/conv_params.wgsl, as the convolution's (`in_c` input channels of the
// chunk, `out_c` output channels from the weight window's first row, `w_base` / `w_row` the
// weight rows), `out_base` the packed copy's first element and `total` its element count.

fn element(e: u32) {
    let taps = p.k_h * p.k_w;
    let steps = taps * p.in_c;
    let co = (e / (steps * BLOCK_C)) * BLOCK_C + e % BLOCK_C;
    let step = (e / BLOCK_C) % steps;
    let tap = step / p.in_c;
    let ci = step % p.in_c;
    let at = p.w_base + min(co, p.out_c - 1u) * p.w_row + tap * (p.w_row / taps) + ci;
    output[p.out_base + e] = select(store_t(0.0), weight[at], co < p.out_c);
}
