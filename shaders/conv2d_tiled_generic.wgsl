// Tiled convolution as an implicit matrix product (as conv2d_tiled.wgsl), generated for one
// tile shape: the constants GT_TILE_M x GT_TILE_N (output channels x pixels per workgroup
// tile), GT_PER_M x GT_PER_N (channels x pixels per invocation), GT_DEPTH (reduction depth
// staged per step) and GT_VEC (vector width, 1 or 4) are spliced in by src/gpu/shader.rs for
// each variant, with the two tiles in workgroup memory and their accessors (`tile_v` is f32 or
// vec4<f32>; `tile_w_get` reads GT_VEC words, `lane` picks one), and the workgroup has
// (GT_TILE_M / GT_PER_M) x (GT_TILE_N / GT_PER_N) invocations. Per image:
//   out[co, p] = sum_k W[co, k] * X[k, p],   k = (ky, kx, ci),  p = (oy, ox)
// with X the im2col matrix, never materialised.
//
// Invocation (tx, ty) = (lid % SIDE_N, lid / SIDE_N) owns the runs of GT_VEC channels starting
// at m0 + GT_VEC (ty + SIDE_M i) (i < GT_PER_M / GT_VEC) and of GT_VEC pixels starting at
// n0 + GT_VEC (tx + SIDE_N j) (j < GT_PER_N / GT_VEC), so neighbouring invocations read
// neighbouring vectors of the pixel tile and write neighbouring output pixels. Each step,
// every invocation loads LOADS_W weights (reduction index k0 + lid % GT_DEPTH of LOADS_W
// channels) and LOADS_X input values (pixel n0 + lid % GT_TILE_N at LOADS_X reduction
// indices) into registers, the arithmetic of the previous step runs from workgroup memory
// while they arrive, then they are stored (one tile buffer, two barriers per step). The
// weight tile's rows are padded by one vector so its transposing stores spread over banks.
//
// Params, bindings, flags and the split reduction (`k_split` slices, partial sums to
// out_base + (b k_split + s) out_batch_stride) as conv2d_tiled.wgsl; `total` is the number
// of workgroups: tiles over pixels (fastest) x tiles over channels x slices x images.

const SIDE_M: u32 = GT_TILE_M / GT_PER_M;
const SIDE_N: u32 = GT_TILE_N / GT_PER_N;
const WG_GENERIC: u32 = SIDE_M * SIDE_N;
const LOADS_W: u32 = GT_TILE_M * GT_DEPTH / WG_GENERIC;
const LOADS_X: u32 = GT_TILE_N * GT_DEPTH / WG_GENERIC;
const W_STRIDE: u32 = GT_TILE_M + GT_VEC;
const RUNS_M: u32 = GT_PER_M / GT_VEC;
const RUNS_N: u32 = GT_PER_N / GT_VEC;
const_assert WG_GENERIC % GT_DEPTH == 0u && WG_GENERIC % GT_TILE_N == 0u;
const_assert RUNS_M * GT_VEC == GT_PER_M && RUNS_N * GT_VEC == GT_PER_N;
const_assert LOADS_W * WG_GENERIC == GT_TILE_M * GT_DEPTH;
const_assert LOADS_X * WG_GENERIC == GT_TILE_N * GT_DEPTH;
const_assert LOADS_X * (WG_GENERIC / GT_TILE_N) == GT_DEPTH;

@compute @workgroup_size(WG_GENERIC)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.total) {
        return;
    }
    let pixels = p.out_h * p.out_w;
    let slices = max(p.k_split, 1u);
    // This workgroup's tile and share of the reduction, [k_begin, k_end), in whole steps.
    let work = tile_work(g, GT_TILE_M, GT_TILE_N, GT_DEPTH);
    let n0 = work.n0;
    let m0 = work.m0;
    let s = work.s;
    let b = work.b;
    let k_begin = work.k_begin;
    let k_end = work.k_end;
    let taps = p.k_h * p.k_w;
    let in_total = p.w_row / taps;
    let in_img = p.in_base + b * p.in_batch_stride;

    // Weight loads: reduction index k0 + wk of channels m0 + wm + i WG_GENERIC / GT_DEPTH
    // (clamped; channels past the end load zero).
    let wk = lid % GT_DEPTH;
    let wm = lid / GT_DEPTH;
    var w_row: array<u32, LOADS_W>;
    var w_ok: array<bool, LOADS_W>;
    for (var i = 0u; i < LOADS_W; i++) {
        let m = m0 + wm + i * (WG_GENERIC / GT_DEPTH);
        w_ok[i] = m < p.out_c;
        w_row[i] = p.w_base + min(m, p.out_c - 1u) * p.w_row;
    }
    // Input loads: pixel n0 + xn at reduction indices k0 + xk + i WG_GENERIC / GT_TILE_N. A
    // pixel past the end reads zeros (`window_corner`).
    let xn = lid % GT_TILE_N;
    let xk = lid / GT_TILE_N;
    let corner = window_corner(n0 + xn, pixels);
    // Its first reduction index, advanced through the step's LOADS_X indices, which leaves it
    // at the next step's first (LOADS_X strides of WG_GENERIC / GT_TILE_N make GT_DEPTH).
    var ki = k_index(k_begin + xk);

    let tx = lid % SIDE_N;
    let ty = lid / SIDE_N;
    var acc: array<array<f32, GT_PER_N>, GT_PER_M>;
    for (var i = 0u; i < GT_PER_M; i++) {
        for (var j = 0u; j < GT_PER_N; j++) {
            acc[i][j] = 0.0;
        }
    }
    var w_next: array<f32, LOADS_W>;
    var x_next: array<f32, LOADS_X>;
    var k0 = k_begin;
    loop {
        // Global loads of step k0 into registers (zeros past the end of the reduction).
        for (var i = 0u; i < LOADS_W; i++) {
            let k = k0 + wk;
            var w = 0.0;
            if (k < k_end && w_ok[i]) {
                w = f32(weight[w_row[i] + weight_offset(k, in_total)]);
            }
            w_next[i] = w;
        }
        for (var i = 0u; i < LOADS_X; i++) {
            x_next[i] = im2col_at(ki, k_end, corner, in_img);
            ki = k_step(ki, WG_GENERIC / GT_TILE_N);
        }
        // Arithmetic of step k0 - GT_DEPTH, staged in workgroup memory, while those loads fly.
        if (k0 > k_begin) {
            for (var kk = 0u; kk < GT_DEPTH; kk++) {
                var a: array<tile_v, RUNS_M>;
                var c: array<tile_v, RUNS_N>;
                for (var i = 0u; i < RUNS_M; i++) {
                    a[i] = tile_w_get(kk * W_STRIDE + (ty + i * SIDE_M) * GT_VEC);
                }
                for (var j = 0u; j < RUNS_N; j++) {
                    c[j] = tile_x_get(kk * GT_TILE_N + (tx + j * SIDE_N) * GT_VEC);
                }
                for (var i = 0u; i < GT_PER_M; i++) {
                    let ai = lane(a[i / GT_VEC], i % GT_VEC);
                    for (var j = 0u; j < GT_PER_N; j++) {
                        acc[i][j] = fma(ai, lane(c[j / GT_VEC], j % GT_VEC), acc[i][j]);
                    }
                }
            }
        }
        if (k0 >= k_end) {
            break;
        }
        workgroupBarrier();
        for (var i = 0u; i < LOADS_W; i++) {
            tile_w_set(wk * W_STRIDE + wm + i * (WG_GENERIC / GT_DEPTH), w_next[i]);
        }
        for (var i = 0u; i < LOADS_X; i++) {
            tile_x_set((xk + i * (WG_GENERIC / GT_TILE_N)) * GT_TILE_N + xn, x_next[i]);
        }
        workgroupBarrier();
        k0 += GT_DEPTH;
    }

    let out_img = p.out_base + (b * slices + s) * p.out_batch_stride;
    // Output (i, j) is channel i % GT_VEC of run i / GT_VEC, pixel j % GT_VEC of run j / GT_VEC.
    for (var i = 0u; i < GT_PER_M; i++) {
        let m = m0 + (ty + (i / GT_VEC) * SIDE_M) * GT_VEC + i % GT_VEC;
        for (var j = 0u; j < GT_PER_N; j++) {
            let n = n0 + (tx + (j / GT_VEC) * SIDE_N) * GT_VEC + j % GT_VEC;
            store_output(m, n, pixels, out_img, acc[i][j]);
        }
    }
}
