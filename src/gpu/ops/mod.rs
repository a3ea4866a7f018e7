//! The GPU ops, one file each, all behind [`GpuLayer`](crate::gpu::GpuLayer); the shared
//! dispatch shapes (chunks of planes, of images, of convolutions) in their own files.

pub mod argmax;
pub mod conv;
pub mod conv_chunks;
pub mod deconv;
pub mod max_pool;
pub(crate) mod per_pixel;
pub(crate) mod planes;
pub mod relu;
pub mod softmax;
pub mod train;
pub mod zoom;

pub use argmax::GpuArgmax;
pub use conv::{ConvAlgorithm, ConvChoice, DIRECT_TUNE_MAX_MACS, GpuConv2d, PACKED_MIN_PIXELS};
pub use deconv::GpuDeconv2d;
pub use max_pool::GpuMaxPool2d;
pub use relu::GpuRelu;
pub use softmax::GpuSoftmax;
pub use train::{
    ConvGradAlgorithm, ConvGrads, GpuDropout, GpuMask, GpuReluGrad, GpuSoftmaxLoss, LossAndGrad,
    SgdHyper,
};
pub use zoom::GpuZoom;
