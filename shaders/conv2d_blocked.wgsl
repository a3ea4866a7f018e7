// Register-blocked convolution for adapters whose invocations are SIMD lanes of a CPU (such as
// lavapipe), where every load from storage or workgroup memory costs a loop over the lanes and
// a register FMA is cheap. Each invocation computes 16 output channels x 4 pixels in registers
// and reads everything straight from storage (no workgroup memory, no barriers). Per reduction
// step an invocation loads its 4 input values and 2 weights; the 16 weights a step needs come
// from the 8 lanes of its subgroup by subgroupBroadcast (requires a subgroup size of at least 8).
//
// Buffers and Params are those of conv2d_direct.wgsl. `total` is the number of workgroups:
// channel blocks (fastest) x pixel blocks x images. A workgroup covers 16 output channels and
// 4 * WG_BLOCKED pixels; invocation `lid` takes pixels lid + j * WG_BLOCKED, j = 0..3.

struct Params {
    in_c: u32, in_h: u32, in_w: u32, in_base: u32,
    out_c: u32, out_h: u32, out_w: u32, out_base: u32,
    k_h: u32, k_w: u32, dil_h: u32, dil_w: u32,
    stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
    w_base: u32, w_row: u32, bias_base: u32, flags: u32,
    batch: u32, in_batch_stride: u32, out_batch_stride: u32, total: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

// Input offset of pixel `px` (row-major in the output plane) for tap (ky, kx), or -1 when the
// tap falls into the padding.
fn tap_offset(px: u32, ky: u32, kx: u32) -> i32 {
    let iy = i32((px / p.out_w) * p.stride_h + ky * p.dil_h) - i32(p.pad_top);
    let ix = i32((px % p.out_w) * p.stride_w + kx * p.dil_w) - i32(p.pad_left);
    let ok = iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w);
    return select(-1, iy * i32(p.in_w) + ix, ok);
}

fn fetch(off: i32, ci_off: u32) -> f32 {
    return select(0.0, input[u32(max(off, 0)) + ci_off], off >= 0);
}

fn write_out(co: u32, px: u32, pixels: u32, out_img: u32, acc: f32) {
    if (co >= p.out_c || px >= pixels) {
        return;
    }
    let o = out_img + co * pixels + px;
    var v = acc;
    if ((p.flags & 4u) != 0u) {
        v += output[o];
    }
    if ((p.flags & 1u) != 0u) {
        v += bias[p.bias_base + co];
    }
    if ((p.flags & 2u) != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    output[o] = v;
}

@compute @workgroup_size(WG_BLOCKED)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.total) {
        return;
    }
    let pixels = p.out_h * p.out_w;
    let blocks_c = (p.out_c + 15u) / 16u;
    let blocks_p = (pixels + 4u * WG_BLOCKED - 1u) / (4u * WG_BLOCKED);
    let c0 = (g % blocks_c) * 16u;
    let px0 = ((g / blocks_c) % blocks_p) * (4u * WG_BLOCKED) + lid;
    let b = g / (blocks_c * blocks_p);
    let taps = p.k_h * p.k_w;
    let in_plane = p.in_h * p.in_w;
    let in_img = p.in_base + b * p.in_batch_stride;
    let last_px = pixels - 1u;
    let pxs = vec4<u32>(min(px0, last_px), min(px0 + WG_BLOCKED, last_px),
                        min(px0 + 2u * WG_BLOCKED, last_px), min(px0 + 3u * WG_BLOCKED, last_px));
    // This lane's weight rows: channels c0 + lane and c0 + 8 + lane (clamped; the excess is
    // never written).
    let row_a = p.w_base + min(c0 + (lane & 7u), p.out_c - 1u) * p.w_row;
    let row_b = p.w_base + min(c0 + 8u + (lane & 7u), p.out_c - 1u) * p.w_row;

    // acc_i holds channel c0 + i for the lane's 4 pixels.
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0); var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0); var acc8 = vec4<f32>(0.0);
    var acc9 = vec4<f32>(0.0); var acc10 = vec4<f32>(0.0); var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0); var acc13 = vec4<f32>(0.0); var acc14 = vec4<f32>(0.0);
    var acc15 = vec4<f32>(0.0);

    for (var ky = 0u; ky < p.k_h; ky++) {
        for (var kx = 0u; kx < p.k_w; kx++) {
            let off0 = tap_offset(pxs.x, ky, kx);
            let off1 = tap_offset(pxs.y, ky, kx);
            let off2 = tap_offset(pxs.z, ky, kx);
            let off3 = tap_offset(pxs.w, ky, kx);
            var wk = ky * p.k_w + kx;
            var ci_off = in_img;
            for (var ci = 0u; ci < p.in_c; ci++) {
                let x = vec4<f32>(fetch(off0, ci_off), fetch(off1, ci_off),
                                  fetch(off2, ci_off), fetch(off3, ci_off));
                let wa = weight[row_a + wk];
                let wb = weight[row_b + wk];
                acc0 = fma(vec4(subgroupBroadcast(wa, 0u)), x, acc0);
                acc1 = fma(vec4(subgroupBroadcast(wa, 1u)), x, acc1);
                acc2 = fma(vec4(subgroupBroadcast(wa, 2u)), x, acc2);
                acc3 = fma(vec4(subgroupBroadcast(wa, 3u)), x, acc3);
                acc4 = fma(vec4(subgroupBroadcast(wa, 4u)), x, acc4);
                acc5 = fma(vec4(subgroupBroadcast(wa, 5u)), x, acc5);
                acc6 = fma(vec4(subgroupBroadcast(wa, 6u)), x, acc6);
                acc7 = fma(vec4(subgroupBroadcast(wa, 7u)), x, acc7);
                acc8 = fma(vec4(subgroupBroadcast(wb, 0u)), x, acc8);
                acc9 = fma(vec4(subgroupBroadcast(wb, 1u)), x, acc9);
                acc10 = fma(vec4(subgroupBroadcast(wb, 2u)), x, acc10);
                acc11 = fma(vec4(subgroupBroadcast(wb, 3u)), x, acc11);
                acc12 = fma(vec4(subgroupBroadcast(wb, 4u)), x, acc12);
                acc13 = fma(vec4(subgroupBroadcast(wb, 5u)), x, acc13);
                acc14 = fma(vec4(subgroupBroadcast(wb, 6u)), x, acc14);
                acc15 = fma(vec4(subgroupBroadcast(wb, 7u)), x, acc15);
                wk += taps;
                ci_off += in_plane;
            }
        }
    }

    let out_img = p.out_base + b * p.out_batch_stride;
    let accs = array<vec4<f32>, 16>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8, acc9,
                                    acc10, acc11, acc12, acc13, acc14, acc15);
    for (var i = 0u; i < 16u; i++) {
        for (var j = 0u; j < 4u; j++) {
            write_out(c0 + i, px0 + j * WG_BLOCKED, pixels, out_img, accs[i][j]);
        }
    }
}
