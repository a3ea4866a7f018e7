// Second pass of a convolution whose reduction was split over `slices` workgroups per tile
// (conv2d_tiled.wgsl with k_split > 1): adds each output element's partial sums in slice order
// (so the result does not depend on scheduling), then applies the flags with the convolution
// kernels' `finish`: 4 accumulate into the existing output, 1 add bias, 2 ReLU. One invocation per
// output element of `batch` images of `out_c` channels x `pixels`.
//
// `partial` is the scratch buffer laid out [image][slice][channel][pixel]; `output` is the
// window of the convolution's output whose chunk starts at `out_base`.

struct Params {
    out_c: u32, pixels: u32, slices: u32, total: u32,
    out_base: u32, out_batch_stride: u32, bias_base: u32, flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(WG_LINEAR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let image = p.out_c * p.pixels;
    let b = i / image;
    let e = i % image;
    var v = 0.0;
    var at = b * p.slices * image + e;
    for (var s = 0u; s < p.slices; s++) {
        v += partial[at];
        at += image;
    }
    let o = p.out_base + b * p.out_batch_stride + e;
    output[o] = finish(v, o, e / p.pixels);
}
