// The entry point of the one-element-per-invocation kernels: the workgroup grid is folded over
// x and y (see `Gpu::grid` in src/gpu/dispatch.rs) so any element count fits the per-dimension
// limit, and `element(i)` runs once for every i < `element_count()`; the kernel (or one of its
// parts) defines both.

@compute @workgroup_size(WG_LINEAR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG_LINEAR + lid;
    if (i < element_count()) {
        element(i);
    }
}
