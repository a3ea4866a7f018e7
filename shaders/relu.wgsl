// ReLU on its own: one invocation per element, `output[i] = max(input[i], 0)` (NaN stays NaN).
// `input` and `output` are windows of `store_t` (f32 or f16) buffers starting at `in_base` /
// `out_base`.

struct Params {
    total: u32, in_base: u32, out_base: u32, pad0: u32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    let x = f32(input[p.in_base + i]);
    output[p.out_base + i] = store_t(select(x, 0.0, x < 0.0));
}
