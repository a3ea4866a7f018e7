// Dropout with a given mask, in place, one invocation per element of a chunk of `total`
// elements: `data[i] = data[i] * scale` where bit (i % 32) of `mask[i / 32]` is set (the unit
// is kept), else 0; `scale` = 1 / (1 - ratio). The same kernel applies the forward pass to a
// layer's output and the backward pass to its gradient (dropout is linear in its input).
//
// Bindings: `mask` the kept units as packed bits, 32 per word, from word `mask_base` (a chunk
// starts at a multiple of 32 elements); `data` f32 from element `base`.

struct Params {
    total: u32, base: u32, mask_base: u32, scale: f32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    let keep = (mask[p.mask_base + i / 32u] >> (i % 32u)) & 1u;
    let at = p.base + i;
    data[at] = select(0.0, data[at] * p.scale, keep == 1u);
}
