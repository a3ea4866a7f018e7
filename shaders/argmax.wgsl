// Label map: one invocation per pixel, writing the index of the largest of `channels` values
// (the first one on ties) as u32 into an `[n, h, w]` buffer. Params: shaders/common/per_pixel.wgsl.

fn element(i: u32) {
    let first = p.in_base + first_channel(i);
    var best = 0u;
    var best_v = f32(input[first]);
    for (var k = 1u; k < p.channels; k++) {
        let v = f32(input[first + k * p.plane]);
        if (v > best_v) {
            best = k;
            best_v = v;
        }
    }
    labels[p.out_base + i] = best;
}
