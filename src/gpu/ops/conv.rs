//! Convolution on the GPU: weights uploaded once in the kernels' layout, the kernel chosen per
//! layer (direct, tiled with an optional split reduction, or register-blocked), the work split
//! into chunks that fit one storage binding (see [`crate::gpu::ops::conv_chunks`]).

use ndarray::{ArrayView1, ArrayView4};

use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::layer::{GpuLayer, Io, expect_precision};
use crate::gpu::ops::conv_chunks::{
    ConvChunk, SPLIT_TARGET_WORKGROUPS, conv_chunks, forced_slices, pack_round_blocks, split_slices,
};
use crate::gpu::ops::train::conv_grad::ConvGradAlgorithm;
use crate::gpu::precision::Precision;
use crate::gpu::shader::{
    BLOCK_C, BLOCK_C_WIDE, BLOCK_P, BLOCKED_MIN_SUBGROUP, Kernel, TILE_K, TILE_M, TILE_N,
    TiledVariant, WG_BLOCKED, WG_COOP, WG_LINEAR, WG_TILED, coop_shared_bytes, uniform,
};
use crate::spec::{Conv2d, Shape, check_conv_params};

/// Which convolution kernel to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvAlgorithm {
    /// Chosen from the adapter and the layer's geometry (see [`GpuConv2d::kernel_for`]).
    #[default]
    Auto,
    /// One output per invocation.
    Direct,
    /// Workgroup-tiled implicit matrix product (the pointwise variant for 1x1 layers).
    Tiled,
    /// Register-blocked without workgroup memory, weights shared through subgroup broadcasts
    /// (for adapters that run shaders on CPU cores; needs subgroups of at least 8), 32 output
    /// channels per invocation.
    Blocked,
    /// The register-blocked kernel with 64 output channels per invocation
    /// ([`Kernel::ConvBlocked64`]): half the input loads per multiply-add, for layers whose
    /// channels fill 64-channel blocks. Falls back as `Blocked` does.
    BlockedWide,
    /// The 64-channel register-blocked kernel reading its weights from a packed copy
    /// ([`Kernel::ConvBlockedPacked`]): before each run, [`Kernel::ConvPackBlocked`] copies the
    /// weights of up to [`PACK_SCRATCH_BYTES`](crate::gpu::ops::conv_chunks::PACK_SCRATCH_BYTES)
    /// of 64-channel blocks at a time into scratch, one row of 64 per reduction step, which the
    /// kernel reads as two contiguous `vec4`s per lane instead of eight scalars. Falls back as
    /// `Blocked` does; training runs [`ConvAlgorithm::BlockedWide`] in its place.
    BlockedPacked,
    /// The workgroup-tiled implicit matrix product generated for another tile shape (every
    /// layer, 1x1 included); falls back as `Tiled` does where the device's limits are below
    /// the variant's workgroup size or workgroup memory.
    TiledVariant(TiledVariant),
    /// The tiled implicit matrix product on cooperative matrices (tensor cores on NVIDIA and
    /// AMD, simdgroup matrices on Apple): f16 operands, f32 accumulators
    /// ([`Kernel::ConvCoop16`], [`Kernel::ConvCoop8`]). Only for f16 storage, on devices that
    /// offer square f16 cooperative matrices ([`Gpu::cooperative_matrix`]); falls back as
    /// `Tiled` does elsewhere (f32 layers included: their inputs would be rounded to f16).
    Coop,
}

uniform! {
    /// Uniform of the convolution kernels (`shaders/common/conv_params.wgsl`).
    pub(crate) struct ConvParams {
        in_c: u32, in_h: u32, in_w: u32, in_base: u32,
        out_c: u32, out_h: u32, out_w: u32, out_base: u32,
        k_h: u32, k_w: u32, dil_h: u32, dil_w: u32,
        stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
        w_base: u32, w_row: u32, bias_base: u32, flags: u32,
        batch: u32, in_batch_stride: u32, out_batch_stride: u32, total: u32,
        k_split: u32, range_start: u32, range_len: u32, pad0: u32,
    }
}

uniform! {
    /// Uniform of `shaders/conv2d_split_reduce.wgsl`.
    pub(crate) struct SplitReduceParams {
        out_c: u32, pixels: u32, slices: u32, total: u32,
        out_base: u32, out_batch_stride: u32, bias_base: u32, flags: u32,
    }
}

/// A convolution's kernel choice: the algorithm, whether the tiled kernels may split a deep
/// reduction over several workgroups (split-K; see [`GpuConv2d::with_split`]), and into how
/// many slices (see [`GpuConv2d::with_split_slices`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvChoice {
    /// The kernel.
    pub algorithm: ConvAlgorithm,
    /// Whether the tiled kernels may split their reduction.
    pub split: bool,
    /// The split-K factor when `split`: 0 lets the heuristic decide (split only when the layer
    /// has too few tiles to fill a GPU), 1 or more asks for that many slices (see
    /// [`GpuConv2d::with_split_slices`]).
    pub slices: u8,
}

impl ConvChoice {
    /// A choice whose split, if any, the heuristic sizes.
    pub const fn new(algorithm: ConvAlgorithm, split: bool) -> Self {
        Self {
            algorithm,
            split,
            slices: 0,
        }
    }

    /// A short name: `auto`, `direct`, `blocked`, `blocked-64`, `tiled` (may split) or
    /// `tiled-nosplit` (`auto-nosplit` likewise), or a tiled variant's ([`TiledVariant::name`],
    /// `-nosplit` appended when it may not split); a split-K factor of `n` appends `-split{n}`
    /// (`tiled-split4`).
    pub fn name(self) -> String {
        let base = match (self.algorithm, self.split) {
            (ConvAlgorithm::TiledVariant(v), true) => v.name(),
            (ConvAlgorithm::TiledVariant(v), false) => v.name_nosplit(),
            (ConvAlgorithm::Auto, true) => "auto",
            (ConvAlgorithm::Auto, false) => "auto-nosplit",
            (ConvAlgorithm::Direct, _) => "direct",
            (ConvAlgorithm::Blocked, _) => "blocked",
            (ConvAlgorithm::BlockedWide, _) => "blocked-64",
            (ConvAlgorithm::BlockedPacked, _) => "blocked-packed",
            (ConvAlgorithm::Tiled, true) => "tiled",
            (ConvAlgorithm::Tiled, false) => "tiled-nosplit",
            (ConvAlgorithm::Coop, true) => "coop",
            (ConvAlgorithm::Coop, false) => "coop-nosplit",
        };
        if self.split && self.slices > 0 {
            format!("{base}-split{}", self.slices)
        } else {
            base.to_string()
        }
    }

    /// The choice [`ConvChoice::name`] names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some((base, n)) = name.rsplit_once("-split") {
            let slices: u8 = n.parse().ok().filter(|&n| n > 0)?;
            let choice = Self::from_name(base).filter(|c| c.split && c.slices == 0)?;
            return Some(Self { slices, ..choice });
        }
        let (algorithm, split) = match name {
            "auto" => (ConvAlgorithm::Auto, true),
            "auto-nosplit" => (ConvAlgorithm::Auto, false),
            "direct" => (ConvAlgorithm::Direct, false),
            "blocked" => (ConvAlgorithm::Blocked, false),
            "blocked-64" => (ConvAlgorithm::BlockedWide, false),
            "blocked-packed" => (ConvAlgorithm::BlockedPacked, false),
            "tiled" => (ConvAlgorithm::Tiled, true),
            "tiled-nosplit" => (ConvAlgorithm::Tiled, false),
            "coop" => (ConvAlgorithm::Coop, true),
            "coop-nosplit" => (ConvAlgorithm::Coop, false),
            _ => {
                let (base, split) = match name.strip_suffix("-nosplit") {
                    Some(base) => (base, false),
                    None => (name, true),
                };
                let v = TiledVariant::ALL.into_iter().find(|v| v.name() == base)?;
                (ConvAlgorithm::TiledVariant(v), split)
            }
        };
        Some(Self::new(algorithm, split))
    }
}

impl std::fmt::Display for ConvChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Split-K factors the tuner times for the tiled kernel on layers with fewer than
/// [`SPLIT_TARGET_WORKGROUPS`] tiles (on GPUs; see [`GpuConv2d::candidates`]).
pub const TUNE_SPLIT_SLICES: [u8; 4] = [2, 4, 8, 16];

/// Most multiply-adds of a layer with many output channels and pixels on which the direct
/// kernel is still timed when tuning (on larger ones it cannot win and is slow to time).
pub const DIRECT_TUNE_MAX_MACS: u64 = 1 << 26;

const FLAG_BIAS: u32 = 1;
const FLAG_RELU: u32 = 2;
const FLAG_ACCUMULATE: u32 = 4;

/// A convolution layer with its weights on the GPU.
///
/// The weights are stored per output channel as `[kh][kw][in]` rows (input channels innermost),
/// so the kernels read consecutive weights while they walk the input channels of one tap, and a
/// range of output channels stays one contiguous window.
pub struct GpuConv2d {
    pub(crate) spec: Conv2d,
    /// Weights as rows `[out][kh][kw][in]`.
    pub(crate) weight: wgpu::Buffer,
    /// The bias, or one placeholder element for a layer without.
    pub(crate) bias: wgpu::Buffer,
    /// The uniform's fields fixed by the spec; each chunk fills in its windows and sizes.
    pub(crate) template: ConvParams,
    algorithm: ConvAlgorithm,
    /// The device runs shaders on CPU cores (lavapipe, llvmpipe, SwiftShader, WARP).
    cpu_adapter: bool,
    /// Subgroups are enabled and hold at least [`BLOCKED_MIN_SUBGROUP`] invocations.
    blocked_supported: bool,
    /// Whether the tiled kernel may split its reduction.
    split: bool,
    /// Split-K factor when `split`; 0 for the heuristic's.
    split_slices: u8,
    /// Whether the packed register-blocked kernel may run (not where no scratch is accounted
    /// for it: training, input gradients); the unpacked 64-channel one runs in its place.
    packed_allowed: bool,
    /// The device allows the tiled kernel's workgroup size and workgroup memory.
    tiled_supported: bool,
    /// The device's limits, for the generated tiled variants' sizes.
    variants_supported: [bool; TiledVariant::ALL.len()],
    /// The cooperative-matrix kernel the device runs for f16 layers, if any.
    coop_kernel: Option<Kernel>,
    /// The element type of the weights, the bias and the tensors the layer runs on.
    precision: Precision,
    /// How the layer's gradients are computed.
    pub(crate) grad_algorithm: ConvGradAlgorithm,
}

/// Whether a device's limits allow the tiled kernel: a 256 x 1 x 1 workgroup and its two tiles
/// in workgroup memory (the weight tile's rows padded by one vec4).
fn tiled_fits(limits: &wgpu::Limits) -> bool {
    let shared = 16 * TILE_K * (TILE_M / 4 + 1) + 16 * TILE_K * (TILE_N / 4);
    limits.max_compute_invocations_per_workgroup >= WG_TILED
        && limits.max_compute_workgroup_size_x >= WG_TILED
        && limits.max_compute_workgroup_storage_size >= shared
}

/// Least output pixels (all images) for which `Auto` packs weights for the register-blocked
/// kernel: packing costs about as much per weight as 150 multiply-adds on lavapipe (12 ms for
/// the 1M weights of a 1x1 1024-channel layer whose 64x64 output takes 350 ms), so below this
/// the copy outweighs the faster reads (`benches/RESULTS.md`).
pub const PACKED_MIN_PIXELS: usize = 2048;

/// Whether `Auto`, on an adapter that runs shaders on CPU cores with subgroups of at least 8,
/// takes the 64-channel register-blocked kernel for an output (its channels fill 64-channel
/// blocks as well as 32-channel ones), and whether it reads packed weights there (the output
/// also has at least [`PACKED_MIN_PIXELS`] pixels).
pub(crate) fn auto_blocked_wide(output: Shape) -> (bool, bool) {
    let c = output.c;
    let wide = c.next_multiple_of(BLOCK_C_WIDE as usize) == c.next_multiple_of(BLOCK_C as usize);
    (wide, wide && output.n * output.plane() >= PACKED_MIN_PIXELS)
}

/// A chunk of a convolution and the number of slices its reduction is split into.
type ChunkSplit = (ConvChunk, usize);

/// The uniform's fields a convolution's spec fixes.
fn template_of(spec: &Conv2d) -> ConvParams {
    ConvParams {
        k_h: spec.kernel.0 as u32,
        k_w: spec.kernel.1 as u32,
        dil_h: spec.dilation.0 as u32,
        dil_w: spec.dilation.1 as u32,
        stride_h: spec.stride.0 as u32,
        stride_w: spec.stride.1 as u32,
        pad_top: spec.padding.top as u32,
        pad_left: spec.padding.left as u32,
        w_row: (spec.in_channels * spec.kernel.0 * spec.kernel.1) as u32,
        ..ConvParams::default()
    }
}

/// Whether a device's limits allow the cooperative-matrix convolution's workgroup and its
/// workgroup memory for matrices of side `side`.
fn coop_fits(limits: &wgpu::Limits, side: u32) -> bool {
    limits.max_compute_invocations_per_workgroup >= WG_COOP
        && limits.max_compute_workgroup_size_x >= WG_COOP
        && limits.max_compute_workgroup_storage_size >= coop_shared_bytes(side)
}

/// The cooperative-matrix convolution a device runs: one for the side of the f16 matrices
/// it offers where its limits allow the kernel's workgroup and workgroup memory, and its
/// subgroups (at most [`WG_COOP`] invocations) divide the workgroup.
fn coop_kernel_of(gpu: &Gpu) -> Option<Kernel> {
    let side = gpu.cooperative_matrix()?;
    let info = &gpu.adapter().info;
    let subgroups_fit = info.subgroup_max_size <= WG_COOP && info.subgroup_min_size > 0;
    (subgroups_fit && coop_fits(gpu.limits(), side))
        .then(|| Kernel::coop_for(side))
        .flatten()
}

/// The check a device's cooperative-matrix kernel passes before plans may use it
/// ([`Gpu::cooperative_matrix`]): one f16 convolution (3x3, dilation 2, 24 to 40 channels,
/// bias, on a 19x21 input) of seeded values on the device, against a
/// direct loop in f64 on the host over the same f16-rounded values. The error allowed,
/// 1e-2 of the largest output, is 20 times the f16 rounding of the output and far below
/// what a wrong kernel gives. `Err` says why it failed.
pub(crate) fn coop_self_check(gpu: &Gpu) -> std::result::Result<(), String> {
    let spec = Conv2d::new(24, 40, 3).dilation(2).pad(2);
    let shape = Shape::new(1, 24, 19, 21);
    // Seeded values in [-1, 1), rounded to f16 so the device reads exactly these.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        half::f16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_f32()
    };
    let x = ndarray::Array4::from_shape_simple_fn(shape.dims(), &mut next);
    let w = ndarray::Array4::from_shape_simple_fn(spec.weight_shape(), &mut next);
    let b = ndarray::Array1::from_shape_simple_fn(spec.out_channels, &mut next);
    let out = spec
        .output_shape(shape, "check")
        .map_err(|e| e.to_string())?;
    let got = (|| -> Result<ndarray::Array4<f32>> {
        let conv = GpuConv2d::new_as(gpu, spec, w.view(), Some(b.view()), Precision::F16)?
            .with_algorithm(ConvAlgorithm::Coop);
        let input = gpu.upload_as(x.view(), Precision::F16)?;
        let output = gpu.filled_as(out, f32::NAN, Precision::F16)?;
        let dispatches = conv.prepare(gpu, &Io::tensors(&input, &output))?;
        if !dispatches.iter().any(|d| d.kernel().coop_size().is_some()) {
            return Err(crate::Error::Internal(
                "the check did not run the cooperative-matrix kernel".into(),
            ));
        }
        gpu.run(&dispatches)?;
        gpu.download(&output)
    })()
    .map_err(|e| e.to_string())?;
    let (mut diff, mut largest) = (0f64, 0f64);
    for (co, oy, ox) in output_positions(out) {
        let mut sum = b[co] as f64;
        for ci in 0..spec.in_channels {
            for ky in 0..3 {
                for kx in 0..3 {
                    let iy = (oy + 2 * ky) as isize - 2;
                    let ix = (ox + 2 * kx) as isize - 2;
                    if iy >= 0 && ix >= 0 && (iy as usize) < shape.h && (ix as usize) < shape.w {
                        sum += x[[0, ci, iy as usize, ix as usize]] as f64
                            * w[[co, ci, ky, kx]] as f64;
                    }
                }
            }
        }
        let v = got[[0, co, oy, ox]] as f64;
        if !v.is_finite() {
            return Err(format!("output ({co}, {oy}, {ox}) is {v}"));
        }
        diff = diff.max((v - sum).abs());
        largest = largest.max(sum.abs());
    }
    let err = diff / largest.max(f64::MIN_POSITIVE);
    if err > 1e-2 {
        return Err(format!(
            "a check convolution is off by {err:.2e} of its largest output"
        ));
    }
    Ok(())
}

/// Every (channel, row, column) of an output shape with one image.
fn output_positions(out: Shape) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..out.c).flat_map(move |c| (0..out.h).flat_map(move |y| (0..out.w).map(move |x| (c, y, x))))
}

/// Whether a device's limits allow a generated tiled variant's workgroup and its tiles.
fn variant_fits(limits: &wgpu::Limits, v: TiledVariant) -> bool {
    limits.max_compute_invocations_per_workgroup >= v.workgroup_size()
        && limits.max_compute_workgroup_size_x >= v.workgroup_size()
        && limits.max_compute_workgroup_storage_size >= v.shared_bytes()
}

/// Output channels x pixels per workgroup tile of a tiled kernel; `None` for the others.
fn tile_of(kernel: Kernel) -> Option<(usize, usize)> {
    match kernel {
        Kernel::ConvTiled | Kernel::ConvPointwise => Some((TILE_M as usize, TILE_N as usize)),
        Kernel::ConvCoop8 | Kernel::ConvCoop16 => {
            kernel.coop_tile().map(|t| (t as usize, t as usize))
        }
        k => k
            .tiled_variant()
            .map(|v| (v.shape().tile_m as usize, v.shape().tile_n as usize)),
    }
}

/// Most f32 elements per piece of the host-side weight reordering, bounding its scratch memory.
const UPLOAD_ELEMS: usize = 4 << 20;

impl GpuConv2d {
    /// Validates and uploads weights `[out, in, kh, kw]` and the bias (required iff `spec.bias`).
    pub fn new(
        gpu: &Gpu,
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Result<Self> {
        Self::new_as(gpu, spec, weight, bias, Precision::F32)
    }

    /// [`GpuConv2d::new`] with the weights and bias stored as `precision` elements (rounded
    /// to nearest on the host for f16); the layer then runs on tensors of that precision,
    /// accumulating in f32. F16 needs the adapter's `SHADER_F16`
    /// ([`Error::UnsupportedPrecision`](crate::Error::UnsupportedPrecision) otherwise).
    pub fn new_as(
        gpu: &Gpu,
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        precision: Precision,
    ) -> Result<Self> {
        gpu.check_precision(precision)?;
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        // [out][in][kh][kw] -> [out][kh][kw][in], uploaded a few output channels at a time.
        let w_row = spec.in_channels * spec.kernel.0 * spec.kernel.1;
        let buffer = gpu.create_buffer(
            "conv weight",
            spec.weight_len() as u64 * precision.bytes(),
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )?;
        // An even number of rows per piece, so f16 pieces start on whole 4-byte words.
        let rows = (UPLOAD_ELEMS / w_row).max(1).next_multiple_of(2);
        let reordered = weight.permuted_axes([0, 2, 3, 1]);
        let mut piece = Vec::with_capacity(rows.min(spec.out_channels) * w_row);
        for co0 in (0..spec.out_channels).step_by(rows) {
            let co1 = (co0 + rows).min(spec.out_channels);
            piece.clear();
            piece.extend(
                reordered
                    .slice(ndarray::s![co0..co1, .., .., ..])
                    .iter()
                    .copied(),
            );
            gpu.write_as(&buffer, co0 * w_row, &piece, precision)?;
        }
        let weight = buffer;
        let bias = match bias {
            Some(b) => gpu.storage_from_slice_as("conv bias", &b.to_vec(), precision)?,
            None => gpu.storage_from_slice_as("conv bias (none)", &[0.0], precision)?,
        };
        let info = &gpu.adapter().info;
        Ok(Self {
            spec,
            weight,
            bias,
            template: template_of(&spec),
            algorithm: ConvAlgorithm::Auto,
            cpu_adapter: info.device_type == wgpu::DeviceType::Cpu,
            blocked_supported: gpu.device.features().contains(wgpu::Features::SUBGROUP)
                && info.subgroup_min_size >= BLOCKED_MIN_SUBGROUP,
            split: true,
            split_slices: 0,
            packed_allowed: true,
            tiled_supported: tiled_fits(gpu.limits()),
            variants_supported: TiledVariant::ALL.map(|v| variant_fits(gpu.limits(), v)),
            coop_kernel: coop_kernel_of(gpu),
            precision,
            grad_algorithm: ConvGradAlgorithm::Auto,
        })
    }

    /// The element type of the layer's weights and of the tensors it runs on.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Another layer of `spec` (same precision, device and kernel choice) whose weights are
    /// `weight`, rows `[out][kh][kw][in]` of `spec`'s sizes, without a bias: the convolution
    /// that computes a layer's input gradient from its flipped weights.
    pub(crate) fn sibling(&self, spec: Conv2d, weight: wgpu::Buffer) -> Self {
        Self {
            spec,
            weight,
            bias: self.bias.clone(),
            template: template_of(&spec),
            ..*self
        }
        .without_packed()
    }

    /// The layer with the unpacked 64-channel register-blocked kernel in place of the packed
    /// one, forced or `Auto`'s: for runs that keep no scratch for packed weights (training,
    /// whose memory estimate counts none).
    pub(crate) fn without_packed(mut self) -> Self {
        self.packed_allowed = false;
        self
    }

    /// Whether the device runs the register-blocked kernels (subgroups of at least
    /// [`BLOCKED_MIN_SUBGROUP`] invocations) and they are its choice: it runs shaders on CPU
    /// cores (as for [`ConvAlgorithm::Auto`]).
    pub(crate) fn blocked_preferred(&self) -> bool {
        self.blocked_supported && self.cpu_adapter
    }

    /// Forces a kernel choice (for benchmarks and tests); `Auto` picks by adapter and geometry.
    /// [`ConvAlgorithm::Blocked`] falls back to `Tiled` where the device lacks subgroups of at
    /// least 8 invocations, and `Tiled` to `Direct` where its limits are below the tiled
    /// kernel's 256 invocations and 8.25 KiB of workgroup memory (under the WebGPU defaults, so
    /// only on unusual devices); [`GpuConv2d::kernel_for`] tells which kernel runs.
    pub fn with_algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Whether the tiled kernel may split a deep reduction over several workgroups per output
    /// tile when the layer has too few tiles to fill the GPU (default: yes). A split holds the
    /// partial sums in a scratch buffer (at most [`SPLIT_SCRATCH_BYTES`](crate::gpu::ops::conv_chunks::SPLIT_SCRATCH_BYTES)) and adds them in a
    /// second pass; plans built under a memory budget do not split.
    pub fn with_split(mut self, split: bool) -> Self {
        self.split = split;
        self
    }

    /// The split-K factor of the tiled kernels when they may split (see
    /// [`GpuConv2d::with_split`]): 0 (the default) lets the heuristic decide, which splits only
    /// layers with too few tiles to fill a GPU; `n` cuts every reduction into `n` slices, fewer
    /// where each slice would get under
    /// [`SPLIT_FORCED_MIN_DEPTH`](crate::gpu::ops::conv_chunks::SPLIT_FORCED_MIN_DEPTH) of it
    /// or the partial sums would not fit one binding. The tuner times a few factors on GPUs
    /// ([`TUNE_SPLIT_SLICES`]). Plans built under a memory budget do not split at all.
    pub fn with_split_slices(mut self, slices: u8) -> Self {
        self.split_slices = slices;
        self
    }

    /// The layer's spec.
    pub fn spec(&self) -> &Conv2d {
        &self.spec
    }

    /// The kernel used for an output shape.
    ///
    /// `Auto` picks, on an adapter that runs shaders on CPU cores (device type `Cpu`, such as
    /// lavapipe) with subgroups of at least 8, the register-blocked kernel for every shape: there
    /// each load costs a loop over the SIMD lanes, and it makes the fewest loads per
    /// multiply-add (measured 10x to 40x the direct kernel, see `benches/RESULTS.md`); its
    /// 64-channel form ([`ConvAlgorithm::BlockedWide`]) on layers whose output channels fill
    /// 64-channel blocks as well as 32-channel ones, the 32-channel one elsewhere; the
    /// 64-channel form reads packed weights ([`ConvAlgorithm::BlockedPacked`]) where the
    /// output has at least [`PACKED_MIN_PIXELS`] pixels, except in training, which holds no
    /// scratch for them. On other adapters it picks the workgroup-tiled kernel (its pointwise variant
    /// for 1x1 layers; for f16 layers the cooperative-matrix kernel where the device has one,
    /// [`ConvAlgorithm::Coop`]), or the direct kernel when the layer has fewer than
    /// `TILE_M / 4` (32) output channels or `TILE_N / 4` (32) output pixels, so that a
    /// 128x128 tile would be mostly idle. The tiled
    /// kernel may further split its reduction (see [`GpuConv2d::with_split`]); the dispatches
    /// [`GpuLayer::prepare`] returns name every kernel that runs.
    pub fn kernel_for(&self, output: Shape) -> Kernel {
        self.kernel_as(self.algorithm, output)
    }

    /// The kernel `algorithm` runs for an output shape on this device.
    pub(crate) fn kernel_as(&self, algorithm: ConvAlgorithm, output: Shape) -> Kernel {
        let tiled = if !self.tiled_supported {
            Kernel::ConvDirect
        } else if self.spec.is_pointwise() {
            Kernel::ConvPointwise
        } else {
            Kernel::ConvTiled
        };
        match algorithm {
            ConvAlgorithm::Direct => Kernel::ConvDirect,
            ConvAlgorithm::Tiled => tiled,
            ConvAlgorithm::TiledVariant(v) => {
                let at = TiledVariant::ALL.iter().position(|&x| x == v);
                if at.is_some_and(|i| self.variants_supported[i]) {
                    v.kernel()
                } else {
                    tiled
                }
            }
            ConvAlgorithm::Coop => self.coop().unwrap_or(tiled),
            ConvAlgorithm::Blocked if self.blocked_supported => Kernel::ConvBlocked,
            ConvAlgorithm::BlockedWide if self.blocked_supported => Kernel::ConvBlocked64,
            ConvAlgorithm::BlockedPacked if self.blocked_supported => {
                if self.packed_allowed {
                    Kernel::ConvBlockedPacked
                } else {
                    Kernel::ConvBlocked64
                }
            }
            ConvAlgorithm::Blocked | ConvAlgorithm::BlockedWide | ConvAlgorithm::BlockedPacked => {
                tiled
            }
            // The wide block (faster in every paired run, see `benches/RESULTS.md`), reading
            // packed weights, where it computes no more padding channels than the narrow one.
            ConvAlgorithm::Auto if self.cpu_adapter && self.blocked_supported => {
                match auto_blocked_wide(output) {
                    (true, true) if self.packed_allowed => Kernel::ConvBlockedPacked,
                    (true, _) => Kernel::ConvBlocked64,
                    (false, _) => Kernel::ConvBlocked,
                }
            }
            // A tile of TILE_M channels x TILE_N pixels is mostly idle when the layer has few of
            // either; the direct kernel wastes nothing there.
            ConvAlgorithm::Auto => {
                if output.c * 4 < TILE_M as usize || output.plane() * 4 < TILE_N as usize {
                    Kernel::ConvDirect
                } else {
                    self.coop().unwrap_or(tiled)
                }
            }
        }
    }

    /// The cooperative-matrix kernel, where the device has one and the layer stores f16.
    fn coop(&self) -> Option<Kernel> {
        self.coop_kernel
            .filter(|_| self.precision == Precision::F16)
    }

    /// The layer's kernel choice: its algorithm and whether the tiled kernel may split.
    pub fn choice(&self) -> ConvChoice {
        ConvChoice {
            algorithm: self.algorithm,
            split: self.split,
            slices: self.split_slices,
        }
    }

    /// Sets the kernel choice (see [`GpuConv2d::with_algorithm`], [`GpuConv2d::with_split`]).
    pub fn with_choice(self, choice: ConvChoice) -> Self {
        self.with_algorithm(choice.algorithm)
            .with_split(choice.split)
            .with_split_slices(choice.slices)
    }

    /// The kernel choices worth timing for a run from `input` on this device (see
    /// [`crate::gpu::tune`]), today's choice ([`ConvAlgorithm::Auto`]) first, each running a
    /// different set of dispatches. Bounded by geometry: the tiled kernel with and without a
    /// split reduction only when it would split (and `split` allows it), the register-blocked
    /// kernel only where the device has subgroups of at least 8, and the direct kernel only on
    /// layers small enough that it can win: fewer than [`TILE_M`] output channels or
    /// [`TILE_N`] output pixels, at most [`DIRECT_TUNE_MAX_MACS`] multiply-adds, or where the
    /// tiled kernel does not fit the device. The generated tiled variants ([`TiledVariant`],
    /// each with the same split as the tiled kernel) are timed on devices that do not run
    /// shaders on CPU cores (where the register-blocked kernel wins and the tiled ones are
    /// slow to time), when their limits allow them, and so is the cooperative-matrix kernel
    /// for f16 layers on devices that have one.
    pub fn candidates(&self, gpu: &Gpu, input: Shape, split: bool) -> Result<Vec<ConvChoice>> {
        let output = self.output_shape(input)?;
        let auto = ConvChoice::new(ConvAlgorithm::Auto, split);
        let mut out = vec![auto];
        let mut seen = vec![self.signature(gpu, input, output, auto)?];
        let macs = output.len() as u64
            * (self.spec.in_channels * self.spec.kernel.0 * self.spec.kernel.1) as u64;
        let direct_may_win = output.c < TILE_M as usize
            || output.plane() < TILE_N as usize
            || macs <= DIRECT_TUNE_MAX_MACS
            || !self.tiled_supported;
        let mut options = vec![
            ConvChoice::new(ConvAlgorithm::Tiled, split),
            ConvChoice::new(ConvAlgorithm::Tiled, false),
        ];
        // Cooperative matrices where they are hardware (on CPU cores they are emulated and
        // slow to time, as the tiled kernels are).
        if self.coop().is_some() && !self.cpu_adapter {
            options.push(ConvChoice::new(ConvAlgorithm::Coop, split));
            options.push(ConvChoice::new(ConvAlgorithm::Coop, false));
        }
        if self.blocked_supported {
            for algorithm in [
                ConvAlgorithm::Blocked,
                ConvAlgorithm::BlockedWide,
                ConvAlgorithm::BlockedPacked,
            ]
            .into_iter()
            .filter(|&a| a != ConvAlgorithm::BlockedPacked || self.packed_allowed)
            {
                options.push(ConvChoice::new(algorithm, false));
            }
        }
        if direct_may_win {
            options.push(ConvChoice::new(ConvAlgorithm::Direct, false));
        }
        // Split-K factors for the tiled kernel on layers with too few tiles to fill a GPU,
        // where the heuristic's factor is a guess.
        let tiles = output.n
            * output.c.div_ceil(TILE_M as usize)
            * output.plane().div_ceil(TILE_N as usize);
        if !self.cpu_adapter && split && tiles < SPLIT_TARGET_WORKGROUPS {
            for slices in TUNE_SPLIT_SLICES {
                options.push(ConvChoice {
                    slices,
                    ..ConvChoice::new(ConvAlgorithm::Tiled, true)
                });
            }
        }
        if !self.cpu_adapter {
            for (v, _) in TiledVariant::ALL
                .into_iter()
                .zip(self.variants_supported)
                .filter(|(_, ok)| *ok)
            {
                options.push(ConvChoice::new(ConvAlgorithm::TiledVariant(v), split));
            }
        }
        for c in options {
            let sig = self.signature(gpu, input, output, c)?;
            if !seen.contains(&sig) {
                seen.push(sig);
                out.push(c);
            }
        }
        Ok(out)
    }

    /// What a choice runs: its kernel and the split of each chunk.
    fn signature(
        &self,
        gpu: &Gpu,
        input: Shape,
        output: Shape,
        choice: ConvChoice,
    ) -> Result<(Kernel, Vec<usize>)> {
        let (chunks, _, kernel) = self.chunks_and_splits(gpu, input, output, choice)?;
        Ok((kernel, chunks.iter().map(|c| c.1).collect()))
    }

    /// The chunks of a run at `out_shape`, each with the number of slices its reduction is
    /// split into (tiled kernels on few tiles), and the scratch elements (of the layer's
    /// precision) the run needs: the partial sums of the largest split chunk, or the largest
    /// round of packed weights of the packed register-blocked kernel (0 for neither); and the
    /// kernel that runs: the unpacked 64-channel one in place of the packed one where a
    /// 64-channel block of packed weights would not fit one binding.
    fn chunks_and_splits(
        &self,
        gpu: &Gpu,
        in_shape: Shape,
        out_shape: Shape,
        choice: ConvChoice,
    ) -> Result<(Vec<ChunkSplit>, usize, Kernel)> {
        let taps = self.spec.kernel.0 * self.spec.kernel.1;
        let pixels = out_shape.plane();
        let max = gpu.max_binding_elems_of(self.precision);
        let chunks = conv_chunks(&self.spec, in_shape, out_shape, max)?;
        let wide = BLOCK_C_WIDE as usize;
        let kernel = match self.kernel_as(choice.algorithm, out_shape) {
            Kernel::ConvBlockedPacked if chunks.iter().any(|ch| wide * taps * ch.ci_n > max) => {
                Kernel::ConvBlocked64
            }
            k => k,
        };
        let mut scratch = 0;
        let chunks = chunks
            .into_iter()
            .map(|ch| {
                let partial = ch.nb * ch.co_n * pixels;
                let k = match tile_of(kernel) {
                    Some(_) if choice.split && choice.slices > 0 => {
                        forced_slices(choice.slices.into(), ch.ci_n * taps, partial, max)
                    }
                    Some((tile_m, tile_n)) if choice.split => {
                        let tiles = ch.nb * ch.co_n.div_ceil(tile_m) * pixels.div_ceil(tile_n);
                        split_slices(tiles, ch.ci_n * taps, partial, max)
                    }
                    _ => 1,
                };
                if k > 1 {
                    scratch = scratch.max(k * partial);
                }
                if kernel == Kernel::ConvBlockedPacked {
                    let block = wide * taps * ch.ci_n;
                    let blocks = ch.co_n.div_ceil(wide);
                    let round = pack_round_blocks(block, self.precision.bytes(), blocks, max);
                    scratch = scratch.max(round * block);
                }
                (ch, k)
            })
            .collect();
        Ok((chunks, scratch, kernel))
    }
}

impl GpuLayer for GpuConv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "conv2d")
    }

    /// Bytes of weights and bias on the GPU.
    fn weight_bytes(&self) -> u64 {
        self.weight.size() + self.bias.size()
    }

    /// Bytes a run at `input` keeps in scratch: the partial sums of a split reduction, or a
    /// round of packed weights of the packed register-blocked kernel (0 for neither).
    fn scratch_bytes(&self, gpu: &Gpu, input: Shape) -> Result<u64> {
        let out_shape = self.output_shape(input)?;
        Ok(self
            .chunks_and_splits(gpu, input, out_shape, self.choice())?
            .1 as u64
            * self.precision.bytes())
    }

    /// Records the dispatches. A split reduction keeps its partial sums in `io.scratch` when
    /// given (a plan shares one among its layers, which run one after another), else in a
    /// buffer of its own.
    fn prepare(&self, gpu: &Gpu, io: &Io<'_>) -> Result<Vec<Dispatch>> {
        self.prepare_as(gpu, io, self.choice())
    }
}

impl GpuConv2d {
    /// [`GpuLayer::prepare`] with another kernel choice than the layer's own (for timing the
    /// candidates, see [`crate::gpu::tune`]).
    pub fn prepare_as(&self, gpu: &Gpu, io: &Io<'_>, choice: ConvChoice) -> Result<Vec<Dispatch>> {
        let (input, in_shape, output, out_shape) =
            (io.input, io.input_shape, io.output, io.output_shape);
        let s = &self.spec;
        let precision = self.precision;
        expect_precision("conv2d", precision, io.precision)?;
        expect_shape("conv2d", out_shape, self.output_shape(in_shape)?)?;
        let window = |buffer, start, len| gpu.window_of(buffer, start, len, precision);
        let taps = s.kernel.0 * s.kernel.1;
        let w_row = s.in_channels * taps;
        let pixels = out_shape.plane();
        let (chunks, scratch_len, kernel) =
            self.chunks_and_splits(gpu, in_shape, out_shape, choice)?;
        let own;
        let scratch = match io.scratch {
            _ if scratch_len == 0 => None,
            Some(b) if b.size() >= scratch_len as u64 * precision.bytes() => Some(b),
            _ => {
                own = gpu.create_buffer(
                    "conv split partial sums",
                    scratch_len as u64 * precision.bytes(),
                    wgpu::BufferUsages::STORAGE,
                )?;
                Some(&own)
            }
        };
        let mut dispatches = Vec::new();
        for &(ch, k_split) in &chunks {
            let in_start = (ch.n0 * in_shape.c + ch.ci0) * in_shape.plane();
            let in_len = if ch.nb > 1 {
                ch.nb * in_shape.c * in_shape.plane()
            } else {
                ch.ci_n * in_shape.plane()
            };
            let out_start = (ch.n0 * out_shape.c + ch.co0) * pixels;
            let out_len = if ch.nb > 1 {
                ch.nb * out_shape.c * pixels
            } else {
                ch.co_n * pixels
            };
            let in_win = window(input, in_start, in_len);
            let out_win = window(output, out_start, out_len);
            let w_win = window(&self.weight, ch.co0 * w_row, ch.co_n * w_row);

            let b_win = if s.bias {
                window(&self.bias, ch.co0, ch.co_n)
            } else {
                window(&self.bias, 0, 1)
            };
            let mut flags = 0;
            if ch.ci0 > 0 {
                flags |= FLAG_ACCUMULATE;
            }
            if s.bias && ch.ci0 == 0 {
                flags |= FLAG_BIAS;
            }
            if s.relu && ch.ci0 + ch.ci_n == s.in_channels {
                flags |= FLAG_RELU;
            }
            // The chunk's uniform; `total` (and, per round, more) set per kernel below.
            let base = ConvParams {
                in_c: ch.ci_n as u32,
                in_h: in_shape.h as u32,
                in_w: in_shape.w as u32,
                in_base: in_win.base,
                out_c: ch.co_n as u32,
                out_h: out_shape.h as u32,
                out_w: out_shape.w as u32,
                out_base: out_win.base,
                w_base: w_win.base + ch.ci0 as u32,
                bias_base: b_win.base,
                flags,
                batch: ch.nb as u32,
                in_batch_stride: (in_shape.c * in_shape.plane()) as u32,
                out_batch_stride: (out_shape.c * pixels) as u32,
                k_split: 1,
                ..self.template
            };
            if kernel == Kernel::ConvBlockedPacked {
                // Rounds of 64-channel blocks: pack their weights into scratch, then convolve.
                let Some(packed) = scratch else {
                    return Err(crate::Error::Device(
                        "the packed convolution has no scratch buffer".into(),
                    ));
                };
                let wide = BLOCK_C_WIDE as usize;
                let block = wide * taps * ch.ci_n;
                let blocks = ch.co_n.div_ceil(wide);
                let max = gpu.max_binding_elems_of(precision);
                let per_round = pack_round_blocks(block, precision.bytes(), blocks, max);
                if per_round == 0 {
                    return Err(crate::Error::Internal(
                        "a block of packed weights exceeds one binding".into(),
                    ));
                }
                for b0 in (0..blocks).step_by(per_round) {
                    let c_first = b0 * wide;
                    let c_n = (per_round * wide).min(ch.co_n - c_first);
                    let elems = c_n.div_ceil(wide) * block;
                    let packed_win = window(packed, 0, elems);
                    let w_win = window(&self.weight, (ch.co0 + c_first) * w_row, c_n * w_row);
                    let pack = ConvParams {
                        out_c: c_n as u32,
                        out_base: packed_win.base,
                        w_base: w_win.base + ch.ci0 as u32,
                        total: elems as u32,
                        ..base
                    };
                    dispatches.push(gpu.linear_dispatch_as(
                        Kernel::ConvPackBlocked,
                        precision,
                        &pack,
                        &[(&self.weight, w_win), (packed, packed_win)],
                        elems,
                    )?);
                    let total = ch.nb
                        * c_n.div_ceil(wide)
                        * pixels.div_ceil((WG_BLOCKED * BLOCK_P) as usize);
                    let conv = ConvParams {
                        out_c: c_n as u32,
                        out_base: base.out_base + (c_first * pixels) as u32,
                        w_base: packed_win.base,
                        bias_base: base.bias_base + if s.bias { c_first as u32 } else { 0 },
                        total: total as u32,
                        ..base
                    };
                    dispatches.push(gpu.dispatch_as(
                        kernel,
                        precision,
                        &conv,
                        &[
                            (input, in_win),
                            (packed, packed_win),
                            (&self.bias, b_win),
                            (output, out_win),
                        ],
                        total,
                    )?);
                }
                continue;
            }
            let total = match kernel {
                Kernel::ConvDirect => ch.nb * ch.co_n * pixels,
                Kernel::ConvBlocked | Kernel::ConvBlocked64 => {
                    ch.nb
                        * ch.co_n.div_ceil(kernel.block_channels() as usize)
                        * pixels.div_ceil((WG_BLOCKED * BLOCK_P) as usize)
                }
                _ => {
                    let (tile_m, tile_n) =
                        tile_of(kernel).unwrap_or((TILE_M as usize, TILE_N as usize));
                    ch.nb * k_split * ch.co_n.div_ceil(tile_m) * pixels.div_ceil(tile_n)
                }
            };
            let workgroups = match kernel {
                Kernel::ConvDirect => total.div_ceil(WG_LINEAR as usize),
                _ => total,
            };
            let mut params = ConvParams {
                total: total as u32,
                ..base
            };
            // A split reduction writes every slice's raw partial sums to the scratch buffer;
            // a second pass adds them up with the flags.
            let partial = ch.nb * ch.co_n * pixels;
            let split = scratch
                .filter(|_| k_split > 1)
                .map(|b| (b, window(b, 0, k_split * partial)));
            let target = match split {
                Some(scratch) => {
                    params.k_split = k_split as u32;
                    params.flags = 0;
                    params.out_base = 0;
                    params.out_batch_stride = (ch.co_n * pixels) as u32;
                    scratch
                }
                None => (output, out_win),
            };
            dispatches.push(gpu.dispatch_as(
                kernel,
                precision,
                &params,
                &[
                    (input, in_win),
                    (&self.weight, w_win),
                    (&self.bias, b_win),
                    target,
                ],
                workgroups,
            )?);
            let Some((scratch, scratch_win)) = split else {
                continue;
            };
            let reduce = SplitReduceParams {
                out_c: ch.co_n as u32,
                pixels: pixels as u32,
                slices: k_split as u32,
                total: partial as u32,
                out_base: out_win.base,
                out_batch_stride: base.out_batch_stride,
                bias_base: b_win.base,
                flags,
            };
            dispatches.push(gpu.linear_dispatch_as(
                Kernel::ConvSplitReduce,
                precision,
                &reduce,
                &[
                    (scratch, scratch_win),
                    (&self.bias, b_win),
                    (output, out_win),
                ],
                partial,
            )?);
        }
        Ok(dispatches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_kernel_fits_the_webgpu_defaults_only() {
        assert!(tiled_fits(&wgpu::Limits::default()));
        assert!(tiled_fits(&wgpu::Limits::downlevel_defaults()));
        let small = wgpu::Limits {
            max_compute_invocations_per_workgroup: 128,
            ..wgpu::Limits::default()
        };
        assert!(!tiled_fits(&small));
        let little_shared = wgpu::Limits {
            max_compute_workgroup_storage_size: 8 << 10,
            ..wgpu::Limits::default()
        };
        assert!(!tiled_fits(&little_shared));
    }
}
