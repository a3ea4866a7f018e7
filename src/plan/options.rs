//! Options of a plan and the parsing of memory sizes.

use crate::cpu::fast::CpuPrecision;
use crate::error::{Error, Result};
use crate::gpu::tune::Tuning;
use crate::gpu::{ConvAlgorithm, Precision};

/// Options of a plan: the GPU plan's, and the precision of the CPU plan that runs the network
/// where the CPU is asked for or falls back ([`crate::plan::executor::Executor`],
/// [`crate::segment::Segmenter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Most bytes of GPU memory the plan may hold (weights included); `None` for no limit.
    /// When the whole network at its input size does not fit, the image is processed in
    /// horizontal bands (see [`Bands`](crate::plan::layout::Bands)).
    pub max_memory: Option<u64>,
    /// Convolution kernel choice for every layer (default: each layer chooses, see
    /// [`crate::GpuConv2d::kernel_for`]). Anything but `Auto` overrides [`PlanOptions::tuning`].
    pub algorithm: ConvAlgorithm,
    /// How layers choose their kernel when `algorithm` is `Auto` (default: the choices
    /// measured earlier on the adapter where recorded, else the heuristic; see
    /// [`crate::gpu::tune`]).
    pub tuning: Tuning,
    /// How weights, biases and activations are stored (default f32; f16 halves the memory
    /// and needs the adapter's `SHADER_F16`, see [`Precision`]).
    pub precision: Precision,
    /// Arithmetic of the CPU plan (default f32; [`CpuPrecision::Bf16`] trades about 1e-2 of
    /// relative error for speed where the CPU has AVX-512 BF16).
    pub cpu_precision: CpuPrecision,
}

impl PlanOptions {
    /// Options with a memory budget in bytes.
    pub fn with_max_memory(max_memory: u64) -> Self {
        Self {
            max_memory: Some(max_memory),
            ..Self::default()
        }
    }
}

/// Parses a byte count: a number with an optional binary suffix `K`, `M`, `G` or `T`
/// (powers of 1024; `KiB`, `MB`, ... are read the same), e.g. `512M`, `1.5G`, `2147483648`.
pub fn parse_memory_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| Error::InvalidSpec {
        context: "memory size".into(),
        reason: format!("{text:?}: {why} (expected e.g. 512M, 1.5G or a byte count)"),
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad("unknown unit")),
    };
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let bytes = if number.contains('.') {
        let v: f64 = number.parse().map_err(|_| bad("not a number"))?;
        let b = (v * scale as f64).round();
        if !(0.0..1.8e19).contains(&b) {
            return Err(bad("out of range"));
        }
        b as u64
    } else {
        let v: u64 = number.parse().map_err(|_| bad("not a number"))?;
        v.checked_mul(scale).ok_or_else(|| bad("out of range"))?
    };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_memory_size(" 64 kb").unwrap(), 64 << 10);
        assert_eq!(parse_memory_size("1000").unwrap(), 1000);
        for bad in ["", "M", "12Q", "1.2.3G", "99999999999999999999T", "-1G"] {
            assert!(parse_memory_size(bad).is_err(), "{bad:?}");
        }
    }
}
