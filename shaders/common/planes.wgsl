// Shared by the kernels mapping each input channel plane to one output plane (max pooling,
// zoom, deconvolution): the head of their uniform (`PlaneHeader` in src/gpu/ops/planes.rs) and
// the position of an output element. A chunk covers `planes` planes (n * c flattened) whose
// first input and output elements are at `in_base` / `out_base`; `total` = planes * out_h * out_w.

struct PlaneHeader {
    planes: u32, in_h: u32, in_w: u32, in_base: u32,
    out_h: u32, out_w: u32, out_base: u32, total: u32,
}

fn element_count() -> u32 {
    return p.h.total;
}

// (x, y, plane) of output element `i` of the chunk.
fn plane_position(i: u32) -> vec3<u32> {
    return vec3<u32>(i % p.h.out_w, (i / p.h.out_w) % p.h.out_h, i / (p.h.out_w * p.h.out_h));
}
