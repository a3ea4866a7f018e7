// Per-channel transposed convolution without bias (Cityscapes' upsampling): one invocation
// per output element of the chunk's channel planes (header: shaders/common/planes.wgsl;
// channel = (first_plane + plane) % channels). Gathers the inputs whose spread reaches this
// output:
//   out[oy, ox] = sum over (ky, kx) with (oy + pad - ky) and (ox + pad - kx) divisible by the
//   stride of in[(oy + pad - ky) / stride, (ox + pad - kx) / stride] * w[c, ky, kx].
// Weights are [channels][k][k].

struct Params {
    h: PlaneHeader,
    kernel: u32, stride: u32, pad: u32, channels: u32,
    first_plane: u32, pad0: u32, pad1: u32, pad2: u32,
}

fn element(i: u32) {
    let at = plane_position(i);
    let c = (p.first_plane + at.z) % p.channels;
    let base = p.h.in_base + at.z * p.h.in_h * p.h.in_w;
    let w_base = c * p.kernel * p.kernel;
    let ty = at.y + p.pad;
    let tx = at.x + p.pad;
    var acc = 0.0;
    // Taps congruent to the output position modulo the stride.
    for (var ky = ty % p.stride; ky < p.kernel && ky <= ty; ky += p.stride) {
        let iy = (ty - ky) / p.stride;
        if (iy >= p.h.in_h) {
            continue;
        }
        for (var kx = tx % p.stride; kx < p.kernel && kx <= tx; kx += p.stride) {
            let ix = (tx - kx) / p.stride;
            if (ix < p.h.in_w) {
                acc += f32(input[base + iy * p.h.in_w + ix]) * f32(weight[w_base + ky * p.kernel + kx]);
            }
        }
    }
    output[p.h.out_base + i] = store_t(acc);
}
