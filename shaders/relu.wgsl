// ReLU on its own: one invocation per element, `output[i] = max(input[i], 0)` (NaN stays NaN).
// `input` and `output` are windows of f32 buffers starting at `in_base` / `out_base`; they may
// be the same buffer bound twice only through the in-place entry point.

struct Params {
    total: u32, in_base: u32, out_base: u32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(WG_LINEAR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let x = input[p.in_base + i];
    output[p.out_base + i] = select(x, 0.0, x < 0.0);
}
