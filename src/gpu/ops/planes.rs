//! The dispatch shared by the kernels that map each input channel plane to one output plane
//! (max pooling, zoom, deconvolution): chunks of whole planes whose windows fit one binding,
//! one invocation per output element, and the head of their uniform.

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, exceeds_binding_of};
use crate::gpu::layer::Io;
use crate::gpu::precision::Precision;
use crate::gpu::shader::{Kernel, Uniform, uniform};
use crate::gpu::tensor::Window;
use crate::spec::Shape;

uniform! {
    /// Head of the plane kernels' uniforms (`shaders/common/planes.wgsl`).
    pub(crate) struct PlaneHeader {
        planes: u32, in_h: u32, in_w: u32, in_base: u32,
        out_h: u32, out_w: u32, out_base: u32, total: u32,
    }
}

/// Chunks `(first plane, planes)` of whole channel planes (n * c flattened) so that input and
/// output windows of `precision` elements fit one binding.
pub(crate) fn plane_chunks(
    gpu: &Gpu,
    what: &str,
    input: Shape,
    output: Shape,
    precision: Precision,
) -> Result<Vec<(usize, usize)>> {
    let max = gpu.max_binding_elems_of(precision);
    let biggest = input.plane().max(output.plane());
    if biggest > max {
        return Err(exceeds_binding_of(
            format!("one channel plane of {what}"),
            biggest,
            max,
            precision,
        ));
    }
    let per = max / biggest;
    let planes = input.n * input.c;
    Ok((0..planes)
        .step_by(per)
        .map(|p0| (p0, per.min(planes - p0)))
        .collect())
}

/// Records `kernel` over chunks of whole planes of `io`; `params(header, first plane)` makes
/// a chunk's uniform, and `extra` buffers are bound between input and output.
pub(crate) fn prepare_planes<P: Uniform>(
    gpu: &Gpu,
    kernel: Kernel,
    io: &Io<'_>,
    extra: &[(&wgpu::Buffer, Window)],
    params: impl Fn(PlaneHeader, usize) -> P,
) -> Result<Vec<Dispatch>> {
    let (in_shape, out_shape, precision) = (io.input_shape, io.output_shape, io.precision);
    let mut dispatches = Vec::new();
    for (p0, pn) in plane_chunks(gpu, kernel.name(), in_shape, out_shape, precision)? {
        let window = |buffer, start, len| gpu.window_of(buffer, start, len, precision);
        let in_win = window(io.input, p0 * in_shape.plane(), pn * in_shape.plane());
        let out_win = window(io.output, p0 * out_shape.plane(), pn * out_shape.plane());
        let total = pn * out_shape.plane();
        let header = PlaneHeader {
            planes: pn as u32,
            in_h: in_shape.h as u32,
            in_w: in_shape.w as u32,
            in_base: in_win.base,
            out_h: out_shape.h as u32,
            out_w: out_shape.w as u32,
            out_base: out_win.base,
            total: total as u32,
        };
        let mut storage = vec![(io.input, in_win)];
        storage.extend_from_slice(extra);
        storage.push((io.output, out_win));
        dispatches.push(gpu.linear_dispatch_as(
            kernel,
            precision,
            &params(header, p0),
            &storage,
            total,
        )?);
    }
    Ok(dispatches)
}
