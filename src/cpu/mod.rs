//! The CPU side: the plain reference (the test oracle) and the fast path used for CPU runs.

pub mod fast;
pub mod reference;
