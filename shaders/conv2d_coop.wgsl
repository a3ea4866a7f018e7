// Tiled convolution as an implicit matrix product (as conv2d_tiled_generic.wgsl) whose
// multiply-adds run on cooperative matrices (tensor cores, simdgroup matrices): f16 operands,
// f32 accumulators. src/gpu/shader.rs splices in COOP_S, the side of the adapter's square
// f16 x f16 + f32 configuration (8 or 16), COOP_MAX_SUBGROUPS (below), and the matrix
// types `coop_a`, `coop_b` (f16 operands) and `coop_c` (f32 accumulator) of that side; this
// file needs the `wgpu_cooperative_matrix` and `f16` extensions and subgroups. Per image:
//   out[co, p] = sum_k W[co, k] * X[k, p],   k = (ky, kx, ci),  p = (oy, ox)
// with X the im2col matrix, never materialised.
//
// A workgroup computes a tile of COOP_TILE (4 COOP_S) output channels x COOP_TILE pixels: a
// 4 x 4 grid of COOP_S x COOP_S blocks, in four groups of 2 x 2 blocks, one group per
// subgroup, each block an f32 accumulator matrix held through the whole reduction. Each step
// every invocation stores its share of COOP_DEPTH (2 COOP_S) reduction indices of the weight
// tile ([m][k]) and of the input tile ([k][n]), loaded into registers as f16 during the
// previous step (zeros past the ends), in workgroup memory, issues the next step's loads, and
// every subgroup multiplies the staged step in while they arrive (one staging buffer, two
// barriers per step). The workgroup has WG_COOP (128) invocations, so any subgroup size up
// to 128 that divides it works: with fewer than four subgroups they run the reduction again
// for the remaining groups (`rounds`, the same for the whole workgroup); with more, the extra
// subgroups repeat group 3's work and store it to rows below the output tile that nothing
// reads. (Cooperative-matrix operations must be in control flow uniform over the workgroup,
// so subgroups differ only in the addresses they use.) COOP_MAX_SUBGROUPS caps the subgroups
// that work, the others being extra: WG_COOP (no cap) except where
// `DILATED_COOP_MAX_SUBGROUPS` asks for fewer, so that the tests run the rounds of devices
// with subgroups of 64 or more on devices with narrow ones. At the end the accumulators are
// stored to a workgroup tile and every invocation writes its share of outputs through
// `finish`, as the other tiled kernels do (split reductions included).
//
// Params, bindings, flags and the split reduction as conv2d_tiled.wgsl; `total` is the number
// of workgroups: tiles over pixels (fastest) x tiles over channels x slices x images.

const COOP_TILE: u32 = 4u * COOP_S;
const COOP_DEPTH: u32 = 2u * COOP_S;
const COOP_GROUPS: u32 = 4u;
// Weights and input values each invocation stages per step.
const COOP_LOADS_W: u32 = COOP_TILE * COOP_DEPTH / WG_COOP;
const COOP_LOADS_X: u32 = COOP_DEPTH * COOP_TILE / WG_COOP;
const_assert WG_COOP % COOP_TILE == 0u && WG_COOP % COOP_DEPTH == 0u;
const_assert COOP_LOADS_X * (WG_COOP / COOP_TILE) == COOP_DEPTH;

var<workgroup> coop_w: array<f16, COOP_TILE * COOP_DEPTH>; // [m][k], rows COOP_DEPTH long
var<workgroup> coop_x: array<f16, COOP_DEPTH * COOP_TILE>; // [k][n], rows COOP_TILE long
// [m][n], then COOP_S rows where the extra subgroups' stores go.
var<workgroup> coop_out: array<f32, (COOP_TILE + COOP_S) * COOP_TILE>;
var<workgroup> coop_subgroups: u32;
// The operands of the next step, in registers.
var<private> w_next: array<f16, COOP_LOADS_W>;
var<private> x_next: array<f16, COOP_LOADS_X>;

// Loads step k0 of the weight tile (channels m0 + wm + i WG_COOP / COOP_DEPTH at reduction
// index k0 + wk) and of the input tile (reduction indices `first` + i WG_COOP / COOP_TILE of
// the pixel whose window corner is `corner`, `first` being k0 + xk) into `w_next` and
// `x_next`, zeros past the ends; returns the index advanced to the next step's first
// (COOP_LOADS_X strides of WG_COOP / COOP_TILE make COOP_DEPTH).
fn coop_load(k0: u32, k_end: u32, m0: u32, wm: u32, wk: u32, in_total: u32, first: KIndex,
             corner: vec2<i32>, in_img: u32) -> KIndex {
    for (var i = 0u; i < COOP_LOADS_W; i++) {
        let m = m0 + wm + i * (WG_COOP / COOP_DEPTH);
        let k = k0 + wk;
        var w = 0.0;
        if (k < k_end && m < p.out_c) {
            w = f32(weight[p.w_base + m * p.w_row + weight_offset(k, in_total)]);
        }
        w_next[i] = f16(w);
    }
    var ki = first;
    for (var i = 0u; i < COOP_LOADS_X; i++) {
        x_next[i] = f16(im2col_at(ki, k_end, corner, in_img));
        ki = k_step(ki, WG_COOP / COOP_TILE);
    }
    return ki;
}

@compute @workgroup_size(WG_COOP)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32,
        @builtin(num_subgroups) sgs: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.total) {
        return;
    }
    let pixels = p.out_h * p.out_w;
    let slices = max(p.k_split, 1u);
    let work = tile_work(g, COOP_TILE, COOP_TILE, COOP_DEPTH);
    let n0 = work.n0;
    let m0 = work.m0;
    let taps = p.k_h * p.k_w;
    let in_total = p.w_row / taps;
    let in_img = p.in_base + work.b * p.in_batch_stride;

    // Weight staging: reduction index k0 + wk of channels m0 + wm + i WG_COOP / COOP_DEPTH.
    let wk = lid % COOP_DEPTH;
    let wm = lid / COOP_DEPTH;
    // Input staging: pixel n0 + xn at reduction indices k0 + xk + i WG_COOP / COOP_TILE. A
    // pixel past the end reads zeros (`window_corner`).
    let xn = lid % COOP_TILE;
    let xk = lid / COOP_TILE;
    let corner = window_corner(n0 + xn, pixels);

    // The same number of rounds in every subgroup of the workgroup. At most
    // COOP_MAX_SUBGROUPS subgroups work (all, except in tests that run the rounds of devices
    // with wide subgroups on narrow ones); the others are extra.
    if (lid == 0u) {
        coop_subgroups = min(sgs, COOP_MAX_SUBGROUPS);
    }
    let subgroups = workgroupUniformLoad(&coop_subgroups);
    let rounds = (COOP_GROUPS + subgroups - 1u) / subgroups;
    for (var round = 0u; round < rounds; round++) {
        // This subgroup's group of 2 x 2 blocks (group 3 again, stored out of the way, when
        // past the last group or extra).
        let group = select(COOP_GROUPS, sg + round * subgroups, sg < subgroups);
        let working = group < COOP_GROUPS;
        let mine = min(group, COOP_GROUPS - 1u);
        let bm = (mine / 2u) * 2u * COOP_S;
        let bn = (mine % 2u) * 2u * COOP_S;
        let store_m = select(COOP_TILE, bm, working);
        var acc00 = coop_c();
        var acc01 = coop_c();
        var acc10 = coop_c();
        var acc11 = coop_c();
        // Step k0's operands are loaded into registers while step k0 - COOP_DEPTH's
        // multiply-adds run.
        var ki = coop_load(work.k_begin, work.k_end, m0, wm, wk, in_total,
                           k_index(work.k_begin + xk), corner, in_img);
        var k0 = work.k_begin;
        loop {
            if (k0 >= work.k_end) {
                break;
            }
            // Every subgroup is done with the staged step before it is overwritten.
            workgroupBarrier();
            for (var i = 0u; i < COOP_LOADS_W; i++) {
                coop_w[(wm + i * (WG_COOP / COOP_DEPTH)) * COOP_DEPTH + wk] = w_next[i];
            }
            for (var i = 0u; i < COOP_LOADS_X; i++) {
                coop_x[(xk + i * (WG_COOP / COOP_TILE)) * COOP_TILE + xn] = x_next[i];
            }
            workgroupBarrier();
            ki = coop_load(k0 + COOP_DEPTH, work.k_end, m0, wm, wk, in_total, ki, corner, in_img);
            for (var kk = 0u; kk < COOP_DEPTH; kk += COOP_S) {
                let depth = COOP_DEPTH;
                let tile = COOP_TILE;
                let ia0 = bm * COOP_DEPTH + kk;
                let ia1 = (bm + COOP_S) * COOP_DEPTH + kk;
                let ib0 = kk * COOP_TILE + bn;
                let ib1 = kk * COOP_TILE + bn + COOP_S;
                let a0 = coopLoadT<coop_a>(&coop_w[ia0], depth);
                let a1 = coopLoadT<coop_a>(&coop_w[ia1], depth);
                let b0 = coopLoadT<coop_b>(&coop_x[ib0], tile);
                let b1 = coopLoadT<coop_b>(&coop_x[ib1], tile);
                acc00 = coopMultiplyAdd(a0, b0, acc00);
                acc01 = coopMultiplyAdd(a0, b1, acc01);
                acc10 = coopMultiplyAdd(a1, b0, acc10);
                acc11 = coopMultiplyAdd(a1, b1, acc11);
            }
            k0 += COOP_DEPTH;
        }
        // An extra subgroup stores all four blocks to the one block below the tile.
        let tile = COOP_TILE;
        let i00 = store_m * COOP_TILE + bn;
        let i01 = select(i00, bm * COOP_TILE + bn + COOP_S, working);
        let i10 = select(i00, (bm + COOP_S) * COOP_TILE + bn, working);
        let i11 = select(i00, (bm + COOP_S) * COOP_TILE + bn + COOP_S, working);
        coopStoreT(acc00, &coop_out[i00], tile);
        coopStoreT(acc01, &coop_out[i01], tile);
        coopStoreT(acc10, &coop_out[i10], tile);
        coopStoreT(acc11, &coop_out[i11], tile);
    }
    workgroupBarrier();

    let out_img = p.out_base + (work.b * slices + work.s) * p.out_batch_stride;
    for (var i = lid; i < COOP_TILE * COOP_TILE; i += WG_COOP) {
        let m = i / COOP_TILE;
        let n = i % COOP_TILE;
        store_output(m0 + m, n0 + n, pixels, out_img, coop_out[i]);
    }
}
