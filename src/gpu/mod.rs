//! The GPU side: device setup, tensors, the kernels' sources and pipelines, and one layer type
//! per op behind [`GpuLayer`].
//!
//! Adding an op takes one file in `ops/` (its uniform declared with `uniform!`, its layer type
//! implementing [`GpuLayer`]) and one shader in `shaders/` listed in [`shader::Kernel`].

pub mod adapter;
pub mod cache;
pub mod context;
pub mod dispatch;
pub mod layer;
pub mod ops;
pub mod precision;
pub mod shader;
pub mod tensor;
pub mod tune;

pub use adapter::AdapterReport;
#[cfg(not(target_arch = "wasm32"))]
pub use adapter::{candidate_adapters, list_adapters};
#[cfg(feature = "fs")]
pub use context::PipelineCacheInfo;
pub use context::{Gpu, GpuOptions};
pub use dispatch::Dispatch;
pub use layer::{GpuLayer, Io, LayerOptions, layer_for};
pub use ops::{
    ConvAlgorithm, ConvChoice, ConvGradAlgorithm, ConvGrads, GpuArgmax, GpuConv2d, GpuDeconv2d,
    GpuDropout, GpuMask, GpuMaxPool2d, GpuRelu, GpuReluGrad, GpuSoftmax, GpuSoftmaxLoss, GpuZoom,
    LossAndGrad, PACKED_MIN_PIXELS, SgdHyper,
};
pub use precision::Precision;
pub use shader::{Kernel, TiledVariant};
pub use tensor::GpuTensor;
