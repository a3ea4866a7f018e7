// Per-channel transposed convolution without bias (Cityscapes' upsampling): one invocation
// per output element of `planes` channel planes (n * c flattened, channel = plane % channels).
// Gathers the inputs whose spread reaches this output:
//   out[oy, ox] = sum over (ky, kx) with (oy + pad - ky) and (ox + pad - kx) divisible by the
//   stride of in[(oy + pad - ky) / stride, (ox + pad - kx) / stride] * w[c, ky, kx].
// Weights are [channels][k][k].

struct Params {
    planes: u32, in_h: u32, in_w: u32, in_base: u32,
    out_h: u32, out_w: u32, out_base: u32, total: u32,
    kernel: u32, stride: u32, pad: u32, channels: u32,
    first_plane: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(WG_LINEAR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let c = (p.first_plane + plane) % p.channels;
    let base = p.in_base + plane * p.in_h * p.in_w;
    let w_base = c * p.kernel * p.kernel;
    let ty = oy + p.pad;
    let tx = ox + p.pad;
    var acc = 0.0;
    // Taps congruent to the output position modulo the stride.
    for (var ky = ty % p.stride; ky < p.kernel; ky += p.stride) {
        if (ky > ty) {
            break;
        }
        let iy = (ty - ky) / p.stride;
        if (iy >= p.in_h) {
            continue;
        }
        for (var kx = tx % p.stride; kx < p.kernel; kx += p.stride) {
            if (kx > tx) {
                break;
            }
            let ix = (tx - kx) / p.stride;
            if (ix >= p.in_w) {
                continue;
            }
            acc += input[base + iy * p.in_w + ix] * weight[w_base + ky * p.kernel + kx];
        }
    }
    output[p.out_base + i] = acc;
}
