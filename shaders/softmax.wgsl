// Softmax over channels: one invocation per pixel of `images` NCHW images with `channels`
// planes of `plane` pixels each; `output[k] = exp(x[k] - max) / sum_j exp(x[j] - max)`.
// `input` / `output` are windows starting at `in_base` / `out_base`.

struct Params {
    channels: u32, plane: u32, total: u32, in_base: u32,
    out_base: u32, pad0: u32, pad1: u32, pad2: u32,
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
    let image = i / p.plane;
    let px = i % p.plane;
    let first = image * p.channels * p.plane + px;
    var m = input[p.in_base + first];
    for (var k = 1u; k < p.channels; k++) {
        m = max(m, input[p.in_base + first + k * p.plane]);
    }
    var sum = 0.0;
    for (var k = 0u; k < p.channels; k++) {
        sum += exp(input[p.in_base + first + k * p.plane] - m);
    }
    for (var k = 0u; k < p.channels; k++) {
        let o = first + k * p.plane;
        output[p.out_base + o] = exp(input[p.in_base + o] - m) / sum;
    }
}
