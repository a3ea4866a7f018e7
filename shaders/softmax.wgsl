// Softmax over channels: one invocation per pixel; `output[k] = exp(x[k] - max) / sum_j
// exp(x[j] - max)`. Params: shaders/common/per_pixel.wgsl.

fn element(i: u32) {
    let first = first_channel(i);
    var m = f32(input[p.in_base + first]);
    for (var k = 1u; k < p.channels; k++) {
        m = max(m, f32(input[p.in_base + first + k * p.plane]));
    }
    var sum = 0.0;
    for (var k = 0u; k < p.channels; k++) {
        sum += exp(f32(input[p.in_base + first + k * p.plane]) - m);
    }
    for (var k = 0u; k < p.channels; k++) {
        let o = first + k * p.plane;
        output[p.out_base + o] = store_t(exp(f32(input[p.in_base + o]) - m) / sum);
    }
}
