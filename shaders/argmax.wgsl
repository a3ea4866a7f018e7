// Label map: one invocation per pixel of `images` NCHW images, writing the index of the
// largest of `channels` values (the first one on ties) as u32 into an `[n, h, w]` buffer.

struct Params {
    channels: u32, plane: u32, total: u32, in_base: u32,
    out_base: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> labels: array<u32>;

@compute @workgroup_size(WG_LINEAR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let image = i / p.plane;
    let px = i % p.plane;
    let first = p.in_base + image * p.channels * p.plane + px;
    var best = 0u;
    var best_v = input[first];
    for (var k = 1u; k < p.channels; k++) {
        let v = input[first + k * p.plane];
        if (v > best_v) {
            best = k;
            best_v = v;
        }
    }
    labels[p.out_base + i] = best;
}
