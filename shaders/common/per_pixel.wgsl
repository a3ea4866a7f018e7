// Shared by the kernels that reduce over channels per pixel (softmax, argmax): their uniform
// (`PixelParams` in src/gpu/ops/per_pixel.rs). A chunk covers whole NCHW images of `channels`
// planes of `plane` pixels; `total` is its pixel count; `input` / `output` are windows starting
// at `in_base` / `out_base`.

struct Params {
    channels: u32, plane: u32, total: u32, in_base: u32,
    out_base: u32, pad0: u32, pad1: u32, pad2: u32,
}

fn element_count() -> u32 {
    return p.total;
}

// Index in `input` (from the window start) of channel 0 of pixel `i` of the chunk.
fn first_channel(i: u32) -> u32 {
    return (i / p.plane) * p.channels * p.plane + i % p.plane;
}
