//! Device setup: adapter choice from the usual wgpu environment variables, limits, features.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::gpu::kernels::Kernels;

/// How to pick an adapter. [`GpuOptions::from_env`] reads `WGPU_BACKEND`,
/// `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider. Without `WGPU_BACKEND` this is Vulkan, Metal and DX12, falling
    /// back to OpenGL when none of those has an adapter.
    pub backends: wgpu::Backends,
    /// Case-insensitive substring the adapter name must contain.
    pub adapter_name: Option<String>,
    /// Preference between a low-power and a high-performance adapter.
    pub power_preference: wgpu::PowerPreference,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

impl GpuOptions {
    /// Options from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`.
    pub fn from_env() -> Self {
        Self {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
        }
    }
}

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
}

impl AdapterReport {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let f = adapter.features();
        Self {
            info: adapter.get_info(),
            limits: adapter.limits(),
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
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
            "  features: timestamp queries {}, subgroups {}, shader f16 {}",
            yes(self.timestamps),
            yes(self.subgroups),
            yes(self.shader_f16)
        )
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Every adapter wgpu sees on the given backends.
pub fn list_adapters(backends: wgpu::Backends) -> Vec<AdapterReport> {
    let instance = make_instance(backends);
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(AdapterReport::of)
        .collect()
}

fn make_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// A GPU device ready to run this crate's kernels.
///
/// Cheap to share: all fields are reference-counted by wgpu, and the handle is `Send + Sync`.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    report: AdapterReport,
    limits: wgpu::Limits,
    timestamps: bool,
    lost: Arc<AtomicBool>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    pub(crate) kernels: Kernels,
}

impl Gpu {
    /// Opens the adapter chosen by `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`.
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::from_env())
    }

    /// Opens an adapter chosen by explicit options.
    pub fn with_options(options: &GpuOptions) -> Result<Self> {
        let instance = make_instance(options.backends);
        let adapter = match &options.adapter_name {
            Some(name) => {
                let wanted = name.to_lowercase();
                pollster::block_on(instance.enumerate_adapters(options.backends))
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| Error::NoAdapter {
                        detail: format!(" whose name contains {name:?} (WGPU_ADAPTER_NAME)"),
                    })?
            }
            None => {
                let request = |backends: wgpu::Backends| {
                    pollster::block_on(make_instance(backends).request_adapter(
                        &wgpu::RequestAdapterOptions {
                            power_preference: options.power_preference,
                            force_fallback_adapter: false,
                            compatible_surface: None,
                            apply_limit_buckets: false,
                        },
                    ))
                };
                let no_adapter = |e: wgpu::RequestAdapterError| Error::NoAdapter {
                    detail: format!(" on backends {:?} ({e})", options.backends),
                };
                match request(options.backends) {
                    Ok(a) => a,
                    // Nothing on Vulkan, Metal or DX12: try OpenGL before giving up.
                    Err(e) if options.backends == wgpu::Backends::PRIMARY => {
                        request(wgpu::Backends::GL).map_err(|_| no_adapter(e))?
                    }
                    Err(e) => return Err(no_adapter(e)),
                }
            }
        };
        Self::from_adapter(adapter)
    }

    /// Opens a device on a given adapter with the limits it offers and the optional features
    /// this crate uses when present.
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let report = AdapterReport::of(&adapter);
        let mut features = wgpu::Features::empty();
        if report.timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if report.subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        // Ask for everything the adapter offers: the defaults cap a storage binding at 128 MiB
        // and the buffer size at 256 MiB, far below what real GPUs allow.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("dilated"),
            required_features: features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: report.info.name.clone(),
            reason: e.to_string(),
        })?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device
            .set_device_lost_callback(move |_reason, _message| flag.store(true, Ordering::SeqCst));
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let limits = device.limits();
        Ok(Self {
            kernels: Kernels::default(),
            device,
            queue,
            report,
            limits,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            lost,
            uncaptured,
        })
    }

    /// The adapter's description and offered limits.
    pub fn adapter(&self) -> &AdapterReport {
        &self.report
    }

    /// The adapter's name, for reports.
    pub fn name(&self) -> &str {
        &self.report.info.name
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether timestamp queries are enabled on this device.
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// The wgpu device, for callers that want to add their own work.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Largest number of f32 elements one storage binding may hold, leaving room for the
    /// offset alignment of a window.
    pub(crate) fn max_binding_elems(&self) -> usize {
        let bytes = self.limits.max_storage_buffer_binding_size;
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        ((bytes - align) / 4) as usize
    }

    /// Errors if the device was lost or an error escaped the error scopes.
    pub(crate) fn check_health(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Device("the device was lost".into()));
        }
        let mut errs = self
            .uncaptured
            .lock()
            .map_err(|_| Error::Device("error log poisoned".into()))?;
        if !errs.is_empty() {
            let msg = errs.join("; ");
            errs.clear();
            return Err(Error::Device(msg));
        }
        Ok(())
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns a captured error
    /// into this crate's error.
    pub(crate) fn scoped<T>(&self, what: &str, bytes: u64, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            log::debug!("out of memory: {e}");
            return Err(Error::OutOfMemory {
                what: what.to_string(),
                bytes,
            });
        }
        if let Some(e) = v {
            return Err(Error::Device(format!("{what}: {e}")));
        }
        Ok(value)
    }

    /// Submits command buffers and waits until the device has finished them.
    pub(crate) fn submit_and_wait(&self, commands: wgpu::CommandBuffer) -> Result<()> {
        let index = self.queue.submit([commands]);
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        self.check_health()
    }
}
