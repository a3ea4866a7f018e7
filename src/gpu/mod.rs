//! The GPU side: device setup, tensors, kernels and ops.

pub mod context;
pub mod kernels;
pub mod ops;
pub mod output_ops;
pub mod tensor;

pub use context::{AdapterReport, Gpu, GpuOptions, list_adapters};
pub use kernels::Kernel;
pub use ops::{ConvAlgorithm, Dispatch, GpuConv2d};
pub use output_ops::GpuDeconv2d;
pub use tensor::GpuTensor;
