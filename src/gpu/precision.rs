//! The element type of the tensors and weights a GPU plan keeps in storage buffers: f32, or f16
//! where the adapter has `SHADER_F16` (half the memory; the kernels still accumulate in f32).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// How a GPU plan stores weights, biases and activations. Every kernel reads its storage
/// into f32, computes and accumulates in f32, and rounds only what it writes back; with
/// [`Precision::F16`] that is IEEE half precision (11 significant bits, largest finite value
/// 65504), so each stored value carries a relative rounding error of at most 2^-11.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats (the default).
    #[default]
    F32,
    /// 16-bit floats in storage, f32 arithmetic; needs the adapter's `SHADER_F16`.
    F16,
}

impl Precision {
    /// Both precisions, f32 first.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16];

    /// Bytes of one stored element.
    pub const fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The WGSL scalar type of the storage (`f32` or `f16`).
    pub const fn wgsl(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// Position in [`Precision::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Errors with [`Error::UnsupportedPrecision`] unless an adapter whose features are
    /// `features` can run this precision (f16 needs [`wgpu::Features::SHADER_F16`]).
    pub fn check_features(self, adapter: &str, features: wgpu::Features) -> Result<()> {
        match self {
            Precision::F16 if !features.contains(wgpu::Features::SHADER_F16) => {
                Err(Error::UnsupportedPrecision {
                    precision: self.wgsl(),
                    adapter: adapter.to_string(),
                    reason: "the adapter does not offer SHADER_F16; use f32".into(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wgsl())
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// `f32` or `f16` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(Error::InvalidSpec {
                context: "precision".into(),
                reason: format!("{s:?}: expected f32 or f16"),
            }),
        }
    }
}

/// Rounds f32 values to f16 storage (round to nearest even; beyond 65504 gives infinity).
pub(crate) fn to_f16(data: &[f32]) -> Vec<half::f16> {
    data.iter().map(|&v| half::f16::from_f32(v)).collect()
}

/// Widens f16 storage to f32 (exactly).
pub(crate) fn from_f16(data: &[half::f16]) -> Vec<f32> {
    data.iter().map(|v| v.to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_parse_and_print() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(" F16 ".parse::<Precision>().unwrap(), Precision::F16);
        assert!("f64".parse::<Precision>().is_err());
        assert_eq!(Precision::default(), Precision::F32);
        assert_eq!(Precision::F16.bytes(), 2);
    }

    #[test]
    fn f16_needs_the_adapter_feature() {
        let none = wgpu::Features::empty();
        assert!(Precision::F32.check_features("x", none).is_ok());
        let err = Precision::F16.check_features("Some GPU", none).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedPrecision {
                    precision: "f16",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("Some GPU"), "{err}");
        assert!(
            Precision::F16
                .check_features("x", wgpu::Features::SHADER_F16)
                .is_ok()
        );
    }
}
