// The share of a tiled convolution's work that workgroup `g` does, for tiles of `tile_m`
// output channels x `tile_n` pixels and reduction steps of `depth`: the tile's first pixel
// `n0` and channel `m0`, its slice `s` of a split reduction (`k_split` slices), its image `b`,
// and its run of the reduction [k_begin, k_end) in whole steps. Workgroups are ordered tiles
// over pixels (fastest, so neighbours share a weight tile), tiles over channels, slices,
// images. Uniform over the workgroup, as the barriers of the kernels that use it need.

struct TileWork {
    n0: u32,
    m0: u32,
    s: u32,
    b: u32,
    k_begin: u32,
    k_end: u32,
}

fn tile_work(g: u32, tile_m: u32, tile_n: u32, depth: u32) -> TileWork {
    let pixels = p.out_h * p.out_w;
    let tiles_n = (pixels + tile_n - 1u) / tile_n;
    let tiles_m = (p.out_c + tile_m - 1u) / tile_m;
    let slices = max(p.k_split, 1u);
    var w: TileWork;
    w.n0 = (g % tiles_n) * tile_n;
    w.m0 = ((g / tiles_n) % tiles_m) * tile_m;
    w.s = (g / (tiles_n * tiles_m)) % slices;
    w.b = g / (tiles_n * tiles_m * slices);
    let k_total = p.in_c * p.k_h * p.k_w;
    let k_per = (k_total + slices * depth - 1u) / (slices * depth) * depth;
    w.k_begin = min(w.s * k_per, k_total);
    w.k_end = min(w.k_begin + k_per, k_total);
    return w;
}

// The top-left tap (before dilation) of output pixel `px`'s input window, as (y, x); a pixel
// past the end (`px >= pixels`) gets y = -2^30, which no tap brings into the input.
fn window_corner(px: u32, pixels: u32) -> vec2<i32> {
    if (px >= pixels) {
        return vec2<i32>(-1073741824, 0);
    }
    return vec2<i32>(i32((px / p.out_w) * p.stride_h) - i32(p.pad_top),
                     i32((px % p.out_w) * p.stride_w) - i32(p.pad_left));
}

// Reduction index k and its parts, k = (ky k_w + kx) in_c + ci (as the weight rows), so that
// a run of indices takes no division per index (`k_step`).
struct KIndex {
    k: u32,
    ci: u32,
    kx: u32,
    ky: u32,
}

fn k_index(k: u32) -> KIndex {
    let tap = k / p.in_c;
    let ky = tap / p.k_w;
    return KIndex(k, k - tap * p.in_c, tap - ky * p.k_w, ky);
}

// `i` advanced by `by`: a carry into the next tap where `by` is at most `in_c`, the divisions
// of `k_index` otherwise (layers with fewer input channels than `by`).
fn k_step(i: KIndex, by: u32) -> KIndex {
    if (by > p.in_c) {
        return k_index(i.k + by);
    }
    var r = KIndex(i.k + by, i.ci + by, i.kx, i.ky);
    if (r.ci >= p.in_c) {
        r.ci -= p.in_c;
        r.kx += 1u;
        if (r.kx == p.k_w) {
            r.kx = 0u;
            r.ky += 1u;
        }
    }
    return r;
}

// Element (k, pixel) of the im2col matrix for the pixel whose window corner is `corner` in
// the image whose input starts at `in_img`: 0 past `k_end` or where the tap falls in the
// padding.
fn im2col_at(k: KIndex, k_end: u32, corner: vec2<i32>, in_img: u32) -> f32 {
    if (k.k >= k_end) {
        return 0.0;
    }
    let iy = corner.x + i32(k.ky * p.dil_h);
    let ix = corner.y + i32(k.kx * p.dil_w);
    if (iy < 0 || iy >= i32(p.in_h) || ix < 0 || ix >= i32(p.in_w)) {
        return 0.0;
    }
    return f32(input[in_img + k.ci * p.in_h * p.in_w + u32(iy) * p.in_w + u32(ix)]);
}

// Position of reduction index k in a weight row of the chunk: rows hold all `in_total` input
// channels of each tap, of which an input-channel chunk reduces over `in_c`.
fn weight_offset(k: u32, in_total: u32) -> u32 {
    if (p.in_c == in_total) {
        return k;
    }
    return (k / p.in_c) * in_total + k % p.in_c;
}
