//! Flags several commands share, each set defined once and flattened into the commands'
//! arguments with `#[command(flatten)]`. Where a command's default or help line differs, the
//! command says so with `mut_arg`, so every flag keeps the name, default and help it always had.

use std::path::PathBuf;

use dilated::cpu::fast::CpuPrecision;
use dilated::plan::executor::RunOn;
use dilated::{PlanOptions, Precision};

/// The preset a command builds: `--model` and `--width-divisor`.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Preset to run.
    #[arg(long)]
    pub model: String,
    /// Divides every front-end width by this (1 = the released size).
    #[arg(long, default_value_t = 1)]
    pub width_divisor: usize,
}

/// The weights loaded into the preset: `--weights`, required unless the command makes it
/// optional.
#[derive(clap::Args)]
pub struct WeightsArgs {
    /// Weights (.safetensors or .caffemodel).
    #[arg(long, required = true)]
    pub weights: Option<PathBuf>,
}

/// Where a command runs: `--cpu`, `--gpu`, or neither (the GPU, falling back to the CPU).
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Run on the CPU instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
    /// Require the GPU: fail instead of running on the CPU when there is no adapter or the GPU
    /// run fails.
    #[arg(long, conflicts_with = "cpu")]
    pub gpu: bool,
}

impl DeviceArgs {
    /// The backends the flags allow.
    pub fn run_on(&self) -> RunOn {
        match (self.cpu, self.gpu) {
            (true, _) => RunOn::Cpu,
            (false, true) => RunOn::Gpu,
            (false, false) => RunOn::GpuOrCpu,
        }
    }
}

/// The GPU plan's memory: the budget `--max-memory` and the storage precision `--precision`.
#[derive(clap::Args)]
pub struct MemoryArgs {
    /// GPU memory budget, e.g. 512M or 1.5G (binary units): the image is processed in
    /// horizontal bands as needed so the plan stays under it; results are unchanged.
    #[arg(long, value_parser = parse_memory)]
    pub max_memory: Option<u64>,
    /// How the GPU stores weights and activations: f32, or f16 (half the memory, arithmetic
    /// still in f32; needs an adapter with SHADER_F16).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,
}

impl MemoryArgs {
    /// Plan options with the budget, the precision and the default kernels.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            max_memory: self.max_memory,
            precision: self.precision,
            ..Default::default()
        }
    }
}

/// The CPU's arithmetic: `--cpu-precision`.
#[derive(clap::Args)]
pub struct CpuPrecisionArgs {
    /// Arithmetic of the CPU's convolutions when the network runs there: `f32`, or `bf16`
    /// (inputs and weights rounded to bf16, sums in f32: about 2e-3 relative error per layer,
    /// 1e-2 on whole networks; faster where the CPU has AVX-512 BF16, refused where it has
    /// not).
    #[arg(long, default_value = "f32", value_parser = parse_cpu_precision)]
    pub cpu_precision: CpuPrecision,
}

impl CpuPrecisionArgs {
    /// `options` with this CPU precision.
    pub fn apply(&self, options: PlanOptions) -> PlanOptions {
        PlanOptions {
            cpu_precision: self.cpu_precision,
            ..options
        }
    }
}

fn parse_cpu_precision(s: &str) -> Result<CpuPrecision, String> {
    s.parse().map_err(|e: dilated::Error| e.to_string())
}

/// Parses `f32` or `f16`.
pub fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse().map_err(|e: dilated::Error| e.to_string())
}

/// Parses `HxW` (or `HXW`) into (height, width).
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected HxW, got {s:?}"))?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    Ok((parse(h)?, parse(w)?))
}

/// Parses a memory size such as `512M` or `1.5G` into bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    dilated::plan::parse_memory_size(s).map_err(|e| e.to_string())
}
