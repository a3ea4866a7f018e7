//! Training.

pub mod data;
