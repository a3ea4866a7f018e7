// Max pooling: one invocation per output element of `planes` channel planes (n * c flattened).
// Windows are clipped to the input, so padded positions never win; a NaN in the window gives NaN.
// `input` / `output` are windows of f32 NCHW buffers starting at `in_base` / `out_base`.

struct Params {
    planes: u32, in_h: u32, in_w: u32, in_base: u32,
    out_h: u32, out_w: u32, out_base: u32, total: u32,
    k_h: u32, k_w: u32, stride_h: u32, stride_w: u32,
    pad_top: u32, pad_left: u32, pad0: u32, pad1: u32,
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
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let y0 = i32(oy * p.stride_h) - i32(p.pad_top);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_left);
    let y_lo = u32(max(y0, 0));
    let x_lo = u32(max(x0, 0));
    let y_hi = u32(min(y0 + i32(p.k_h), i32(p.in_h)));
    let x_hi = u32(min(x0 + i32(p.k_w), i32(p.in_w)));
    let base = p.in_base + plane * p.in_h * p.in_w;
    var m = -3.402823e38;
    var seen = false;
    var nan = false;
    for (var y = y_lo; y < y_hi; y++) {
        for (var x = x_lo; x < x_hi; x++) {
            let v = input[base + y * p.in_w + x];
            // NaN tested on the bits: `v != v` compiles to an ordered comparison, false for NaN.
            nan = nan || (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
            if (!seen || v > m) {
                m = v;
                seen = true;
            }
        }
    }
    var r = m;
    if (nan) {
        r = bitcast<f32>(0x7fc00000u);
    }
    output[p.out_base + i] = r;
}
