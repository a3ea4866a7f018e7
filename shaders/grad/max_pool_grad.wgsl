// Gradient of max pooling with respect to its input, as a gather: one invocation per input
// element (x, y) of a chunk of `planes` channel planes (n * c flattened). It visits, in
// row-major order, every pooling window (oy, ox) that covers it, finds that window's winner
// the way the forward pass does (the first largest input inside the image in row-major scan
// order, a strictly larger value replacing it; NaN never replaces it), and sums the windows'
// output gradients where the winner is this element. Overlapping windows (stride < kernel) add
// up; nothing is written twice, so the result needs no atomics and is the same on every run.
//
// Bindings: `input` the pooling's input (planes of in_h x in_w from `x_base`), `grad` the
// gradient of its output (planes of out_h x out_w from `g_base`), `output` the input's gradient
// (the input's layout, from `dx_base`). `total` = planes * in_h * in_w.

struct Params {
    planes: u32, in_h: u32, in_w: u32, out_h: u32,
    out_w: u32, x_base: u32, g_base: u32, dx_base: u32,
    k_h: u32, k_w: u32, stride_h: u32, stride_w: u32,
    pad_top: u32, pad_left: u32, total: u32, pad0: u32,
}

fn element_count() -> u32 {
    return p.total;
}

// First and last output index (inclusive) whose window along one axis covers input index
// `at` (padded coordinate `at + pad`); first > last when none does.
fn covering(at: u32, pad: u32, k: u32, stride: u32, count: u32) -> vec2<i32> {
    let q = at + pad;
    var lo = 0u;
    if (q >= k) {
        lo = (q - k) / stride + 1u;
    }
    let hi = min(i32(q / stride), i32(count) - 1);
    return vec2<i32>(i32(lo), hi);
}

fn element(i: u32) {
    let plane_in = p.in_h * p.in_w;
    let ix = i % p.in_w;
    let iy = (i / p.in_w) % p.in_h;
    let z = i / plane_in;
    let x_plane = p.x_base + z * plane_in;
    let g_plane = p.g_base + z * p.out_h * p.out_w;
    let rows = covering(iy, p.pad_top, p.k_h, p.stride_h, p.out_h);
    let cols = covering(ix, p.pad_left, p.k_w, p.stride_w, p.out_w);
    var acc = 0.0;
    for (var oy = rows.x; oy <= rows.y; oy++) {
        let y0 = oy * i32(p.stride_h) - i32(p.pad_top);
        let y_lo = u32(max(y0, 0));
        let y_hi = u32(min(y0 + i32(p.k_h), i32(p.in_h)));
        for (var ox = cols.x; ox <= cols.y; ox++) {
            let x0 = ox * i32(p.stride_w) - i32(p.pad_left);
            let x_lo = u32(max(x0, 0));
            let x_hi = u32(min(x0 + i32(p.k_w), i32(p.in_w)));
            // The window's winner, scanned as the forward pass scans it.
            var m = 0.0;
            var seen = false;
            var win = 0u;
            for (var y = y_lo; y < y_hi; y++) {
                for (var x = x_lo; x < x_hi; x++) {
                    let v = input[x_plane + y * p.in_w + x];
                    if (!seen || v > m) {
                        m = v;
                        seen = true;
                        win = y * p.in_w + x;
                    }
                }
            }
            if (seen && win == iy * p.in_w + ix) {
                acc += grad[g_plane + u32(oy) * p.out_w + u32(ox)];
            }
        }
    }
    output[p.dx_base + i] = acc;
}
