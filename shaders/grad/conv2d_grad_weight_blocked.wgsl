// Gradient of a convolution with respect to its weights, register-blocked like
// conv2d_blocked.wgsl (for adapters whose invocations are SIMD lanes of a CPU, where loads
// cost far more than arithmetic on registers; needs subgroups of at least 8 invocations).
//
// The weight gradient is a matrix product: rows are the chunk's output channels co, columns
// the (tap, input channel) pairs n = tap * in_c + ci of the weight rows, and the reduction runs
// over the output pixels (b, oy, ox) of the chunk's images:
//   dW[co][n] += grad[b, co, oy, ox] * input[b, ci, oy * stride_h + ky * dil_h - pad_top,
//                                            ox * stride_w + kx * dil_w - pad_left]
// (zero where the tap falls in the padding). Each invocation holds BLOCK_C output channels x
// 4 columns in registers; the workgroup shares the channels, and invocation `lid` takes
// columns n0 + lid + j * WG_BLOCKED, j < 4. Per reduction step it loads its 4 input values
// and BLOCK_C / 8 gradient values, the BLOCK_C values every lane needs gathered from 8 lanes
// with subgroupBroadcast.
//
// One dispatch sums over whole output rows: the pixels [range_start, range_start + range_len)
// of the chunk's images flattened as (image, row, column), both multiples of out_w; the host
// keeps range_len + range_len / out_w (the loops' iterations) within MAX_LOOP_STEPS and cuts
// longer sums into dispatches, each after the first adding to the sums (flag 4).
//
// Bindings: `input` (the layer's input: image b, chunk channel ci at in_base +
// b * in_batch_stride + ci * in_h * in_w), `grad` (the output's gradient, masked by the fused
// ReLU: out_base + b * out_batch_stride + co * out_h * out_w), `output` (the weight gradient:
// rows of w_row floats, the chunk's first input channel at w_base). Params:
// shaders/common/conv_params.wgsl (in_c and out_c the chunk's channels; total = workgroups:
// channel blocks (fastest) x column blocks). The lines marked `// BLOCK:` are generated from
// BLOCK_C in src/gpu/shader.rs.

fn write_columns(co: u32, col: vec4<u32>, cols: u32, dst: vec4<u32>, acc: vec4<f32>) {
    if (co >= p.out_c) {
        return;
    }
    let row = p.w_base + co * p.w_row;
    let add = (p.flags & 4u) != 0u;
    if (col.x < cols) {
        output[row + dst.x] = acc.x + select(0.0, output[row + dst.x], add);
    }
    if (col.y < cols) {
        output[row + dst.y] = acc.y + select(0.0, output[row + dst.y], add);
    }
    if (col.z < cols) {
        output[row + dst.z] = acc.z + select(0.0, output[row + dst.z], add);
    }
    if (col.w < cols) {
        output[row + dst.w] = acc.w + select(0.0, output[row + dst.w], add);
    }
}

@compute @workgroup_size(WG_BLOCKED)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.total) {
        return;
    }
    let taps = p.k_h * p.k_w;
    let cols = p.in_c * taps;
    let blocks_c = (p.out_c + BLOCK_C - 1u) / BLOCK_C;
    let c0 = (g % blocks_c) * BLOCK_C;
    let first = (g / blocks_c) * (4u * WG_BLOCKED) + lid;
    let col = vec4<u32>(first, first + WG_BLOCKED, first + 2u * WG_BLOCKED,
                        first + 3u * WG_BLOCKED);
    // Columns past the end compute a copy of the last one and are never written.
    let n = min(col, vec4<u32>(cols - 1u));
    let ci = n % p.in_c;
    let tap = n / p.in_c;
    let ky = tap / p.k_w;
    let kx = tap % p.k_w;
    // Where each column's rows and columns fall in the input, before adding the output's.
    let y_off = vec4<i32>(ky * p.dil_h) - i32(p.pad_top);
    let x_off = vec4<i32>(kx * p.dil_w) - i32(p.pad_left);
    let in_plane = p.in_h * p.in_w;
    let chan = ci * in_plane;
    let out_plane = p.out_h * p.out_w;
    let lane8 = lane & 7u;
    // Gradient plane of this lane's output channel c0 + 8 r + lane % 8 (clamped; channels past
    // the end are never written).
    // BLOCK: let plane{r} = min(c0 + {8r}u + lane8, p.out_c - 1u) * out_plane;
    // acc{i} holds output channel c0 + i at the invocation's 4 columns.
    // BLOCK: var acc{i} = vec4<f32>(0.0);

    let row0 = p.range_start / p.out_w;
    let rows = p.range_len / p.out_w;
    let in_w = i32(p.in_w);
    for (var r = 0u; r < rows; r++) {
        let b = (row0 + r) / p.out_h;
        let oy = (row0 + r) % p.out_h;
        let iy = vec4<i32>(i32(oy * p.stride_h)) + y_off;
        let row_ok = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(i32(p.in_h)));
        let x_row = vec4<u32>(p.in_base + b * p.in_batch_stride) + chan
            + vec4<u32>(max(iy, vec4<i32>(0))) * p.in_w;
        let g_row = p.out_base + b * p.out_batch_stride + oy * p.out_w;
        for (var ox = 0u; ox < p.out_w; ox++) {
            let ix = vec4<i32>(i32(ox * p.stride_w)) + x_off;
            let ok = row_ok & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(in_w));
            let at = select(vec4<u32>(0u), x_row + vec4<u32>(max(ix, vec4<i32>(0))), ok);
            let x = select(vec4<f32>(0.0),
                           vec4<f32>(input[at.x], input[at.y], input[at.z], input[at.w]), ok);
            // BLOCK: let d{r} = grad[g_row + plane{r} + ox];
            // BLOCK: acc{i} = fma(vec4(subgroupBroadcast(d{i/8}, {i%8}u)), x, acc{i});
        }
    }

    // Column n = tap * in_c + ci sits at tap * (w_row / taps) + ci of a weight row.
    let dst = tap * (p.w_row / taps) + ci;
    // BLOCK: write_columns(c0 + {i}u, col, cols, dst, acc{i});
}
