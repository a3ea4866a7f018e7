// Bilinear zoom by an integer factor: one invocation per output element of the chunk's channel
// planes (header: shaders/common/planes.wgsl). Samples the input at (y / f, x / f) with no
// half-pixel offset, repeating the last row and column at the far edge (the reference
// predictor's interp_map).

struct Params {
    h: PlaneHeader,
    factor: u32, pad0: u32, pad1: u32, pad2: u32,
}

// Linear interpolation leaving out a term of weight 0, so that an infinite neighbour at
// weight 0 does not make the result NaN (0 * inf); `t` is never 1.
fn lerp(lo: f32, hi: f32, t: f32) -> f32 {
    if (t == 0.0) {
        return lo;
    }
    return t * hi + (1.0 - t) * lo;
}

fn element(i: u32) {
    let at = plane_position(i);
    let w = p.h.in_w;
    let base = p.h.in_base + at.z * p.h.in_h * w;
    let r0 = at.y / p.factor;
    let r1 = min(r0 + 1u, p.h.in_h - 1u);
    let c0 = at.x / p.factor;
    let c1 = min(c0 + 1u, w - 1u);
    let rt = f32(at.y % p.factor) / f32(p.factor);
    let ct = f32(at.x % p.factor) / f32(p.factor);
    let v0 = lerp(f32(input[base + r0 * w + c0]), f32(input[base + r1 * w + c0]), rt);
    let v1 = lerp(f32(input[base + r0 * w + c1]), f32(input[base + r1 * w + c1]), rt);
    output[p.h.out_base + i] = store_t(lerp(v0, v1, ct));
}
