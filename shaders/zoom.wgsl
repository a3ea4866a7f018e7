// Bilinear zoom by an integer factor: one invocation per output element of `planes` channel
// planes. Samples the input at (y / f, x / f) with no half-pixel offset, repeating the last
// row and column at the far edge (the reference predictor's interp_map).

struct Params {
    planes: u32, in_h: u32, in_w: u32, in_base: u32,
    out_h: u32, out_w: u32, out_base: u32, total: u32,
    factor: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

// Linear interpolation leaving out a term of weight 0, so that an infinite neighbour at
// weight 0 does not make the result NaN (0 * inf); `t` is never 1.
fn lerp(lo: f32, hi: f32, t: f32) -> f32 {
    if (t == 0.0) {
        return lo;
    }
    return t * hi + (1.0 - t) * lo;
}

@compute @workgroup_size(WG_LINEAR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let base = p.in_base + plane * p.in_h * p.in_w;
    let r0 = oy / p.factor;
    let r1 = min(r0 + 1u, p.in_h - 1u);
    let c0 = ox / p.factor;
    let c1 = min(c0 + 1u, p.in_w - 1u);
    let rt = f32(oy % p.factor) / f32(p.factor);
    let ct = f32(ox % p.factor) / f32(p.factor);
    let v0 = lerp(input[base + r0 * p.in_w + c0], input[base + r1 * p.in_w + c0], rt);
    let v1 = lerp(input[base + r0 * p.in_w + c1], input[base + r1 * p.in_w + c1], rt);
    output[p.out_base + i] = lerp(v0, v1, ct);
}
