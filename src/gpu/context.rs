//! Device setup: adapter choice from the usual wgpu environment variables, limits, features.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::adapter::{AdapterReport, enumerate_candidates_async, make_instance};
use crate::gpu::cache::adapter_key;
#[cfg(feature = "fs")]
use crate::gpu::cache::{
    cache_file, decode_pipeline_data, default_cache_dir, encode_pipeline_data,
};
use crate::gpu::precision::Precision;
use crate::gpu::shader::Kernels;
use crate::gpu::tune::TuneTable;

/// How to pick an adapter and how long to wait for it. [`GpuOptions::from_env`] reads
/// `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF` and `DILATED_GPU_TIMEOUT`.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider. Without `WGPU_BACKEND` this is Vulkan, Metal and DX12, falling
    /// back to OpenGL when none of those has an adapter.
    pub backends: wgpu::Backends,
    /// Case-insensitive substring the adapter name must contain.
    pub adapter_name: Option<String>,
    /// Position of the adapter in [`candidate_adapters`](crate::gpu::adapter::candidate_adapters)' list (every adapter on
    /// `backends`, in wgpu's enumeration order). Takes precedence over `adapter_name` and
    /// `power_preference`; an index past the end is an [`Error::NoAdapter`]. Not read from the
    /// environment: `None` unless set.
    pub adapter_index: Option<usize>,
    /// Preference between a low-power and a high-performance adapter.
    pub power_preference: wgpu::PowerPreference,
    /// Longest wait for one submission or read-back; `None` waits forever. A wait that runs
    /// out returns [`Error::Device`] and marks the device lost (work may still be in flight on
    /// it). Default [`DEFAULT_TIMEOUT`], or `DILATED_GPU_TIMEOUT` seconds (`0` for none).
    pub timeout: Option<Duration>,
    /// Directory of the files kept between runs for this adapter: the compiled pipelines
    /// (where the adapter offers wgpu's pipeline cache) and the convolution kernels chosen by
    /// measurement (see [`crate::gpu::tune`]). `None` keeps nothing. Default:
    /// `default_cache_dir` (`DILATED_CACHE_DIR`, else `dilated` in the user's cache
    /// directory). Without the `fs` feature nothing is kept: the default is `None` and any
    /// directory is ignored.
    pub cache_dir: Option<PathBuf>,
}

/// Longest wait for one submission unless [`GpuOptions::timeout`] says otherwise: generous, as
/// a whole network at full resolution is one submission and software adapters are slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Smallest cap [`Gpu::set_max_binding_bytes`] accepts.
pub const MIN_BINDING_CAP: u64 = 4096;

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
            adapter_index: None,
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            timeout: timeout_from_env(std::env::var("DILATED_GPU_TIMEOUT").ok().as_deref()),
            cache_dir: env_cache_dir(),
        }
    }
}

/// The cache directory [`GpuOptions::from_env`] gives: none without the `fs` feature.
fn env_cache_dir() -> Option<PathBuf> {
    #[cfg(feature = "fs")]
    return default_cache_dir();
    #[cfg(not(feature = "fs"))]
    None
}

/// Whether environment variable `name` is set to `1`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

/// `DILATED_GPU_TIMEOUT` in seconds (fractions allowed); `0` means no timeout; unset or
/// unreadable means [`DEFAULT_TIMEOUT`].
fn timeout_from_env(value: Option<&str>) -> Option<Duration> {
    match value.map(|v| v.trim().parse::<f64>()) {
        Some(Ok(0.0)) => None,
        Some(Ok(s)) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s.min(1e9))),
        Some(_) => {
            log::warn!("DILATED_GPU_TIMEOUT must be a number of seconds; using the default");
            Some(DEFAULT_TIMEOUT)
        }
        None => Some(DEFAULT_TIMEOUT),
    }
}

/// Runs a future to its end on this thread, blocking until it is ready.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn block_on<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    pollster::block_on(future)
}

/// In a browser nothing may block: a future that is not ready at once (one waiting for the
/// GPU) is an [`Error::Device`] naming the `_async` method to call instead.
#[cfg(target_arch = "wasm32")]
pub(crate) fn block_on<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => Err(Error::Device(
            "a browser cannot block waiting for the GPU: call the `_async` form of this method"
                .into(),
        )),
    }
}

/// Whether the device is lost, and why.
#[derive(Default)]
struct Lost {
    flag: AtomicBool,
    reason: Mutex<String>,
}

impl Lost {
    fn set(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_empty()
        {
            *r = reason;
        }
        self.flag.store(true, Ordering::SeqCst);
    }

    fn get(&self) -> Option<String> {
        if !self.flag.load(Ordering::SeqCst) {
            return None;
        }
        let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
        Some(reason)
    }
}

/// A GPU device ready to run this crate's kernels.
///
/// # Threads
///
/// `Gpu` is `Send + Sync`: share one handle (by reference or in an `Arc`) between threads and
/// call anything on it from any of them. The one-shot ops
/// ([`GpuLayer::forward`](crate::gpu::GpuLayer::forward) of any layer, [`Gpu::argmax`]) and
/// [`crate::plan::GpuPlan::forward`] each record
/// their own commands and wait for their own submission, so concurrent calls give the same
/// results as the same calls made one after another. Errors are attributed to the thread that
/// caused them: every operation runs inside wgpu error scopes, which are per thread; only
/// device-wide events (a lost device, a timed-out wait) are reported to every caller.
///
/// # Faults
///
/// Every wait on the device is bounded by [`GpuOptions::timeout`]. A lost device (the driver
/// reports it, [`wgpu::Device::destroy`] was called, or a wait timed out) makes every later
/// operation return [`Error::Device`] promptly; [`Gpu::is_lost`] tells callers, for example
/// to run on the CPU instead (see [`crate::plan::executor`]).
///
/// # One handle per set of objects
///
/// Tensors, layers and plans belong to the `Gpu` that made them; passing them to another `Gpu`
/// handle (another wgpu instance) is not detected and makes wgpu panic. Create one `Gpu` and
/// share it.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    report: AdapterReport,
    limits: wgpu::Limits,
    timestamps: bool,
    /// The side of the f16 cooperative matrices the device was opened with (see
    /// [`AdapterReport::cooperative_matrix`]), once the kernel passed its check.
    coop: Option<u32>,
    /// Why the cooperative-matrix kernel is not used although the adapter offers the matrices.
    coop_rejected: Option<String>,
    timeout: Option<Duration>,
    /// Cap on one storage binding below the device's limit (see `set_max_binding_bytes`).
    binding_cap: Option<u64>,
    lost: Arc<Lost>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    pub(crate) kernels: Kernels,
    /// The adapter's key in the cache files (see [`adapter_key`]).
    cache_key: String,
    #[cfg(feature = "fs")]
    cache_dir: Option<PathBuf>,
    #[cfg(feature = "fs")]
    pipeline_file: Option<PipelineFile>,
    /// Convolution kernel choices, read from the cache directory on first use.
    pub(crate) tuning: Mutex<Option<TuneTable>>,
}

/// The pipeline cache's file and what was found in it.
#[cfg(feature = "fs")]
struct PipelineFile {
    path: PathBuf,
    /// Bytes of cached data wgpu accepted when the device was opened (0: none).
    loaded: u64,
    /// Serialises writes of the file by this handle.
    writing: Mutex<()>,
}

/// Where a [`Gpu`]'s pipeline cache lives and what it started with (with the `fs` feature).
#[cfg(feature = "fs")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineCacheInfo {
    /// The file the cache is read from and written to.
    pub path: PathBuf,
    /// Bytes of cached pipelines that were found in the file and accepted when the device was
    /// opened; 0 when there was no file or its data was corrupt, stale or from another
    /// adapter, driver or version (it is then rewritten).
    pub loaded_bytes: u64,
}

impl Gpu {
    /// Opens the adapter chosen by `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`.
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::from_env())
    }

    /// Opens an adapter chosen by explicit options: the one at [`GpuOptions::adapter_index`]
    /// when set, else the first whose name contains [`GpuOptions::adapter_name`], else wgpu's
    /// choice for [`GpuOptions::power_preference`]. Blocks until the device is open (natively;
    /// in a browser use [`Gpu::new_async`]).
    pub fn with_options(options: &GpuOptions) -> Result<Self> {
        block_on(Self::new_async(options))
    }

    /// [`Gpu::with_options`] as a future: the way to open a device in a browser (WebGPU),
    /// where nothing may block. Natively it completes as soon as the device is open.
    pub async fn new_async(options: &GpuOptions) -> Result<Self> {
        let adapter = match (options.adapter_index, &options.adapter_name) {
            (Some(index), _) => {
                let mut adapters = enumerate_candidates_async(options.backends).await;
                let count = adapters.len();
                if index >= count {
                    return Err(Error::NoAdapter {
                        detail: format!(
                            " at index {index} ({count} adapter(s) on backends {:?})",
                            options.backends
                        ),
                    });
                }
                adapters.swap_remove(index)
            }
            (None, Some(name)) => {
                let wanted = name.to_lowercase();
                let instance = make_instance(options.backends);
                instance
                    .enumerate_adapters(options.backends)
                    .await
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| Error::NoAdapter {
                        detail: format!(" whose name contains {name:?} (WGPU_ADAPTER_NAME)"),
                    })?
            }
            (None, None) => {
                let request = async |backends: wgpu::Backends| {
                    make_instance(backends)
                        .request_adapter(&wgpu::RequestAdapterOptions {
                            power_preference: options.power_preference,
                            force_fallback_adapter: false,
                            compatible_surface: None,
                            apply_limit_buckets: false,
                        })
                        .await
                };
                let no_adapter = |e: wgpu::RequestAdapterError| Error::NoAdapter {
                    detail: format!(" on backends {:?} ({e})", options.backends),
                };
                match request(options.backends).await {
                    Ok(a) => a,
                    // Nothing on Vulkan, Metal or DX12: try OpenGL before giving up.
                    Err(e) if options.backends == wgpu::Backends::PRIMARY => {
                        request(wgpu::Backends::GL)
                            .await
                            .map_err(|_| no_adapter(e))?
                    }
                    Err(e) => return Err(no_adapter(e)),
                }
            }
        };
        let mut gpu = Self::open_async(adapter, options.cache_dir.as_deref()).await?;
        gpu.timeout = options.timeout;
        Ok(gpu)
    }

    /// Opens a device on a given adapter with the limits it offers and the optional features
    /// this crate uses when present; waits are bounded by [`DEFAULT_TIMEOUT`] (see
    /// [`Gpu::set_timeout`]), with the cache directory of [`GpuOptions::from_env`].
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        block_on(Self::open_async(adapter, env_cache_dir().as_deref()))
    }

    /// [`Gpu::from_adapter`] with the files of `cache_dir` (none when `None`).
    #[cfg(feature = "fs")]
    pub fn from_adapter_with_cache(
        adapter: wgpu::Adapter,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        block_on(Self::open_async(adapter, cache_dir))
    }

    /// [`Gpu::from_adapter`] as a future (for browsers, where nothing may block).
    pub async fn from_adapter_async(adapter: wgpu::Adapter) -> Result<Self> {
        Self::open_async(adapter, env_cache_dir().as_deref()).await
    }

    async fn open_async(adapter: wgpu::Adapter, cache_dir: Option<&Path>) -> Result<Self> {
        let report = AdapterReport::of(&adapter);
        let cache_key = adapter_key(&report.info);
        let mut features = wgpu::Features::empty();
        if cfg!(feature = "fs") && report.pipeline_cache && cache_dir.is_some() {
            features |= wgpu::Features::PIPELINE_CACHE;
        }
        if report.timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if report.subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if report.shader_f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        // Cooperative matrices are one of wgpu's experimental features, so they are asked for
        // only where offered and not turned off (DILATED_NO_COOPERATIVE_MATRIX=1).
        let coop = report
            .cooperative_matrix
            .filter(|_| !env_flag("DILATED_NO_COOPERATIVE_MATRIX"));
        let mut experimental_features = wgpu::ExperimentalFeatures::disabled();
        if coop.is_some() {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: the only experimental feature asked for is cooperative matrices, used
            // by the cooperative-matrix convolutions alone (shaders/conv2d_coop.wgsl: square
            // f16 x f16 + f32 matrices of a configuration the adapter lists, loaded from and
            // stored to workgroup memory within bounds, in workgroup-uniform control flow),
            // which the test suite checks against the f64 reference wherever the adapter
            // offers them.
            experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        // Ask for everything the adapter offers: the defaults cap a storage binding at 128 MiB
        // and the buffer size at 256 MiB, far below what real GPUs allow.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("dilated"),
                required_features: features,
                required_limits: limits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
                experimental_features,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: report.info.name.clone(),
                reason: e.to_string(),
            })?;
        let lost = Arc::new(Lost::default());
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            flag.set(format!(
                "{reason:?}{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            ));
        });
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let limits = device.limits();
        #[cfg(feature = "fs")]
        let (pipeline_cache, pipeline_file) = match cache_dir {
            Some(dir) if features.contains(wgpu::Features::PIPELINE_CACHE) => {
                let path = cache_file(dir, "pipelines", &cache_key, "bin");
                let (cache, loaded) = open_pipeline_cache(&device, &path, &cache_key);
                let file = PipelineFile {
                    path,
                    loaded,
                    writing: Mutex::new(()),
                };
                (Some(cache), Some(file))
            }
            _ => (None, None),
        };
        // No files, so no pipeline cache to fill them.
        #[cfg(not(feature = "fs"))]
        let pipeline_cache = None;
        let mut gpu = Self {
            kernels: Kernels::new(pipeline_cache),
            cache_key,
            #[cfg(feature = "fs")]
            cache_dir: cache_dir.map(Path::to_path_buf),
            #[cfg(feature = "fs")]
            pipeline_file,
            tuning: Mutex::new(None),
            device,
            queue,
            report,
            limits,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            coop,
            coop_rejected: None,
            timeout: Some(DEFAULT_TIMEOUT),
            binding_cap: None,
            lost,
            uncaptured,
        };
        // Cooperative matrices are experimental in wgpu and the drivers' support is young:
        // before any plan may use them, the kernel must compute one small convolution right.
        if gpu.coop.is_some()
            && let Err(reason) = crate::gpu::ops::conv::coop_self_check(&gpu)
        {
            log::warn!(
                "{}: cooperative matrices left unused: {reason}",
                gpu.report.info.name
            );
            gpu.coop = None;
            gpu.coop_rejected = Some(reason);
        }
        Ok(gpu)
    }

    /// The pipeline cache's file and how much of it was used, when the adapter offers wgpu's
    /// pipeline cache and a cache directory is set ([`GpuOptions::cache_dir`]).
    #[cfg(feature = "fs")]
    pub fn pipeline_cache(&self) -> Option<PipelineCacheInfo> {
        self.pipeline_file.as_ref().map(|f| PipelineCacheInfo {
            path: f.path.clone(),
            loaded_bytes: f.loaded,
        })
    }

    /// Writes the pipeline cache's data to its file (atomically) when pipelines were built
    /// since it was last written; returns the bytes written, or `None` when there was nothing
    /// to write or no pipeline cache. Plans call this once their pipelines are built, and a
    /// `Gpu` calls it when dropped.
    #[cfg(feature = "fs")]
    pub fn save_pipeline_cache(&self) -> Result<Option<u64>> {
        let (Some(file), Some(cache)) = (&self.pipeline_file, self.kernels.cache()) else {
            return Ok(None);
        };
        if !self.kernels.take_new() || self.lost.get().is_some() {
            return Ok(None);
        }
        let Some(data) = cache.get_data() else {
            return Ok(None);
        };
        let bytes = encode_pipeline_data(&self.cache_key, &data);
        let _writing = file
            .writing
            .lock()
            .map_err(|_| Error::Internal("a pipeline cache write panicked".into()))?;
        if let Some(dir) = file.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        crate::io::write_file(&file.path, &bytes)?;
        Ok(Some(bytes.len() as u64))
    }

    /// The directory of the files kept between runs ([`GpuOptions::cache_dir`]).
    #[cfg(feature = "fs")]
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// The key this adapter's cached data is stored under (adapter name, vendor, device id,
    /// driver, backend and this crate's version).
    pub fn cache_key(&self) -> &str {
        &self.cache_key
    }

    /// The longest wait for one submission or read-back (`None`: no limit).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the longest wait for one submission or read-back (`None`: no limit).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Caps one storage binding at `bytes` below the device's own
    /// `max_storage_buffer_binding_size` (`None` lifts the cap). Tensors and weights are then
    /// split into windows of at most that size exactly as on a device with that limit: to run
    /// the split paths on small problems, or to mimic a smaller device. At least
    /// [`MIN_BINDING_CAP`] bytes; a smaller cap is an [`Error::InvalidSpec`].
    pub fn set_max_binding_bytes(&mut self, bytes: Option<u64>) -> Result<()> {
        if let Some(b) = bytes
            && b < MIN_BINDING_CAP
        {
            return Err(Error::InvalidSpec {
                context: "storage binding cap".into(),
                reason: format!("{b} bytes is below the smallest cap, {MIN_BINDING_CAP} bytes"),
            });
        }
        self.binding_cap = bytes;
        Ok(())
    }

    /// Whether the device is lost (reported by the driver, destroyed, or a wait timed out);
    /// every operation on a lost device returns [`Error::Device`]. Processes pending device
    /// events first, without waiting.
    pub fn is_lost(&self) -> bool {
        if self.lost.get().is_none() {
            // Runs pending callbacks, the device-lost one included.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        self.lost.get().is_some()
    }

    /// Why the device was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.get()
    }

    /// Errors if the device is known to be lost.
    fn check_lost(&self) -> Result<()> {
        match self.lost.get() {
            Some(reason) => Err(Error::Device(format!("the device was lost ({reason})"))),
            None => Ok(()),
        }
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
        self.max_binding_elems_of(Precision::F32)
    }

    /// Largest number of elements of `precision` one storage binding may hold, leaving room
    /// for the offset alignment of a window.
    pub(crate) fn max_binding_elems_of(&self, precision: Precision) -> usize {
        let bytes = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.binding_cap.unwrap_or(u64::MAX));
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        ((bytes - align) / precision.bytes()) as usize
    }

    /// The side (8 or 16) of the square f16 cooperative matrices the device's f16
    /// convolutions can run on ([`crate::ConvAlgorithm::Coop`]); `None` where the adapter
    /// offers none, with `DILATED_NO_COOPERATIVE_MATRIX=1` in the environment when the device
    /// was opened, or where the kernel failed the check it runs when the device is opened (a
    /// small f16 convolution against a direct loop on the host; see
    /// [`Gpu::cooperative_matrix_rejected`]).
    pub fn cooperative_matrix(&self) -> Option<u32> {
        self.coop
    }

    /// Why the device's f16 convolutions do not run on the cooperative matrices its adapter
    /// offers: the cooperative-matrix kernel failed, or computed wrong, the check run when the
    /// device was opened. `None` when they do, or when none are offered.
    pub fn cooperative_matrix_rejected(&self) -> Option<&str> {
        self.coop_rejected.as_deref()
    }

    /// Whether the device runs kernels storing `precision` (f16 needs the adapter's
    /// `SHADER_F16`, which the device is opened with when offered).
    pub fn supports(&self, precision: Precision) -> bool {
        self.check_precision(precision).is_ok()
    }

    /// Errors with [`Error::UnsupportedPrecision`] unless the device runs kernels storing
    /// `precision`.
    pub fn check_precision(&self, precision: Precision) -> Result<()> {
        precision.check_features(self.name(), self.device.features())
    }

    /// Errors if the device was lost or an error escaped the error scopes. Every operation of
    /// this crate runs inside error scopes, so what escapes them is device-wide (an internal
    /// error) and is reported to whichever thread checks first.
    pub(crate) fn check_health(&self) -> Result<()> {
        self.check_lost()?;
        let mut errs = self
            .uncaptured
            .lock()
            .map_err(|_| Error::Internal("the device error log is poisoned".into()))?;
        if !errs.is_empty() {
            let msg = errs.join("; ");
            errs.clear();
            return Err(Error::Device(msg));
        }
        Ok(())
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns a captured error
    /// into this crate's error. Error scopes are per thread, so concurrent callers each see
    /// their own errors only. Fails at once, without running `f`, on a lost device.
    ///
    /// In a browser the scopes' answers arrive only after the page's current code returns,
    /// so there `f` runs without scopes and its errors reach the uncaptured-error log, which
    /// every read-back checks ([`Gpu::check_health`]).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn scoped<T>(&self, _what: &str, _bytes: u64, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost()?;
        Ok(f())
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns a captured error
    /// into this crate's error. Error scopes are per thread, so concurrent callers each see
    /// their own errors only. Fails at once, without running `f`, on a lost device.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn scoped<T>(&self, what: &str, bytes: u64, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let (v, o) = block_on(async { Ok((validation.pop().await, oom.pop().await)) })?;
        if let Some(e) = o {
            log::debug!("out of memory: {e}");
            return Err(Error::OutOfMemory {
                what: what.to_string(),
                bytes,
            });
        }
        if let Some(e) = v {
            // A destroyed or lost device shows up as invalid objects: say so.
            if self.is_lost() {
                self.check_lost()?;
            }
            return Err(Error::Device(format!("{what}: {e}")));
        }
        Ok(value)
    }

    /// Submits command buffers and waits until the device has finished them.
    pub(crate) fn submit_and_wait(&self, commands: wgpu::CommandBuffer) -> Result<()> {
        let index = self.scoped("submitting commands", 0, || self.queue.submit([commands]))?;
        self.wait(Some(index), "waiting for the GPU")?;
        self.check_health()
    }

    /// Waits for a submission (or the latest one) within the timeout. A wait that times out
    /// marks the device lost: its work may still be running and using the buffers.
    pub(crate) fn wait(
        &self,
        submission_index: Option<wgpu::SubmissionIndex>,
        what: &str,
    ) -> Result<()> {
        self.check_lost()?;
        // A browser's queue runs submissions in order and answers read-backs when they are
        // done; it has nothing to wait on (and `poll` does nothing there).
        if cfg!(target_arch = "wasm32") {
            return Ok(());
        }
        match self.device.poll(wgpu::PollType::Wait {
            submission_index,
            timeout: self.timeout,
        }) {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => {
                let reason = format!(
                    "{what}: no answer within {:?} (DILATED_GPU_TIMEOUT)",
                    self.timeout.unwrap_or_default()
                );
                self.lost.set(reason.clone());
                Err(Error::Device(reason))
            }
            Err(e) => {
                if self.is_lost() {
                    self.check_lost()?;
                }
                Err(Error::Device(format!("{what}: {e}")))
            }
        }
    }
}

/// The pipeline cache of a new device, from the data in `path` when it holds data this
/// adapter, driver and version wrote and wgpu accepts it, else empty; and the bytes accepted.
#[cfg(feature = "fs")]
fn open_pipeline_cache(
    device: &wgpu::Device,
    path: &Path,
    key: &str,
) -> (wgpu::PipelineCache, u64) {
    let empty = || {
        // SAFETY: no data is given.
        unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("dilated pipelines"),
                data: None,
                fallback: true,
            })
        }
    };
    let file = match std::fs::read(path) {
        Ok(file) => file,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("pipeline cache {}: {e}; starting empty", path.display());
            }
            return (empty(), 0);
        }
    };
    let data = match decode_pipeline_data(key, &file) {
        Ok(data) => data,
        Err(why) => {
            log::info!("pipeline cache {}: {why}; rewriting it", path.display());
            return (empty(), 0);
        }
    };
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    // SAFETY: the data is what `PipelineCache::get_data` returned on an adapter with the same
    // name, ids, driver and backend under this crate's version: the file holds that key and a
    // hash of the data, both checked above; wgpu checks its own header again.
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("dilated pipelines"),
            data: Some(data),
            fallback: false,
        })
    };
    match block_on(async { Ok(scope.pop().await) }) {
        Ok(None) => (cache, data.len() as u64),
        Ok(Some(e)) => {
            log::info!(
                "pipeline cache {}: not used ({e}); rewriting it",
                path.display()
            );
            (empty(), 0)
        }
        Err(e) => {
            log::info!(
                "pipeline cache {}: not used ({e}); rewriting it",
                path.display()
            );
            (empty(), 0)
        }
    }
}

#[cfg(feature = "fs")]
impl Drop for Gpu {
    /// Writes the pipeline cache when pipelines were built since it was last written.
    fn drop(&mut self) {
        if let Err(e) = self.save_pipeline_cache() {
            log::warn!("could not write the pipeline cache: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::adapter::candidate_adapters;

    #[test]
    fn timeout_from_the_environment() {
        assert_eq!(timeout_from_env(None), Some(DEFAULT_TIMEOUT));
        assert_eq!(timeout_from_env(Some("0")), None);
        assert_eq!(
            timeout_from_env(Some(" 2.5 ")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(timeout_from_env(Some("soon")), Some(DEFAULT_TIMEOUT));
        assert_eq!(timeout_from_env(Some("-3")), Some(DEFAULT_TIMEOUT));
        assert_eq!(timeout_from_env(Some("inf")), Some(DEFAULT_TIMEOUT));
    }

    /// Opening by index gives the adapter listed at that index, over a name that matches no
    /// adapter; an index past the end is an error naming it. Needs an adapter (CI: lavapipe),
    /// like every GPU test.
    #[test]
    fn adapters_open_by_index_in_the_listed_order() {
        let options = GpuOptions::from_env();
        let listed = candidate_adapters(&options);
        assert!(!listed.is_empty(), "this test needs a GPU adapter");
        for (index, report) in listed.iter().enumerate() {
            let gpu = Gpu::with_options(&GpuOptions {
                adapter_index: Some(index),
                adapter_name: Some("no adapter is called this".into()),
                ..options.clone()
            })
            .unwrap_or_else(|e| panic!("adapter {index} ({}): {e}", report.info.name));
            assert_eq!(gpu.adapter().info.name, report.info.name);
            assert_eq!(gpu.adapter().info.backend, report.info.backend);
        }
        let past = listed.len();
        let err = Gpu::with_options(&GpuOptions {
            adapter_index: Some(past),
            ..options
        })
        .err()
        .expect("no adapter past the end");
        assert!(matches!(err, Error::NoAdapter { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("at index {past} ({past} adapter(s)")),
            "{err}"
        );
    }
}
