// Register-blocked convolution for adapters whose invocations are the SIMD lanes of a CPU (such
// as lavapipe), where each load from storage or workgroup memory costs a loop over the lanes
// while arithmetic on registers is cheap. No workgroup memory, no barriers.
//
// Each invocation computes BLOCK_C output channels x BLOCK_P pixels (one vec4 of pixels per
// channel, so BLOCK_P is 4) in registers. All invocations of a workgroup share the same
// BLOCK_C channels. Per reduction step (one input channel at one kernel tap) an invocation
// loads its BLOCK_P input values and BLOCK_C / 8 weights; the BLOCK_C weights the step needs
// are gathered from 8 lanes of the subgroup with subgroupBroadcast, so this kernel needs
// subgroups of at least 8 invocations. The reduction runs over taps (outer) and input channels
// (inner), so dilation only changes the tap offsets, computed once per tap.
//
// Params: shaders/common/conv_params.wgsl. Weights are stored per output channel as
// [kh][kw][in] rows of `w_row` elements; `w_base` is the chunk's first input channel in row 0.
// `total` is the number of workgroups: channel blocks (fastest) x pixel blocks x images.
// A workgroup covers BLOCK_C channels and BLOCK_P * WG_BLOCKED pixels; invocation `lid` takes
// pixels lid + j * WG_BLOCKED, j < BLOCK_P. The lines marked `// BLOCK:` are generated from
// BLOCK_C in src/gpu/shader.rs (32 channels, 64 for the wide variant `conv2d_blocked_64`).
//
// The packed variant `conv2d_blocked_packed` (64 channels) keeps only the lines marked
// `// P:` / `// BLOCK-P:` where the others keep `// S:` / `// BLOCK-S:`. It reads its weights
// from a copy conv2d_pack_blocked.wgsl makes before it runs: per block of BLOCK_C output
// channels, one row of BLOCK_C weights per reduction step (taps x input channels, in the order
// of the loops below), bound as `vec4`s from `w_base` (a multiple of 4). Lane l of a subgroup
// loads `vec4`s l and 8 + l of the step's row, channels 4l..4l+3 and 32+4l..32+4l+3: two
// contiguous `vec4` loads per step where the unpacked kernels make BLOCK_C / 8 scalar ones.

// Offset in an input plane of the tap (ky, kx) of output pixel `px`, or -1 in the padding.
fn tap_offset(px: u32, ky: u32, kx: u32) -> i32 {
    let iy = i32((px / p.out_w) * p.stride_h + ky * p.dil_h) - i32(p.pad_top);
    let ix = i32((px % p.out_w) * p.stride_w + kx * p.dil_w) - i32(p.pad_left);
    let ok = iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w);
    return select(-1, iy * i32(p.in_w) + ix, ok);
}

// The input value at `off` in the plane starting at `plane`, zero in the padding.
fn fetch(off: i32, plane: u32) -> f32 {
    return select(0.0, f32(input[plane + u32(max(off, 0))]), off >= 0);
}

fn write_pixels(co: u32, px0: u32, pixels: u32, out_img: u32, acc: vec4<f32>) {
    store_output(co, px0, pixels, out_img, acc.x);
    store_output(co, px0 + WG_BLOCKED, pixels, out_img, acc.y);
    store_output(co, px0 + 2u * WG_BLOCKED, pixels, out_img, acc.z);
    store_output(co, px0 + 3u * WG_BLOCKED, pixels, out_img, acc.w);
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
    let blocks_c = (p.out_c + BLOCK_C - 1u) / BLOCK_C;
    let blocks_p = (pixels + BLOCK_P * WG_BLOCKED - 1u) / (BLOCK_P * WG_BLOCKED);
    let c0 = (g % blocks_c) * BLOCK_C;
    let px0 = ((g / blocks_c) % blocks_p) * (BLOCK_P * WG_BLOCKED) + lid;
    let b = g / (blocks_c * blocks_p);
    let in_plane = p.in_h * p.in_w;
    let in_img = p.in_base + b * p.in_batch_stride;
    let in_total = p.w_row / (p.k_h * p.k_w);
    // Pixels past the end compute a copy of the last one and are never written.
    let last = pixels - 1u;
    let q = vec4<u32>(min(px0, last), min(px0 + WG_BLOCKED, last),
                      min(px0 + 2u * WG_BLOCKED, last), min(px0 + 3u * WG_BLOCKED, last));
    // Weight row r of this lane: output channel c0 + 8 r + lane % 8 (clamped; channels past
    // the end are never written).
    let lane8 = lane & 7u;
    // BLOCK-S: let row{r} = p.w_base + min(c0 + {8r}u + lane8, p.out_c - 1u) * p.w_row;
    // P: var wv = p.w_base / 4u + (c0 / BLOCK_C) * p.k_h * p.k_w * p.in_c * (BLOCK_C / 4u) + lane8;
    // acc{i} holds output channel c0 + i at the invocation's 4 pixels.
    // BLOCK: var acc{i} = vec4<f32>(0.0);

    for (var ky = 0u; ky < p.k_h; ky++) {
        for (var kx = 0u; kx < p.k_w; kx++) {
            let off = vec4<i32>(tap_offset(q.x, ky, kx), tap_offset(q.y, ky, kx),
                                tap_offset(q.z, ky, kx), tap_offset(q.w, ky, kx));
            var wk = (ky * p.k_w + kx) * in_total;
            var plane = in_img;
            for (var ci = 0u; ci < p.in_c; ci++) {
                let x = vec4<f32>(fetch(off.x, plane), fetch(off.y, plane),
                                  fetch(off.z, plane), fetch(off.w, plane));
                // BLOCK-S: let w{r} = f32(weight[row{r} + wk]);
                // BLOCK-S: acc{i} = fma(vec4(subgroupBroadcast(w{i/8}, {i%8}u)), x, acc{i});
                // BLOCK-P: let w{q} = vec4<f32>(weight[wv + {8q}u]);
                // BLOCK-P: acc{i} = fma(vec4(subgroupBroadcast(w{i/32}[{i%4}], {i%32/4}u)), x, acc{i});
                // P: wv += BLOCK_C / 4u;
                wk += 1u;
                plane += in_plane;
            }
        }
    }

    let out_img = p.out_base + b * p.out_batch_stride;
    // BLOCK: write_pixels(c0 + {i}u, px0, pixels, out_img, acc{i});
}
