//! Recorded dispatches and the plumbing every op shares: bind groups over windows of buffers,
//! workgroup grids within the per-dimension limit, running dispatches, shape and size checks.

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::precision::Precision;
use crate::gpu::shader::{Kernel, Uniform, WG_LINEAR};
use crate::gpu::tensor::Window;
use crate::spec::Shape;

/// One recorded compute dispatch: a pipeline, its bindings and the workgroup grid.
pub struct Dispatch {
    pub(crate) kernel: Kernel,
    pub(crate) precision: Precision,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) groups: (u32, u32),
}

impl Dispatch {
    /// Which kernel this dispatch runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The storage precision of the kernel's variant.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The workgroup grid `(x, y)`: grids of more workgroups than one dimension allows are
    /// folded into `y` rows, and the kernels skip the excess of the last row.
    pub fn workgroups(&self) -> (u32, u32) {
        self.groups
    }
}

/// An error for `what`, `elems` f32 elements, exceeding one storage binding of `max` elements.
pub(crate) fn exceeds_binding(what: String, elems: usize, max: usize) -> Error {
    exceeds_binding_of(what, elems, max, Precision::F32)
}

/// [`exceeds_binding`] for elements of `precision`.
pub(crate) fn exceeds_binding_of(
    what: String,
    elems: usize,
    max: usize,
    precision: Precision,
) -> Error {
    Error::ExceedsDeviceLimits {
        what,
        bytes: elems as u64 * precision.bytes(),
        limit_name: "max_storage_buffer_binding_size",
        limit: max as u64 * precision.bytes(),
    }
}

/// Errors unless an output buffer has the shape the op computes.
pub(crate) fn expect_shape(context: &str, got: Shape, want: Shape) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        context: context.to_string(),
        left_name: "output tensor",
        left: got.dims().to_vec(),
        right_name: "computed output",
        right: want.dims().to_vec(),
    })
}

impl Gpu {
    /// Records dispatches into a compute pass.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, dispatches: &[Dispatch]) {
        for d in dispatches {
            pass.set_pipeline(
                &self
                    .kernels
                    .get(&self.device, d.kernel, d.precision)
                    .pipeline,
            );
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
    }

    /// Runs dispatches in one submission and waits for them.
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        let all: Vec<&Dispatch> = dispatches.iter().collect();
        self.run_all(&all)
    }

    /// Runs dispatches recorded apart (several layers', say) in one submission, in order, and
    /// waits for them.
    pub fn run_all(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let commands = self.scoped("recording dispatches", 0, || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for d in dispatches {
                    self.record(&mut pass, std::slice::from_ref(*d));
                }
            }
            encoder.finish()
        })?;
        self.submit_and_wait(commands)
    }

    /// A workgroup grid of `total` workgroups within the per-dimension limit (the shaders
    /// linearise `x + y * num_workgroups.x` and skip the excess).
    pub(crate) fn grid(&self, total: usize, what: &str) -> Result<(u32, u32)> {
        let max = self.limits().max_compute_workgroups_per_dimension as usize;
        let x = total.clamp(1, max);
        let y = total.div_ceil(x).max(1);
        if y > max {
            return Err(Error::ExceedsDeviceLimits {
                what: format!("{what} ({total} workgroups)"),
                bytes: 0,
                limit_name: "max_compute_workgroups_per_dimension squared",
                limit: (max * max) as u64,
            });
        }
        Ok((x as u32, y as u32))
    }

    /// A dispatch of the variant for `precision` of `kernel` over `workgroups` workgroups,
    /// bound to its uniform `params` and the storage windows in binding order.
    pub(crate) fn dispatch_as<P: Uniform>(
        &self,
        kernel: Kernel,
        precision: Precision,
        params: &P,
        storage: &[(&wgpu::Buffer, Window)],
        workgroups: usize,
    ) -> Result<Dispatch> {
        let bind_group = self.scoped(kernel.name(), 0, || {
            self.bind(kernel, precision, bytemuck::bytes_of(params), storage)
        })??;
        Ok(Dispatch {
            kernel,
            precision,
            bind_group,
            groups: self.grid(workgroups, kernel.name())?,
        })
    }

    /// A dispatch of a one-element-per-invocation kernel over `elements` elements.
    pub(crate) fn linear_dispatch<P: Uniform>(
        &self,
        kernel: Kernel,
        params: &P,
        storage: &[(&wgpu::Buffer, Window)],
        elements: usize,
    ) -> Result<Dispatch> {
        self.linear_dispatch_as(kernel, Precision::F32, params, storage, elements)
    }

    /// [`Gpu::linear_dispatch`] of the kernel's variant for `precision`.
    pub(crate) fn linear_dispatch_as<P: Uniform>(
        &self,
        kernel: Kernel,
        precision: Precision,
        params: &P,
        storage: &[(&wgpu::Buffer, Window)],
        elements: usize,
    ) -> Result<Dispatch> {
        self.dispatch_as(
            kernel,
            precision,
            params,
            storage,
            elements.div_ceil(WG_LINEAR as usize),
        )
    }

    fn bind(
        &self,
        kernel: Kernel,
        precision: Precision,
        params: &[u8],
        storage: &[(&wgpu::Buffer, Window)],
    ) -> Result<wgpu::BindGroup> {
        // Not `create_buffer_init`: it panics where the device is lost.
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(kernel.name()),
            size: (params.len() as u64).next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: true,
        });
        {
            let mut range = uniform
                .get_mapped_range_mut(..)
                .map_err(|e| Error::Device(format!("{}: uniform buffer: {e}", kernel.name())))?;
            range.slice(..params.len()).copy_from_slice(params);
        }
        uniform.unmap();
        let compiled = self.kernels.get(&self.device, kernel, precision);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, (buffer, window)) in storage.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: window.binding(buffer),
            });
        }
        Ok(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &compiled.layout,
            entries: &entries,
        }))
    }
}
