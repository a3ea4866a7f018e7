//! Finding adapters: the wgpu instance (compute only), the adapters it lists and what each
//! offers.

#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::context::GpuOptions;

/// What one adapter is and offers; printed by `dilated info`.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// wgpu's description of the adapter.
    pub info: wgpu::AdapterInfo,
    /// The limits the adapter offers.
    pub limits: wgpu::Limits,
    /// Whether the adapter supports timestamp queries.
    pub timestamps: bool,
    /// Whether the adapter supports subgroup operations.
    pub subgroups: bool,
    /// Whether the adapter supports f16 in shaders.
    pub shader_f16: bool,
    /// Whether the adapter offers wgpu's pipeline cache (compiled pipelines kept between runs).
    pub pipeline_cache: bool,
    /// The side (16 preferred, else 8) of the square cooperative matrices with f16 operands
    /// and f32 accumulators the adapter offers through wgpu's experimental
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX` (tensor cores, simdgroup matrices), where it also has
    /// subgroups and f16; `None` otherwise. The f16 convolutions can run on them
    /// ([`ConvAlgorithm::Coop`](crate::ConvAlgorithm::Coop)).
    pub cooperative_matrix: Option<u32>,
}

/// The side of the square f16 x f16 + f32 cooperative matrices among `configs` (16
/// preferred, else 8), if any.
pub(crate) fn coop_side(configs: &[wgpu::CooperativeMatrixProperties]) -> Option<u32> {
    [16, 8].into_iter().find(|&side| {
        configs.iter().any(|c| {
            c.m_size == side
                && c.n_size == side
                && c.k_size == side
                && c.ab_type == wgpu::CooperativeScalarType::F16
                && c.cr_type == wgpu::CooperativeScalarType::F32
                && !c.saturating_accumulation
        })
    })
}

impl AdapterReport {
    pub(crate) fn of(adapter: &wgpu::Adapter) -> Self {
        let f = adapter.features();
        Self {
            info: adapter.get_info(),
            limits: adapter.limits(),
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            pipeline_cache: f.contains(wgpu::Features::PIPELINE_CACHE),
            cooperative_matrix: if f.contains(
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                    | wgpu::Features::SUBGROUP
                    | wgpu::Features::SHADER_F16,
            ) {
                coop_side(&adapter.cooperative_matrix_properties())
            } else {
                None
            },
        }
    }
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.info;
        let l = &self.limits;
        writeln!(f, "{} ({:?}, {:?})", i.name, i.backend, i.device_type)?;
        writeln!(f, "  driver: {} {}", i.driver, i.driver_info)?;
        writeln!(
            f,
            "  max buffer size:            {} MiB",
            l.max_buffer_size >> 20
        )?;
        writeln!(
            f,
            "  max storage binding:        {} MiB",
            l.max_storage_buffer_binding_size >> 20
        )?;
        writeln!(
            f,
            "  storage buffers per stage:  {}",
            l.max_storage_buffers_per_shader_stage
        )?;
        writeln!(
            f,
            "  workgroup memory:           {} KiB",
            l.max_compute_workgroup_storage_size >> 10
        )?;
        writeln!(
            f,
            "  invocations per workgroup:  {}",
            l.max_compute_invocations_per_workgroup
        )?;
        writeln!(
            f,
            "  workgroups per dimension:   {}",
            l.max_compute_workgroups_per_dimension
        )?;
        writeln!(
            f,
            "  storage offset alignment:   {}",
            l.min_storage_buffer_offset_alignment
        )?;
        write!(
            f,
            "  features: timestamp queries {}, subgroups {}, shader f16 {}, pipeline cache {}, \
             f16 cooperative matrices {}",
            yes(self.timestamps),
            yes(self.subgroups),
            yes(self.shader_f16),
            yes(self.pipeline_cache),
            self.cooperative_matrix
                .map_or("no".to_string(), |s| format!("{s}x{s}x{s}"))
        )
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Every adapter wgpu sees on the given backends.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters(backends: wgpu::Backends) -> Vec<AdapterReport> {
    let instance = make_instance(backends);
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(AdapterReport::of)
        .collect()
}

/// The adapters [`Gpu::with_options`](crate::gpu::Gpu::with_options) chooses among, in the order
/// [`GpuOptions::adapter_index`] counts them: every adapter on `options.backends` in wgpu's
/// enumeration order or, when those are the default backends (Vulkan, Metal, DX12) and none
/// of them has an adapter, every OpenGL adapter (the fallback `Gpu::with_options` makes).
#[cfg(not(target_arch = "wasm32"))]
pub fn candidate_adapters(options: &GpuOptions) -> Vec<AdapterReport> {
    enumerate_candidates(options.backends)
        .iter()
        .map(AdapterReport::of)
        .collect()
}

/// The adapters of [`candidate_adapters`] themselves.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn enumerate_candidates(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(enumerate_candidates_async(backends))
}

/// The adapters of `candidate_adapters`, as a future.
pub(crate) async fn enumerate_candidates_async(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let adapters = make_instance(backends).enumerate_adapters(backends).await;
    if adapters.is_empty() && backends == wgpu::Backends::PRIMARY {
        return make_instance(wgpu::Backends::GL)
            .enumerate_adapters(wgpu::Backends::GL)
            .await;
    }
    adapters
}

/// A wgpu instance for compute on `backends` (options otherwise from the environment, as
/// wgpu reads them).
pub(crate) fn make_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    #[cfg(all(unix, not(target_os = "macos"), not(target_os = "android")))]
    if backends & (wgpu::Backends::VULKAN | wgpu::Backends::GL) == wgpu::Backends::VULKAN
        && let Some(instance) = compute_only_vulkan(&desc)
    {
        return instance;
    }
    wgpu::Instance::new(desc)
}

/// A Vulkan instance without the Wayland surface extension, which this crate never uses.
///
/// wgpu enables every window-system extension the loader offers. With Wayland's enabled,
/// Mesa's device-selection layer (installed with every Mesa Vulkan driver) connects to the
/// Wayland display while listing devices, and on a headless machine libwayland prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` for each instance.
/// Leaving the extension out keeps that path from running; the instance then has no
/// Wayland surfaces, which a compute-only crate never creates. `None` where Vulkan is
/// missing, so the caller falls back to wgpu's own instance.
#[cfg(all(unix, not(target_os = "macos"), not(target_os = "android")))]
fn compute_only_vulkan(desc: &wgpu::InstanceDescriptor) -> Option<wgpu::Instance> {
    use wgpu::hal;
    let hal_desc = hal::InstanceDescriptor {
        name: "dilated",
        flags: desc.flags,
        memory_budget_thresholds: desc.memory_budget_thresholds,
        backend_options: desc.backend_options.clone(),
        telemetry: None,
        display: None,
    };
    let callback: Box<hal::vulkan::CreateInstanceCallback> =
        Box::new(|args: hal::vulkan::CreateInstanceCallbackArgs| {
            args.extensions
                .retain(|name| *name != c"VK_KHR_wayland_surface");
        });
    // SAFETY: the callback only removes a window-system extension; wgpu-hal records the
    // extensions actually enabled and refuses to create a Wayland surface without it, and this
    // crate creates no surfaces. `from_hal` takes a valid Vulkan instance made by wgpu-hal.
    let instance = unsafe { hal::vulkan::Instance::init_with_callback(&hal_desc, Some(callback)) };
    match instance {
        Ok(instance) => Some(unsafe { wgpu::Instance::from_hal::<hal::api::Vulkan>(instance) }),
        Err(e) => {
            log::debug!("no Vulkan instance ({e}); using wgpu's own");
            None
        }
    }
}
