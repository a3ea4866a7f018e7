//! Training on the CPU, as the authors' Caffe setup trains: the backward pass of every layer
//! op, the softmax cross-entropy loss with `ignore_label: 255` and `VALID` normalisation, a
//! whole-network training step, SGD with momentum and Caffe's learning-rate policies, and
//! segmentation metrics.
//!
//! This is the reference implementation: plain loops accumulating in f64, mirroring
//! [`crate::cpu::reference`], checked against finite differences. It is meant for small
//! networks and as the oracle for faster implementations, not for training at full size.
//!
//! * [`grad`] — convolution (input, weight, bias), ReLU, max pooling and dropout backward;
//! * [`loss`] — [`softmax_cross_entropy`];
//! * [`network`] — [`train_step`] on a [`crate::net::Network`] giving [`Gradients`] by layer,
//!   and [`activation_gradients`] from any gradient of the scores;
//! * [`solver`] — [`SgdSolver`] with [`LrPolicy`], its state saved as safetensors;
//! * [`eval`] — [`ConfusionMatrix`], IoU and pixel accuracy;
//! * [`receptive`] — theoretical and effective receptive fields of an output pixel;
//! * [`data`] — the context stage's cached scores and labels, in batches (the files listed in
//!   files: the `fs` feature);
//! * [`images`] — the front-end and joint stages' images and labels, as random crops (the
//!   dataset of files: the `fs` feature);
//! * [`synthetic`] — a small generated task for the context stage that needs context;
//! * [`fast`] — [`CpuTrainer`], the same steps in f32 on the fast CPU kernels, for training at
//!   full size on the CPU.
//!
//! The GPU side is [`crate::plan::GpuTrainer`].
//!
//! ```
//! use dilated::net::ContextModule;
//! use dilated::train::{SgdConfig, SgdSolver, train_step};
//! use ndarray::{Array3, Array4};
//!
//! let mut net = ContextModule::basic(3).dilations(&[1, 2, 1]).build()?;
//! let scores = Array4::<f32>::from_shape_fn((1, 3, 8, 8), |(_, c, y, x)| (c + y + x) as f32 % 3.0);
//! let labels = Array3::<u8>::from_shape_fn((1, 8, 8), |(_, y, x)| ((y * x) % 3) as u8);
//! let mut solver = SgdSolver::new(SgdConfig::default())?;
//! for iter in 0..3 {
//!     let step = train_step(&net, scores.view(), labels.view(), &[])?;
//!     solver.step(&mut net, &step.gradients, iter)?;
//! }
//! # Ok::<(), dilated::Error>(())
//! ```

pub mod data;
pub mod eval;
pub mod fast;
pub mod grad;
mod gradients;
pub mod images;
pub mod loss;
pub mod network;
pub mod receptive;
pub mod solver;
pub mod synthetic;

pub use eval::{ConfusionMatrix, Metrics, percent};
pub use fast::{CpuKernels, CpuStepStats, CpuTrainer};
pub use gradients::Gradients;
pub use loss::{IGNORE_LABEL, SoftmaxLoss, softmax_cross_entropy};
pub use network::{
    Dropout, Forward, TrainStep, activation_gradients, backward, forward, forward_loss, train_step,
};
pub use solver::{LrPolicy, ParamMults, SgdConfig, SgdSolver};
