//! Plans: networks prepared to run, and where they run.
//!
//! - [`Plan`] is what applications hold: a network compiled for one GPU and one input shape,
//!   within an optional memory budget ([`PlanOptions`]); it runs the whole image at once when
//!   it fits and in horizontal bands otherwise, with identical results.
//! - [`GpuPlan`] is one compiled pass over a network at one shape (one submission, one
//!   read-back); [`Plan`] is made of one or more of them.
//! - [`layout`] cuts a network's leading row-local layers into stages of bands for a budget.
//! - [`CpuPlan`] runs a network on the CPU (the fast path for convolutions).
//! - [`executor`] runs a network on the GPU, the CPU, or the GPU with the CPU as a fallback.
//! - [`GpuTrainer`] trains a network on the GPU: the front-end (max pooling and dropout
//!   included), the context module, or both joined.

pub mod banded;
pub mod compiled;
pub mod cpu;
pub mod executor;
pub mod layout;
pub mod memory;
pub mod options;
pub mod trainer;

pub use banded::Plan;
pub use compiled::GpuPlan;
pub use cpu::CpuPlan;
pub use executor::{Execution, Executor, RanOn, RunOn};
pub use layout::{Band, BandedLayout, Bands, Stage};
pub use options::{PlanOptions, parse_memory_size};
pub use trainer::{GpuTrainer, StepStats, TrainingMemory};
