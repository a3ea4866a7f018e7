//! The GPU side of training: gradients of the convolution (input, weights, bias), of the ReLU
//! and of the softmax cross-entropy loss, and Caffe's SGD step, each a kernel in
//! `shaders/grad/`. Every buffer is bound whole, so each tensor must fit one storage binding
//! (an [`Error::ExceedsDeviceLimits`](crate::Error::ExceedsDeviceLimits) otherwise); workgroup
//! grids fold past the per-dimension limit as in the forward ops.

pub mod conv_grad;
pub mod relu_grad;
pub mod sgd;
pub mod softmax_loss;

pub use conv_grad::ConvGrads;
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
