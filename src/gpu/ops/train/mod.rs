//! The GPU side of training: gradients of the convolution (input, weights, bias), of the ReLU,
//! of max pooling and of the softmax cross-entropy loss, dropout with given masks, and Caffe's
//! SGD step, each a kernel in `shaders/grad/`. Like the forward ops they bind windows of their
//! buffers that fit one storage binding (convolutions chunked over images, output and input
//! channels, pooling over channel planes, the element-wise kernels over ranges of elements);
//! the loss binds the scores whole (an
//! [`Error::ExceedsDeviceLimits`](crate::Error::ExceedsDeviceLimits) when they do not fit).
//! Workgroup grids fold past the per-dimension limit as in the forward ops.

pub mod conv_grad;
pub mod dropout;
pub mod max_pool_grad;
pub mod relu_grad;
pub mod sgd;
pub mod softmax_loss;

pub use conv_grad::{ConvGradAlgorithm, ConvGrads, FLIP_MAX_BYTES};
pub use dropout::{GpuDropout, GpuMask};
pub use relu_grad::GpuReluGrad;
pub use sgd::SgdHyper;
pub use softmax_loss::{GpuSoftmaxLoss, LossAndGrad};

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::exceeds_binding;

/// Errors unless `elems` f32 elements of `what` fit one storage binding.
fn fits(gpu: &Gpu, what: &str, elems: usize) -> Result<()> {
    let max = gpu.max_binding_elems();
    if elems > max {
        return Err(exceeds_binding(what.to_string(), elems, max));
    }
    Ok(())
}
