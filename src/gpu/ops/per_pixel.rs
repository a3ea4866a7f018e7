//! The dispatch shared by the per-pixel reductions over channels (softmax, argmax): chunks of
//! whole images whose windows fit one binding, one invocation per pixel.

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, exceeds_binding_of};
use crate::gpu::layer::Io;
use crate::gpu::precision::Precision;
use crate::gpu::shader::{Kernel, uniform};

uniform! {
    /// Uniform of the per-pixel kernels (`shaders/common/per_pixel.wgsl`).
    pub(crate) struct PixelParams {
        channels: u32, plane: u32, total: u32, in_base: u32,
        out_base: u32, pad0: u32, pad1: u32, pad2: u32,
    }
}

/// Records `kernel` over whole images of `io.input`; each image gives `out_per_image`
/// output elements, of `io.precision` or, with `labels`, u32 (4 bytes).
pub(crate) fn prepare_per_pixel(
    gpu: &Gpu,
    kernel: Kernel,
    io: &Io<'_>,
    out_per_image: usize,
    labels: bool,
) -> Result<Vec<Dispatch>> {
    let shape = io.input_shape;
    let precision = io.precision;
    let out_precision = if labels { Precision::F32 } else { precision };
    let max = gpu.max_binding_elems_of(precision);
    let image = shape.c * shape.plane();
    if image > max {
        return Err(exceeds_binding_of(
            format!("one image of {} ({shape})", kernel.name()),
            image,
            max,
            precision,
        ));
    }
    let per = max / image;
    let mut dispatches = Vec::new();
    for n0 in (0..shape.n).step_by(per) {
        let nb = per.min(shape.n - n0);
        let in_win = gpu.window_of(io.input, n0 * image, nb * image, precision);
        let out_win = gpu.window_of(
            io.output,
            n0 * out_per_image,
            nb * out_per_image,
            out_precision,
        );
        let total = nb * shape.plane();
        let params = PixelParams {
            channels: shape.c as u32,
            plane: shape.plane() as u32,
            total: total as u32,
            in_base: in_win.base,
            out_base: out_win.base,
            ..PixelParams::default()
        };
        let storage = [(io.input, in_win), (io.output, out_win)];
        dispatches.push(gpu.linear_dispatch_as(kernel, precision, &params, &storage, total)?);
    }
    Ok(dispatches)
}
