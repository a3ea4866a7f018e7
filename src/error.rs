//! The crate's one error type.

/// Everything that can go wrong in `dilated`, as values a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// wgpu found no adapter at all (or none matching `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`).
    #[error(
        "no GPU adapter found{detail}. On Linux without a GPU install Mesa's software Vulkan \
         driver (`apt-get install mesa-vulkan-drivers`, which provides lavapipe); otherwise \
         install your GPU's Vulkan, Metal or DX12 driver, or check WGPU_BACKEND / WGPU_ADAPTER_NAME"
    )]
    NoAdapter {
        /// What was asked for, e.g. " for WGPU_ADAPTER_NAME=foo".
        detail: String,
    },

    /// The adapter refused to open a device with the requested limits and features.
    #[error("failed to open a device on adapter {adapter}: {reason}")]
    RequestDevice {
        /// Name of the adapter.
        adapter: String,
        /// wgpu's reason.
        reason: String,
    },

    /// Two shapes that must agree do not.
    #[error(
        "shape mismatch in {context}: {left_name} has shape {left:?} but {right_name} has shape {right:?}"
    )]
    ShapeMismatch {
        /// Where the mismatch was found (an op or a layer name).
        context: String,
        /// What the first shape belongs to.
        left_name: &'static str,
        /// The first shape.
        left: Vec<usize>,
        /// What the second shape belongs to.
        right_name: &'static str,
        /// The second shape.
        right: Vec<usize>,
    },

    /// A bias vector whose length differs from the number of output channels.
    #[error("bias of {context} has {actual} elements but the layer has {expected} output channels")]
    BiasLength {
        /// Op or layer name.
        context: String,
        /// Output channels of the layer.
        expected: usize,
        /// Length of the bias given.
        actual: usize,
    },

    /// A kernel (after dilation) larger than the padded input it slides over.
    #[error(
        "kernel of {context} covers {kernel:?} pixels (after dilation) but the padded input is only {padded_input:?}"
    )]
    KernelLargerThanInput {
        /// Op or layer name.
        context: String,
        /// Effective kernel extent (height, width) = (k - 1) * dilation + 1.
        kernel: (usize, usize),
        /// Input size plus padding (height, width).
        padded_input: (usize, usize),
    },

    /// A size that must be positive is zero.
    #[error("{context}: {what} must be at least 1, got 0")]
    ZeroDimension {
        /// Op or layer name.
        context: String,
        /// Which dimension, stride or dilation.
        what: &'static str,
    },

    /// Any other invalid specification.
    #[error("invalid specification of {context}: {reason}")]
    InvalidSpec {
        /// Op or layer name.
        context: String,
        /// Why it is invalid.
        reason: String,
    },

    /// A buffer larger than the device can allocate or bind.
    #[error(
        "{what} needs {bytes} bytes, more than the device allows ({limit_name} = {limit} bytes)"
    )]
    ExceedsDeviceLimits {
        /// What was being allocated.
        what: String,
        /// Bytes requested.
        bytes: u64,
        /// Which limit was hit.
        limit_name: &'static str,
        /// The limit's value.
        limit: u64,
    },

    /// The device ran out of memory while allocating.
    #[error("out of GPU memory while allocating {what} ({bytes} bytes)")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Bytes requested.
        bytes: u64,
    },

    /// A memory budget too small for the network at this input size, even processed in bands.
    #[error(
        "a GPU memory budget of {budget} bytes is too small: {reason} (at least {needed} bytes needed)"
    )]
    MemoryBudget {
        /// The budget given.
        budget: u64,
        /// The least memory that would do.
        needed: u64,
        /// Why, e.g. the weights alone exceed the budget.
        reason: String,
    },

    /// A storage precision the adapter cannot run (f16 without `SHADER_F16`), or one a
    /// component does not offer (training runs in f32 only).
    #[error("{precision} storage is not available on {adapter}: {reason}")]
    UnsupportedPrecision {
        /// The precision asked for (`f16`).
        precision: &'static str,
        /// The adapter, or the component, that cannot run it.
        adapter: String,
        /// Why, and what to use instead.
        reason: String,
    },

    /// The device was lost, or a submission or read-back failed.
    #[error("GPU device error: {0}")]
    Device(String),

    /// A broken invariant inside this crate (a bug, or a panic in another thread holding a
    /// lock): never a reason to retry elsewhere, so never a GPU failure that falls back to the
    /// CPU. Please report it.
    #[error("internal error in dilated: {0}")]
    Internal(String),

    /// A layer name or network structure problem found while building a network.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// Name of the offending layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },

    /// A name that is not one of the known models.
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel {
        /// The name given.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },

    /// Weights missing, malformed or not matching the network.
    #[error("weights: {0}")]
    Weights(String),

    /// Layers a network needs that a set of weights does not have.
    #[error("weights: missing layer(s) {}", missing.join(", "))]
    MissingLayers {
        /// Names of the missing layers, in the network's order.
        missing: Vec<String>,
    },

    /// A layer whose weights have another shape than the network expects.
    #[error(
        "weights of layer {layer}: the network expects shape {expected:?}, the weights have {found:?}"
    )]
    WeightShape {
        /// Name of the layer.
        layer: String,
        /// Shape the network expects.
        expected: Vec<usize>,
        /// Shape found in the weights.
        found: Vec<usize>,
    },

    /// A file (or byte buffer) that is not a valid file of its format: truncated, corrupt, or
    /// holding something this crate does not read (another dtype or rank).
    #[error("{path}: invalid {format} file: {reason}")]
    InvalidFile {
        /// The file concerned (`<bytes>` for an in-memory buffer).
        path: String,
        /// The format expected: `caffemodel`, `safetensors`, `npy` or `label PNG`.
        format: &'static str,
        /// What is wrong, naming the layer or tensor where known.
        reason: String,
    },

    /// A file that is not a readable image.
    #[error("{path}: not a readable image: {reason}")]
    Image {
        /// The file concerned.
        path: String,
        /// The decoder's reason.
        reason: String,
    },

    /// Input/output on files.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True for failures of the GPU rather than of the request: no adapter, no device, a lost
    /// device or failed submission, out of GPU memory, beyond the device's limits. The same work
    /// may still succeed on the CPU (see [`crate::plan::executor`]). [`Error::Internal`] is
    /// not one of them: a bug does not go away on the CPU, and must not be hidden by a fallback.
    pub fn is_gpu_failure(&self) -> bool {
        matches!(
            self,
            Error::NoAdapter { .. }
                | Error::RequestDevice { .. }
                | Error::Device(_)
                | Error::OutOfMemory { .. }
                | Error::ExceedsDeviceLimits { .. }
        )
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
