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
