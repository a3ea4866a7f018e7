// Tiled convolution as an implicit matrix product, per image:
//   out[co, p] = sum_k W[co, k] * X[k, p],   k = (ky, kx, ci),  p = (oy, ox)
// where X is the im2col matrix, never materialised. Each workgroup owns a TILE_M (128) output
// channels x TILE_N (128) pixels block of the output; per step it stages a TILE_M x TILE_K (8)
// block of weights and a TILE_K x TILE_N block of input patches in workgroup memory, and each of
// its 16 x 16 invocations accumulates 8 x 8 outputs (8 channels x 8 pixels, sixteen vec4
// registers). Each step reads two vec4 of weights and two vec4 of pixels from workgroup memory
// for 64 multiply-adds. The next step's global loads are issued into registers before the
// current step's arithmetic, so their latency hides behind it (one tile buffer, two barriers).
// With POINTWISE (1x1, stride 1, no padding) X is the input itself.
//
// The input tile is stored as vec4 v of row k holding pixels v, v + 32, v + 64, v + 96 of the
// tile. Invocation (tx, ty) = (lid % 16, lid / 16) owns channels 4 ty .. 4 ty + 3 and
// 64 + 4 ty .. 64 + 4 ty + 3 of the tile (weight vec4s ty and ty + 16), and pixels tx + 16 i,
// i < 8 (input vec4s tx and tx + 16), so a step's workgroup-memory reads are contiguous vec4
// runs across the invocations, and each output row is written 16 consecutive pixels at a time.
//
// Loading, invocation lid fetches:
// - weights: reduction index k0 + lid % 8 of the 4 channels 4 (lid / 8) .. + 3 (a warp reads
//   4 rows x 8 consecutive floats), stored as one vec4 of the [k][m] tile;
// - input: reduction index k0 + lid / 32 at pixels lid % 32 + 32 j, j < 4 (each of a warp's
//   4 loads reads 32 consecutive pixels), stored as one vec4 of the [k][n] tile. The reduction
//   index is carried as (ci, ky, kx) and advanced by TILE_K each step, so no division is needed
//   per load.
//
// Params: shaders/common/conv_params.wgsl. Weight rows of
// `w_row` elements are laid out [kh][kw][in]; flags 1 bias / 2 ReLU / 4 accumulate. `total` is
// the number of workgroups: tiles over pixels (fastest, so neighbouring workgroups share a weight
// tile) x tiles over output channels x reduction slices (`k_split`) x images. With a split
// reduction each slice covers a run of whole TILE_K steps and writes its raw partial sums (the
// host clears the flags) to slice `s` of image `b` at `out_base + (b k_split + s)
// out_batch_stride`.

const_assert TILE_M == 128u && TILE_N == 128u && TILE_K == 8u && WG_TILED == 256u;

// vec4s per k row of the weight tile, padded by one so the transposing stores spread over banks.
const W_ROW4: u32 = TILE_M / 4u + 1u;
const X_ROW4: u32 = TILE_N / 4u;
var<workgroup> tile_w: array<vec4<f32>, TILE_K * W_ROW4>; // [k][m / 4]
var<workgroup> tile_x: array<vec4<f32>, TILE_K * X_ROW4>; // [k][n % 32], component n / 32

// Writes the 8 outputs of one channel: pixels px + 32 j (`lo`) and px + 16 + 32 j (`hi`).
fn store_row(co: u32, px: u32, pixels: u32, out_img: u32, lo: vec4<f32>, hi: vec4<f32>) {
    store_output(co, px, pixels, out_img, lo.x);
    store_output(co, px + 16u, pixels, out_img, hi.x);
    store_output(co, px + 32u, pixels, out_img, lo.y);
    store_output(co, px + 48u, pixels, out_img, hi.y);
    store_output(co, px + 64u, pixels, out_img, lo.z);
    store_output(co, px + 80u, pixels, out_img, hi.z);
    store_output(co, px + 96u, pixels, out_img, lo.w);
    store_output(co, px + 112u, pixels, out_img, hi.w);
}

@compute @workgroup_size(WG_TILED)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.total) {
        return;
    }
    let pixels = p.out_h * p.out_w;
    let slices = max(p.k_split, 1u);
    // This workgroup's tile and share of the reduction, [k_begin, k_end), in whole steps.
    let work = tile_work(g, TILE_M, TILE_N, TILE_K);
    let n0 = work.n0;
    let m0 = work.m0;
    let s = work.s;
    let b = work.b;
    let k_begin = work.k_begin;
    let k_end = work.k_end;
    let taps = p.k_h * p.k_w;
    let in_total = p.w_row / taps;
    let in_img = p.in_base + b * p.in_batch_stride;
    let in_plane = p.in_h * p.in_w;

    // Weight loads: 4 channel rows (clamped; channels past the end load zero) at one k.
    let ka = lid % TILE_K;
    let ma = (lid / TILE_K) * 4u;
    let last_c = p.out_c - 1u;
    let rows = vec4<u32>(min(m0 + ma, last_c), min(m0 + ma + 1u, last_c),
                         min(m0 + ma + 2u, last_c), min(m0 + ma + 3u, last_c)) * p.w_row
               + vec4<u32>(p.w_base);
    let row_ok = vec4<u32>(m0 + ma, m0 + ma + 1u, m0 + ma + 2u, m0 + ma + 3u) < vec4<u32>(p.out_c);

    // Input loads: 4 pixels 32 apart at one k. Pixel j's window corner (y0[j], x0[j]);
    // pixels past the end are marked by y0 = -2^30, which no tap brings into the image.
    let kb = lid / X_ROW4;
    let nb = lid % X_ROW4;
    var y0: vec4<i32>;
    var x0: vec4<i32>;
    var q: vec4<u32>;
    for (var j = 0u; j < 4u; j++) {
        let px = n0 + nb + 32u * j;
        q[j] = px;
        if (px < pixels) {
            y0[j] = i32((px / p.out_w) * p.stride_h) - i32(p.pad_top);
            x0[j] = i32((px % p.out_w) * p.stride_w) - i32(p.pad_left);
        } else {
            y0[j] = -1073741824;
            x0[j] = 0;
        }
    }
    // (ci, ky, kx) of reduction index k0 + kb.
    var ci = (k_begin + kb) % p.in_c;
    let tap = (k_begin + kb) / p.in_c;
    var ky = tap / p.k_w;
    var kx = tap % p.k_w;

    let tx = lid % 16u;
    let ty = lid / 16u;
    // c{i}{h}: channel i of this invocation (4 ty + i, or 64 + 4 ty + i - 4 for i >= 4) at
    // its pixels tx + 32 j (h = 0) or tx + 16 + 32 j (h = 1), j < 4.
    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);

    var w_next = vec4<f32>(0.0);
    var x_next = vec4<f32>(0.0);
    var k0 = k_begin;
    loop {
        // Global loads of step k0 into registers (zeros past the end of the reduction).
        {
            let k = k0 + ka;
            var wv = vec4<f32>(0.0);
            if (k < k_end) {
                var wk = k;
                if (p.in_c != in_total) {
                    // An input-channel chunk: rows hold all in_total channels of each tap.
                    wk = (k / p.in_c) * in_total + k % p.in_c;
                }
                wv = select(wv, vec4<f32>(f32(weight[rows.x + wk]), f32(weight[rows.y + wk]),
                                          f32(weight[rows.z + wk]), f32(weight[rows.w + wk])),
                            row_ok);
            }
            w_next = wv;
            var xv = vec4<f32>(0.0);
            if (k0 + kb < k_end) {
                let plane = in_img + ci * in_plane;
                if (POINTWISE) {
                    for (var j = 0u; j < 4u; j++) {
                        if (q[j] < pixels) {
                            xv[j] = f32(input[plane + q[j]]);
                        }
                    }
                } else {
                    let dy = i32(ky * p.dil_h);
                    let dx = i32(kx * p.dil_w);
                    for (var j = 0u; j < 4u; j++) {
                        let iy = y0[j] + dy;
                        let ix = x0[j] + dx;
                        if (iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w)) {
                            xv[j] = f32(input[plane + u32(iy) * p.in_w + u32(ix)]);
                        }
                    }
                }
            }
            x_next = xv;
            ci += TILE_K;
            loop {
                if (ci < p.in_c) {
                    break;
                }
                ci -= p.in_c;
                kx += 1u;
                if (kx == p.k_w) {
                    kx = 0u;
                    ky += 1u;
                }
            }
        }
        // Arithmetic of step k0 - TILE_K, staged in workgroup memory, while those loads fly.
        if (k0 > k_begin) {
            for (var kk = 0u; kk < TILE_K; kk++) {
                let a0 = tile_w[kk * W_ROW4 + ty];
                let a1 = tile_w[kk * W_ROW4 + ty + 16u];
                let b0 = tile_x[kk * X_ROW4 + tx];
                let b1 = tile_x[kk * X_ROW4 + tx + 16u];
                c00 = fma(vec4<f32>(a0.x), b0, c00);
                c01 = fma(vec4<f32>(a0.x), b1, c01);
                c10 = fma(vec4<f32>(a0.y), b0, c10);
                c11 = fma(vec4<f32>(a0.y), b1, c11);
                c20 = fma(vec4<f32>(a0.z), b0, c20);
                c21 = fma(vec4<f32>(a0.z), b1, c21);
                c30 = fma(vec4<f32>(a0.w), b0, c30);
                c31 = fma(vec4<f32>(a0.w), b1, c31);
                c40 = fma(vec4<f32>(a1.x), b0, c40);
                c41 = fma(vec4<f32>(a1.x), b1, c41);
                c50 = fma(vec4<f32>(a1.y), b0, c50);
                c51 = fma(vec4<f32>(a1.y), b1, c51);
                c60 = fma(vec4<f32>(a1.z), b0, c60);
                c61 = fma(vec4<f32>(a1.z), b1, c61);
                c70 = fma(vec4<f32>(a1.w), b0, c70);
                c71 = fma(vec4<f32>(a1.w), b1, c71);
            }
        }
        if (k0 >= k_end) {
            break;
        }
        workgroupBarrier();
        tile_w[ka * W_ROW4 + ma / 4u] = w_next;
        tile_x[kb * X_ROW4 + nb] = x_next;
        workgroupBarrier();
        k0 += TILE_K;
    }

    let out_img = p.out_base + (b * slices + s) * p.out_batch_stride;
    let px = n0 + tx;
    store_row(m0 + 4u * ty + 0u, px, pixels, out_img, c00, c01);
    store_row(m0 + 4u * ty + 1u, px, pixels, out_img, c10, c11);
    store_row(m0 + 4u * ty + 2u, px, pixels, out_img, c20, c21);
    store_row(m0 + 4u * ty + 3u, px, pixels, out_img, c30, c31);
    store_row(m0 + 64u + 4u * ty + 0u, px, pixels, out_img, c40, c41);
    store_row(m0 + 64u + 4u * ty + 1u, px, pixels, out_img, c50, c51);
    store_row(m0 + 64u + 4u * ty + 2u, px, pixels, out_img, c60, c61);
    store_row(m0 + 64u + 4u * ty + 3u, px, pixels, out_img, c70, c71);
}
