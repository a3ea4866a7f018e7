// Gradient of a convolution with respect to its bias: one invocation per output channel,
// summing grad_output over images and pixels (masked by the fused ReLU first).
// Params: shaders/common/conv_params.wgsl.

fn element(co: u32) {
    var acc = 0.0;
    let pixels = p.out_h * p.out_w;
    for (var b = 0u; b < p.batch; b++) {
        let plane = (b * p.out_c + co) * pixels;
        for (var px = 0u; px < pixels; px++) {
            acc += grad[plane + px];
        }
    }
    output[co] = acc;
}
