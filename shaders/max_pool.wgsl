// Max pooling: one invocation per output element of the chunk's channel planes (header:
// shaders/common/planes.wgsl). Windows are clipped to the input, so padded positions never
// win; a NaN in the window gives NaN.

struct Params {
    h: PlaneHeader,
    k_h: u32, k_w: u32, stride_h: u32, stride_w: u32,
    pad_top: u32, pad_left: u32, pad0: u32, pad1: u32,
}

fn element(i: u32) {
    let at = plane_position(i);
    let y0 = i32(at.y * p.stride_h) - i32(p.pad_top);
    let x0 = i32(at.x * p.stride_w) - i32(p.pad_left);
    let y_lo = u32(max(y0, 0));
    let x_lo = u32(max(x0, 0));
    let y_hi = u32(min(y0 + i32(p.k_h), i32(p.h.in_h)));
    let x_hi = u32(min(x0 + i32(p.k_w), i32(p.h.in_w)));
    let base = p.h.in_base + at.z * p.h.in_h * p.h.in_w;
    var m = -3.402823e38;
    var seen = false;
    var nan = false;
    for (var y = y_lo; y < y_hi; y++) {
        for (var x = x_lo; x < x_hi; x++) {
            let v = f32(input[base + y * p.h.in_w + x]);
            // NaN tested on the bits: `v != v` compiles to an ordered comparison, false for NaN.
            nan = nan || (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
            if (!seen || v > m) {
                m = v;
                seen = true;
            }
        }
    }
    var r = m;
    if (nan) {
        // A quiet NaN made from a runtime value: browsers' WGSL compilers reject a NaN
        // constant (`bitcast<f32>(0x7fc00000u)` is a constant expression there).
        r = bitcast<f32>(bitcast<u32>(m) | 0x7fc00000u);
    }
    output[p.h.out_base + i] = store_t(r);
}
