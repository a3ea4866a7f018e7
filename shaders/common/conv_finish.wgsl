// The end of every convolution output element, shared by the convolution kernels and the
// split-reduction pass (whose uniforms both name `flags` and `bias_base`, and which bind `bias`
// and `output`): the flags applied in order, 4 accumulate into the existing output, 1 add the
// bias, 2 ReLU. Storage is `store_t` (f32 or f16, spliced in by src/gpu/shader.rs): values
// are read with `f32(..)`, summed in f32, and rounded to the storage type only when written.

fn finish(sum: f32, o: u32, co: u32) -> f32 {
    var v = sum;
    if ((p.flags & 4u) != 0u) {
        v += f32(output[o]);
    }
    if ((p.flags & 1u) != 0u) {
        v += f32(bias[p.bias_base + co]);
    }
    if ((p.flags & 2u) != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    return v;
}

// Writes output element (channel `co`, pixel `px`) of the image whose outputs start at
// `out_img`, through `finish`; positions past the chunk's channels or pixels are skipped.
fn store_output(co: u32, px: u32, pixels: u32, out_img: u32, acc: f32) {
    if (co >= p.out_c || px >= pixels) {
        return;
    }
    let o = out_img + co * pixels + px;
    output[o] = store_t(finish(acc, o, co));
}
