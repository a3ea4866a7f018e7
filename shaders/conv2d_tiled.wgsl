// Tiled convolution as an implicit matrix product, per image:
//   out[co, p] = sum_k W[co, k] * X[k, p],   k = (ky, kx, ci),  p = (oy, ox)
// where X is the im2col matrix, never materialised: each workgroup stages a TILE_M x TILE_K
// block of weights and a TILE_K x TILE_N block of input patches in workgroup memory, and each
// of its 16 x 16 invocations accumulates 4 x 4 outputs (4 output channels x 4 pixels) in
// registers. With POINTWISE (1x1, stride 1, no padding) X is the input itself.
//
// Buffers and Params are those of conv2d_direct.wgsl (windows with base offsets, weight rows
// of `w_row` elements laid out [kh][kw][in], flags 1 bias / 2 ReLU / 4 accumulate). `total` is the number of
// workgroups: tiles over pixels x tiles over output channels x images.

// Params and bindings: shaders/conv_interface.wgsl (spliced in before this file).

var<workgroup> tile_w: array<f32, TILE_K * TILE_M>; // [k][m]
var<workgroup> tile_x: array<f32, TILE_K * TILE_N>; // [k][n]

@compute @workgroup_size(WG_TILED)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.total) {
        return;
    }
    let pixels = p.out_h * p.out_w;
    let tiles_n = (pixels + TILE_N - 1u) / TILE_N;
    let tiles_m = (p.out_c + TILE_M - 1u) / TILE_M;
    let n0 = (g % tiles_n) * TILE_N;
    let m0 = ((g / tiles_n) % tiles_m) * TILE_M;
    let b = g / (tiles_n * tiles_m);

    let taps = p.k_h * p.k_w;
    let k_total = p.in_c * taps;
    let in_total = p.w_row / taps;
    let in_img = p.in_base + b * p.in_batch_stride;
    let in_plane = p.in_h * p.in_w;

    // This invocation's column of the input tile is fixed: decode its pixel once.
    let load_n = lid % TILE_N;
    let load_p = n0 + load_n;
    let p_ok = load_p < pixels;
    let oy = load_p / p.out_w;
    let ox = load_p % p.out_w;
    let y0 = i32(oy * p.stride_h) - i32(p.pad_top);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_left);

    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var k0 = 0u; k0 < k_total; k0 += TILE_K) {
        // Weights: TILE_M x TILE_K, read along k (contiguous in memory).
        for (var r = 0u; r < (TILE_M * TILE_K) / WG_TILED; r++) {
            let e = lid + r * WG_TILED;
            let m = e / TILE_K;
            let kk = e % TILE_K;
            var v = 0.0;
            if (m0 + m < p.out_c && k0 + kk < k_total) {
                let k = k0 + kk;
                v = weight[p.w_base + (m0 + m) * p.w_row + (k / p.in_c) * in_total + k % p.in_c];
            }
            tile_w[kk * TILE_M + m] = v;
        }
        // Input patches: TILE_K x TILE_N, read along pixels.
        for (var r = 0u; r < (TILE_K * TILE_N) / WG_TILED; r++) {
            let kk = lid / TILE_N + r * (WG_TILED / TILE_N);
            let k = k0 + kk;
            var v = 0.0;
            if (p_ok && k < k_total) {
                if (POINTWISE) {
                    v = input[in_img + k * in_plane + load_p];
                } else {
                    let ci = k % p.in_c;
                    let t = k / p.in_c;
                    let iy = y0 + i32((t / p.k_w) * p.dil_h);
                    let ix = x0 + i32((t % p.k_w) * p.dil_w);
                    if (iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w)) {
                        v = input[in_img + ci * in_plane + u32(iy) * p.in_w + u32(ix)];
                    }
                }
            }
            tile_x[kk * TILE_N + load_n] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<f32, 4>;
            var x: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = tile_w[kk * TILE_M + ty * 4u + i];
                x[i] = tile_x[kk * TILE_N + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a[i], x[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    let out_img = p.out_base + b * p.out_batch_stride;
    for (var i = 0u; i < 4u; i++) {
        let co = m0 + ty * 4u + i;
        if (co >= p.out_c) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let px = n0 + tx + 16u * j;
            if (px >= pixels) {
                continue;
            }
            let o = out_img + co * pixels + px;
            var v = acc[i][j];
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
    }
}
