//! Training on the CPU, as the authors' Caffe setup trains.
//!
//! This is the reference implementation: plain loops accumulating in f64, mirroring
//! [`crate::cpu::reference`], checked against finite differences. It is meant for small
//! networks and as the oracle for faster implementations, not for training at full size.
//!
//! * [`grad`]: convolution (input, weight, bias), ReLU, max pooling and dropout backward;
//! * [`loss`]: [`softmax_cross_entropy`];
//! * [`solver`]: [`SgdSolver`] with [`LrPolicy`], its state saved as safetensors;
//! * [`network`]: [`train_step`] on a [`crate::net::Network`] giving [`Gradients`] by layer;

pub mod grad;
mod gradients;
pub mod loss;
pub mod network;
pub mod solver;

pub use gradients::Gradients;
pub use loss::{IGNORE_LABEL, SoftmaxLoss, softmax_cross_entropy};
pub use network::{Dropout, Forward, TrainStep, backward, forward, forward_loss, train_step};
pub use solver::{LrPolicy, ParamMults, SgdConfig, SgdSolver};
