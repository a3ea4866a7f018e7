//! The CPU side: the plain reference (the test oracle), the fast path used for CPU runs, and
//! networks prepared for the CPU.

pub mod fast;
mod plan;
pub mod reference;

pub use plan::CpuPlan;
