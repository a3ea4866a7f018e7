// The weights of a convolution rearranged for its input gradient: for stride 1, dL/dx is the
// convolution of dL/dy with the weights turned 180 degrees and their input and output
// channels swapped,
//   flipped[ci][ky][kx][co] = weight[co][k_h - 1 - ky][k_w - 1 - kx][ci],
// written as the rows [out][kh][kw][in] of that transposed layer (rows of out_c * k_h * k_w
// floats), so the forward kernels run it unchanged. One invocation per element.
//
// Bindings: `weight` (the layer's rows [co][ky][kx][ci] of w_row = in_c * k_h * k_w floats),
// `output` (the flipped rows). Params: shaders/common/conv_params.wgsl (in_c and out_c the
// layer's channels, total = out_c * k_h * k_w * in_c).

fn element(i: u32) {
    let taps = p.k_h * p.k_w;
    let co = i % p.out_c;
    let tap = (i / p.out_c) % taps;
    let ci = i / (p.out_c * taps);
    let ky = tap / p.k_w;
    let kx = tap % p.k_w;
    let src_tap = (p.k_h - 1u - ky) * p.k_w + (p.k_w - 1u - kx);
    output[i] = weight[co * p.w_row + src_tap * p.in_c + ci];
}
