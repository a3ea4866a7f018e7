//! GPU ops: weights uploaded once, work split into chunks that fit one storage binding and the
//! per-dimension workgroup limit, recorded as dispatches.

use ndarray::{ArrayView1, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::kernels::{
    BLOCK_C, BLOCK_P, BLOCKED_MIN_SUBGROUP, Kernel, TILE_K, TILE_M, TILE_N, WG_BLOCKED, WG_LINEAR,
    WG_TILED,
};
use crate::gpu::tensor::{GpuTensor, Window};
use crate::spec::check_conv_params;
use crate::spec::{Conv2d, MaxPool2d, Shape};

/// One recorded compute dispatch: a pipeline, its bindings and the workgroup grid.
pub struct Dispatch {
    pub(crate) kernel: Kernel,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) groups: (u32, u32),
}

impl Dispatch {
    /// Which kernel this dispatch runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }
}

impl Gpu {
    /// Records dispatches into a compute pass.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, dispatches: &[Dispatch]) {
        for d in dispatches {
            pass.set_pipeline(&self.kernels.get(&self.device, d.kernel).pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
    }

    /// Runs dispatches in one submission and waits for them.
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        let commands = self.scoped("recording dispatches", 0, || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.record(&mut pass, dispatches);
            }
            encoder.finish()
        })?;
        self.submit_and_wait(commands)
    }

    /// A workgroup grid of `total` workgroups within the per-dimension limit (the shaders
    /// linearise `x + y * num_workgroups.x` and skip the excess).
    pub(crate) fn grid(&self, total: usize, what: &str) -> Result<(u32, u32)> {
        let max = self.limits().max_compute_workgroups_per_dimension as usize;
        let x = total.clamp(1, max);
        let y = total.div_ceil(x).max(1);
        if y > max {
            return Err(Error::ExceedsDeviceLimits {
                what: format!("{what} ({total} workgroups)"),
                bytes: 0,
                limit_name: "max_compute_workgroups_per_dimension squared",
                limit: (max * max) as u64,
            });
        }
        Ok((x as u32, y as u32))
    }

    /// Builds the bind group for a kernel over (uniform, storage windows...).
    pub(crate) fn bind(
        &self,
        kernel: Kernel,
        params: &[u8],
        storage: &[(&wgpu::Buffer, Window)],
    ) -> Result<wgpu::BindGroup> {
        self.scoped(kernel.name(), 0, || {
            self.bind_unscoped(kernel, params, storage)
        })?
    }

    fn bind_unscoped(
        &self,
        kernel: Kernel,
        params: &[u8],
        storage: &[(&wgpu::Buffer, Window)],
    ) -> Result<wgpu::BindGroup> {
        // Not `create_buffer_init`: it panics where the device is lost.
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(kernel.name()),
            size: (params.len() as u64).next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: true,
        });
        {
            let mut range = uniform
                .get_mapped_range_mut(..)
                .map_err(|e| Error::Device(format!("{}: uniform buffer: {e}", kernel.name())))?;
            range.slice(..params.len()).copy_from_slice(params);
        }
        uniform.unmap();
        let compiled = self.kernels.get(&self.device, kernel);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, (buffer, window)) in storage.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: window.binding(buffer),
            });
        }
        Ok(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &compiled.layout,
            entries: &entries,
        }))
    }
}

/// Which convolution kernel to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Chosen from the adapter and the layer's geometry (see [`GpuConv2d::kernel_for`]).
    #[default]
    Auto,
    /// One output per invocation.
    Direct,
    /// Workgroup-tiled implicit matrix product (the pointwise variant for 1x1 layers).
    Tiled,
    /// Register-blocked without workgroup memory, weights shared through subgroup broadcasts
    /// (for adapters that run shaders on CPU cores; needs subgroups of at least 8).
    Blocked,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    in_c: u32,
    in_h: u32,
    in_w: u32,
    in_base: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    out_base: u32,
    k_h: u32,
    k_w: u32,
    dil_h: u32,
    dil_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    w_base: u32,
    w_row: u32,
    bias_base: u32,
    flags: u32,
    batch: u32,
    in_batch_stride: u32,
    out_batch_stride: u32,
    total: u32,
    k_split: u32,
    pad: [u32; 3],
}

/// Uniform of `conv2d_split_reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SplitReduceParams {
    out_c: u32,
    pixels: u32,
    slices: u32,
    total: u32,
    out_base: u32,
    out_batch_stride: u32,
    bias_base: u32,
    flags: u32,
}

/// The tiled convolution splits its reduction (split-K) when it would launch fewer workgroups
/// than this: a large GPU needs several resident workgroups per multiprocessor to hide memory
/// latency, and a layer with few output tiles (few pixels, such as fc6 on a small input, or few
/// channels) would leave most of it idle.
pub const SPLIT_TARGET_WORKGROUPS: usize = 512;
/// Least reduction depth (input channels x taps) per slice of a split reduction.
pub const SPLIT_MIN_DEPTH: usize = 256;
/// Most slices a reduction is split into.
pub const SPLIT_MAX_SLICES: usize = 16;
/// Most bytes of partial sums one split convolution holds.
pub const SPLIT_SCRATCH_BYTES: u64 = 64 << 20;

/// Slices the tiled convolution splits its reduction of depth `depth` into, when one slice
/// launches `tiles` workgroups and writes `partial` floats; 1 for no split. At most
/// `max_elems` floats of partial sums, so they fit one binding.
pub(crate) fn split_slices(tiles: usize, depth: usize, partial: usize, max_elems: usize) -> usize {
    if tiles >= SPLIT_TARGET_WORKGROUPS {
        return 1;
    }
    let room = ((SPLIT_SCRATCH_BYTES / 4) as usize).min(max_elems);
    SPLIT_TARGET_WORKGROUPS
        .div_ceil(tiles.max(1))
        .min(depth / SPLIT_MIN_DEPTH)
        .min(SPLIT_MAX_SLICES)
        .min(room / partial.max(1))
        .max(1)
}

/// Most bytes of partial sums the tiled convolution of `spec` producing `output` holds when its
/// reduction is split, computed without a device: the largest over windows of any number of
/// whole images (a window of fewer channels only arises, with storage bindings of 128 MiB or
/// more, for outputs of over 1,024 tiles per image, which are never split).
pub(crate) fn split_scratch_bytes(spec: &Conv2d, output: Shape) -> u64 {
    let image_tiles =
        spec.out_channels.div_ceil(TILE_M as usize) * output.plane().div_ceil(TILE_N as usize);
    let depth = spec.in_channels * spec.kernel.0 * spec.kernel.1;
    let image = spec.out_channels * output.plane();
    (1..=output.n.max(1))
        .map(
            |nb| match split_slices(nb * image_tiles, depth, nb * image, usize::MAX) {
                1 => 0,
                slices => (slices * nb * image) as u64 * 4,
            },
        )
        .max()
        .unwrap_or(0)
}

const FLAG_BIAS: u32 = 1;
const FLAG_RELU: u32 = 2;
const FLAG_ACCUMULATE: u32 = 4;

/// A piece of a convolution whose input, weight and output windows each fit one binding:
/// images `n0..n0+nb`, output channels `co0..co0+co_n`, input channels `ci0..ci0+ci_n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvChunk {
    pub n0: usize,
    pub nb: usize,
    pub co0: usize,
    pub co_n: usize,
    pub ci0: usize,
    pub ci_n: usize,
}

/// Splits a convolution over batch, output channels and input channels (partial sums
/// accumulated in the output) so every window holds at most `max` elements.
pub(crate) fn conv_chunks(
    spec: &Conv2d,
    input: Shape,
    output: Shape,
    max: usize,
) -> Result<Vec<ConvChunk>> {
    let w_row = spec.in_channels * spec.kernel.0 * spec.kernel.1;
    let too_big = |what: String, elems: usize| Error::ExceedsDeviceLimits {
        what,
        bytes: elems as u64 * 4,
        limit_name: "max_storage_buffer_binding_size",
        limit: max as u64 * 4,
    };
    if w_row > max {
        return Err(too_big("the weights of one output channel".into(), w_row));
    }
    if input.plane() > max {
        return Err(too_big(
            format!("one input channel plane ({}x{})", input.h, input.w),
            input.plane(),
        ));
    }
    if output.plane() > max {
        return Err(too_big(
            format!("one output channel plane ({}x{})", output.h, output.w),
            output.plane(),
        ));
    }
    let co_n = spec.out_channels.min(max / output.plane()).min(max / w_row);
    let ci_n = spec.in_channels.min(max / input.plane());
    let nb = if co_n == spec.out_channels && ci_n == spec.in_channels {
        input
            .n
            .min(max / (input.c * input.plane()))
            .min(max / (output.c * output.plane()))
            .max(1)
    } else {
        1
    };
    let mut chunks = Vec::new();
    for n0 in (0..input.n).step_by(nb) {
        for co0 in (0..spec.out_channels).step_by(co_n) {
            for ci0 in (0..spec.in_channels).step_by(ci_n) {
                chunks.push(ConvChunk {
                    n0,
                    nb: nb.min(input.n - n0),
                    co0,
                    co_n: co_n.min(spec.out_channels - co0),
                    ci0,
                    ci_n: ci_n.min(spec.in_channels - ci0),
                });
            }
        }
    }
    Ok(chunks)
}

/// A convolution layer with its weights on the GPU.
///
/// The weights are stored per output channel as `[kh][kw][in]` rows (input channels innermost),
/// so the kernels read consecutive weights while they walk the input channels of one tap, and a
/// range of output channels stays one contiguous window.
pub struct GpuConv2d {
    spec: Conv2d,
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    algorithm: ConvAlgorithm,
    /// The device runs shaders on CPU cores (lavapipe, llvmpipe, SwiftShader, WARP).
    cpu_adapter: bool,
    /// Subgroups are enabled and hold at least [`BLOCKED_MIN_SUBGROUP`] invocations.
    blocked_supported: bool,
    /// Whether the tiled kernel may split its reduction.
    split: bool,
    /// The device allows the tiled kernel's workgroup size and workgroup memory.
    tiled_supported: bool,
}

/// Whether a device's limits allow the tiled kernel: a 256 x 1 x 1 workgroup and its two tiles
/// in workgroup memory (the weight tile's rows padded by one vec4).
fn tiled_fits(limits: &wgpu::Limits) -> bool {
    let shared = 16 * TILE_K * (TILE_M / 4 + 1) + 16 * TILE_K * (TILE_N / 4);
    limits.max_compute_invocations_per_workgroup >= WG_TILED
        && limits.max_compute_workgroup_size_x >= WG_TILED
        && limits.max_compute_workgroup_storage_size >= shared
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
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        // [out][in][kh][kw] -> [out][kh][kw][in], uploaded a few output channels at a time.
        let w_row = spec.in_channels * spec.kernel.0 * spec.kernel.1;
        let buffer = gpu.create_buffer(
            "conv weight",
            spec.weight_len() as u64 * 4,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )?;
        let rows = (UPLOAD_ELEMS / w_row).max(1);
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
            gpu.write_f32(&buffer, co0 * w_row, &piece)?;
        }
        let weight = buffer;
        let bias = match bias {
            Some(b) => gpu.storage_from_slice("conv bias", &b.to_vec())?,
            None => gpu.storage_from_slice("conv bias (none)", &[0.0])?,
        };
        let info = &gpu.adapter().info;
        Ok(Self {
            spec,
            weight,
            bias,
            algorithm: ConvAlgorithm::Auto,
            cpu_adapter: info.device_type == wgpu::DeviceType::Cpu,
            blocked_supported: gpu.device.features().contains(wgpu::Features::SUBGROUP)
                && info.subgroup_min_size >= BLOCKED_MIN_SUBGROUP,
            split: true,
            tiled_supported: tiled_fits(gpu.limits()),
        })
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
    /// partial sums in a scratch buffer (at most [`SPLIT_SCRATCH_BYTES`]) and adds them in a
    /// second pass; plans built under a memory budget do not split.
    pub fn with_split(mut self, split: bool) -> Self {
        self.split = split;
        self
    }

    /// The layer's spec.
    pub fn spec(&self) -> &Conv2d {
        &self.spec
    }

    /// Bytes of weights and bias on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight.size() + self.bias.size()
    }

    /// The kernel used for an output shape.
    ///
    /// `Auto` picks, on an adapter that runs shaders on CPU cores (device type `Cpu`, such as
    /// lavapipe) with subgroups of at least 8, the register-blocked kernel for every shape: there
    /// each load costs a loop over the SIMD lanes, and it makes the fewest loads per
    /// multiply-add (measured 10x to 40x the direct kernel, see `benches/RESULTS.md`). On other
    /// adapters it picks the workgroup-tiled kernel (its pointwise variant for 1x1 layers), or the
    /// direct kernel when the layer has fewer than `TILE_M / 4` (32) output channels or
    /// `TILE_N / 4` (32) output pixels, so that a 128x128 tile would be mostly idle. The tiled
    /// kernel may further split its reduction (see [`GpuConv2d::with_split`]); the dispatches
    /// [`GpuConv2d::prepare`] returns name every kernel that runs.
    pub fn kernel_for(&self, output: Shape) -> Kernel {
        let tiled = if !self.tiled_supported {
            Kernel::ConvDirect
        } else if self.spec.is_pointwise() {
            Kernel::ConvPointwise
        } else {
            Kernel::ConvTiled
        };
        match self.algorithm {
            ConvAlgorithm::Direct => Kernel::ConvDirect,
            ConvAlgorithm::Tiled => tiled,
            ConvAlgorithm::Blocked if self.blocked_supported => Kernel::ConvBlocked,
            ConvAlgorithm::Blocked => tiled,
            ConvAlgorithm::Auto if self.cpu_adapter && self.blocked_supported => {
                Kernel::ConvBlocked
            }
            // A tile of TILE_M channels x TILE_N pixels is mostly idle when the layer has few of
            // either; the direct kernel wastes nothing there.
            ConvAlgorithm::Auto => {
                if output.c * 4 < TILE_M as usize || output.plane() * 4 < TILE_N as usize {
                    Kernel::ConvDirect
                } else {
                    tiled
                }
            }
        }
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "conv2d")
    }

    /// Records the dispatches computing `output = conv(input)`; both tensors stay bound by
    /// the returned bind groups, so the dispatches can be replayed.
    pub fn prepare(
        &self,
        gpu: &Gpu,
        input: &GpuTensor,
        output: &GpuTensor,
    ) -> Result<Vec<Dispatch>> {
        self.prepare_buffers(
            gpu,
            &input.buffer,
            input.shape(),
            &output.buffer,
            output.shape(),
            None,
        )
    }

    /// The chunks of a run at `out_shape`, each with the number of slices its reduction is
    /// split into (tiled kernels on few tiles), and the floats of partial sums the largest
    /// split chunk needs (0 without a split).
    fn chunks_and_splits(
        &self,
        gpu: &Gpu,
        in_shape: Shape,
        out_shape: Shape,
    ) -> Result<(Vec<(ConvChunk, usize)>, usize)> {
        let kernel = self.kernel_for(out_shape);
        let taps = self.spec.kernel.0 * self.spec.kernel.1;
        let pixels = out_shape.plane();
        let max = gpu.max_binding_elems();
        let mut scratch = 0;
        let chunks = conv_chunks(&self.spec, in_shape, out_shape, max)?
            .into_iter()
            .map(|ch| {
                let partial = ch.nb * ch.co_n * pixels;
                let k = if self.split && matches!(kernel, Kernel::ConvTiled | Kernel::ConvPointwise)
                {
                    let tiles = ch.nb
                        * ch.co_n.div_ceil(TILE_M as usize)
                        * pixels.div_ceil(TILE_N as usize);
                    split_slices(tiles, ch.ci_n * taps, partial, max)
                } else {
                    1
                };
                if k > 1 {
                    scratch = scratch.max(k * partial);
                }
                (ch, k)
            })
            .collect();
        Ok((chunks, scratch))
    }

    /// Bytes of partial sums a run at `in_shape` needs in a scratch buffer passed to
    /// [`GpuConv2d::prepare_buffers`] (0 when no reduction is split).
    pub(crate) fn scratch_bytes(&self, gpu: &Gpu, in_shape: Shape) -> Result<u64> {
        let out_shape = self.output_shape(in_shape)?;
        Ok(self.chunks_and_splits(gpu, in_shape, out_shape)?.1 as u64 * 4)
    }

    /// Records the dispatches. A split reduction keeps its partial sums in `scratch` when
    /// given (at least [`GpuConv2d::scratch_bytes`] long; a plan shares one among its layers,
    /// which run one after another), else in a buffer of its own.
    pub(crate) fn prepare_buffers(
        &self,
        gpu: &Gpu,
        input: &wgpu::Buffer,
        in_shape: Shape,
        output: &wgpu::Buffer,
        out_shape: Shape,
        scratch: Option<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>> {
        let s = &self.spec;
        expect_shape("conv2d", out_shape, self.output_shape(in_shape)?)?;
        let kernel = self.kernel_for(out_shape);
        let taps = s.kernel.0 * s.kernel.1;
        let w_row = s.in_channels * taps;
        let pixels = out_shape.plane();
        let (chunks, scratch_len) = self.chunks_and_splits(gpu, in_shape, out_shape)?;
        let own;
        let scratch = match scratch {
            _ if scratch_len == 0 => None,
            Some(b) if b.size() >= scratch_len as u64 * 4 => Some(b),
            _ => {
                own = gpu.create_buffer(
                    "conv split partial sums",
                    scratch_len as u64 * 4,
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
            let in_win = gpu.window(input, in_start, in_len);
            let out_win = gpu.window(output, out_start, out_len);
            let w_win = gpu.window(&self.weight, ch.co0 * w_row, ch.co_n * w_row);

            let b_win = if s.bias {
                gpu.window(&self.bias, ch.co0, ch.co_n)
            } else {
                gpu.window(&self.bias, 0, 1)
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
            let total = match kernel {
                Kernel::ConvDirect => ch.nb * ch.co_n * pixels,
                Kernel::ConvBlocked => {
                    ch.nb
                        * ch.co_n.div_ceil(BLOCK_C as usize)
                        * pixels.div_ceil((WG_BLOCKED * BLOCK_P) as usize)
                }
                _ => {
                    ch.nb
                        * k_split
                        * ch.co_n.div_ceil(TILE_M as usize)
                        * pixels.div_ceil(TILE_N as usize)
                }
            };
            let groups = match kernel {
                Kernel::ConvDirect => gpu.grid(total.div_ceil(WG_LINEAR as usize), "conv2d")?,
                _ => gpu.grid(total, "conv2d")?,
            };
            let out_batch_stride = (out_shape.c * pixels) as u32;
            let mut params = ConvParams {
                in_c: ch.ci_n as u32,
                in_h: in_shape.h as u32,
                in_w: in_shape.w as u32,
                in_base: in_win.base,
                out_c: ch.co_n as u32,
                out_h: out_shape.h as u32,
                out_w: out_shape.w as u32,
                out_base: out_win.base,
                k_h: s.kernel.0 as u32,
                k_w: s.kernel.1 as u32,
                dil_h: s.dilation.0 as u32,
                dil_w: s.dilation.1 as u32,
                stride_h: s.stride.0 as u32,
                stride_w: s.stride.1 as u32,
                pad_top: s.padding.top as u32,
                pad_left: s.padding.left as u32,
                w_base: w_win.base + ch.ci0 as u32,
                w_row: w_row as u32,
                bias_base: b_win.base,
                flags,
                batch: ch.nb as u32,
                in_batch_stride: (in_shape.c * in_shape.plane()) as u32,
                out_batch_stride,
                total: total as u32,
                k_split: 1,
                pad: [0; 3],
            };
            // A split reduction writes every slice's raw partial sums to the scratch buffer;
            // a second pass adds them up with the flags.
            let partial = ch.nb * ch.co_n * pixels;
            let split = scratch
                .filter(|_| k_split > 1)
                .map(|b| (b, gpu.window(b, 0, k_split * partial)));
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
            let bind_group = gpu.bind(
                kernel,
                bytemuck::bytes_of(&params),
                &[
                    (input, in_win),
                    (&self.weight, w_win),
                    (&self.bias, b_win),
                    target,
                ],
            )?;
            dispatches.push(Dispatch {
                kernel,
                bind_group,
                groups,
            });
            let Some((scratch, scratch_win)) = split else {
                continue;
            };
            let reduce = SplitReduceParams {
                out_c: ch.co_n as u32,
                pixels: pixels as u32,
                slices: k_split as u32,
                total: partial as u32,
                out_base: out_win.base,
                out_batch_stride,
                bias_base: b_win.base,
                flags,
            };
            let bind_group = gpu.bind(
                Kernel::ConvSplitReduce,
                bytemuck::bytes_of(&reduce),
                &[
                    (scratch, scratch_win),
                    (&self.bias, b_win),
                    (output, out_win),
                ],
            )?;
            dispatches.push(Dispatch {
                kernel: Kernel::ConvSplitReduce,
                bind_group,
                groups: gpu.grid(partial.div_ceil(WG_LINEAR as usize), "conv2d split sum")?,
            });
        }
        Ok(dispatches)
    }

    /// Runs the convolution into an existing output tensor.
    pub fn forward_into(&self, gpu: &Gpu, input: &GpuTensor, output: &mut GpuTensor) -> Result<()> {
        let d = self.prepare(gpu, input, output)?;
        gpu.run(&d)
    }

    /// Runs the convolution into a new tensor.
    pub fn forward(&self, gpu: &Gpu, input: &GpuTensor) -> Result<GpuTensor> {
        let mut out = gpu.empty(self.output_shape(input.shape())?)?;
        self.forward_into(gpu, input, &mut out)?;
        Ok(out)
    }
}

/// Number of whole channel planes per chunk such that input and output windows fit.
/// Errors unless an output tensor has the shape the op computes.
pub(crate) fn expect_shape(context: &str, got: Shape, want: Shape) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        context: context.to_string(),
        left_name: "output tensor",
        left: got.dims().to_vec(),
        right_name: "computed output",
        right: want.dims().to_vec(),
    })
}

/// Chunks `(first plane, planes)` of whole channel planes (n * c flattened) for ops mapping each
/// input plane to one output plane, so that input and output windows fit one binding.
pub(crate) fn plane_chunks(
    gpu: &Gpu,
    what: &str,
    input: Shape,
    output: Shape,
) -> Result<Vec<(usize, usize)>> {
    let max = gpu.max_binding_elems();
    let biggest = input.plane().max(output.plane());
    if biggest > max {
        return Err(Error::ExceedsDeviceLimits {
            what: format!("one channel plane of {what}"),
            bytes: biggest as u64 * 4,
            limit_name: "max_storage_buffer_binding_size",
            limit: max as u64 * 4,
        });
    }
    let per = max / biggest;
    let planes = input.n * input.c;
    Ok((0..planes)
        .step_by(per)
        .map(|p0| (p0, per.min(planes - p0)))
        .collect())
}

/// Records a kernel mapping each input channel plane to one output plane (max pooling, zoom,
/// deconvolution) over chunks of whole planes. Its uniform is the shared header `planes, in_h,
/// in_w, in_base, out_h, out_w, out_base, total` followed by the kernel's own eight words,
/// `tail(first plane of the chunk)`; `extra` buffers are bound between input and output.
pub(crate) fn prepare_planes(
    gpu: &Gpu,
    kernel: Kernel,
    (input, in_shape): (&wgpu::Buffer, Shape),
    extra: &[(&wgpu::Buffer, Window)],
    (output, out_shape): (&wgpu::Buffer, Shape),
    tail: impl Fn(usize) -> [u32; 8],
) -> Result<Vec<Dispatch>> {
    let mut dispatches = Vec::new();
    for (p0, pn) in plane_chunks(gpu, kernel.name(), in_shape, out_shape)? {
        let in_win = gpu.window(input, p0 * in_shape.plane(), pn * in_shape.plane());
        let out_win = gpu.window(output, p0 * out_shape.plane(), pn * out_shape.plane());
        let total = pn * out_shape.plane();
        let header = [
            pn as u32,
            in_shape.h as u32,
            in_shape.w as u32,
            in_win.base,
            out_shape.h as u32,
            out_shape.w as u32,
            out_win.base,
            total as u32,
        ];
        let params: Vec<u32> = header.into_iter().chain(tail(p0)).collect();
        let mut storage = vec![(input, in_win)];
        storage.extend_from_slice(extra);
        storage.push((output, out_win));
        dispatches.push(gpu.linear_dispatch(
            kernel,
            bytemuck::cast_slice(&params),
            &storage,
            total,
        )?);
    }
    Ok(dispatches)
}

impl Gpu {
    /// A dispatch of a one-element-per-invocation kernel over `invocations` elements.
    pub(crate) fn linear_dispatch(
        &self,
        kernel: Kernel,
        params: &[u8],
        storage: &[(&wgpu::Buffer, Window)],
        invocations: usize,
    ) -> Result<Dispatch> {
        let bind_group = self.bind(kernel, params, storage)?;
        let groups = self.grid(invocations.div_ceil(WG_LINEAR as usize), kernel.name())?;
        Ok(Dispatch {
            kernel,
            bind_group,
            groups,
        })
    }
}

/// Records max pooling of `input` into `output`.
pub fn prepare_max_pool(
    gpu: &Gpu,
    spec: &MaxPool2d,
    input: &GpuTensor,
    output: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    prepare_max_pool_buffers(
        gpu,
        spec,
        &input.buffer,
        input.shape(),
        &output.buffer,
        output.shape(),
    )
}

pub(crate) fn prepare_max_pool_buffers(
    gpu: &Gpu,
    spec: &MaxPool2d,
    input: &wgpu::Buffer,
    in_shape: Shape,
    output: &wgpu::Buffer,
    out_shape: Shape,
) -> Result<Vec<Dispatch>> {
    expect_shape(
        "max_pool2d",
        out_shape,
        spec.output_shape(in_shape, "max_pool2d")?,
    )?;
    let tail = [
        spec.kernel.0 as u32,
        spec.kernel.1 as u32,
        spec.stride.0 as u32,
        spec.stride.1 as u32,
        spec.padding.top as u32,
        spec.padding.left as u32,
        0,
        0,
    ];
    prepare_planes(
        gpu,
        Kernel::MaxPool,
        (input, in_shape),
        &[],
        (output, out_shape),
        |_| tail,
    )
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ReluParams {
    total: u32,
    in_base: u32,
    out_base: u32,
    pad0: u32,
}

/// Records `output = max(input, 0)`.
pub fn prepare_relu(gpu: &Gpu, input: &GpuTensor, output: &GpuTensor) -> Result<Vec<Dispatch>> {
    prepare_relu_buffers(
        gpu,
        &input.buffer,
        input.shape(),
        &output.buffer,
        output.shape(),
    )
}

pub(crate) fn prepare_relu_buffers(
    gpu: &Gpu,
    input: &wgpu::Buffer,
    in_shape: Shape,
    output: &wgpu::Buffer,
    out_shape: Shape,
) -> Result<Vec<Dispatch>> {
    expect_shape("relu", out_shape, in_shape)?;
    let max = gpu.max_binding_elems();
    let len = in_shape.len();
    let mut dispatches = Vec::new();
    for start in (0..len).step_by(max) {
        let n = max.min(len - start);
        let in_win = gpu.window(input, start, n);
        let out_win = gpu.window(output, start, n);
        let params = ReluParams {
            total: n as u32,
            in_base: in_win.base,
            out_base: out_win.base,
            pad0: 0,
        };
        let storage = [(input, in_win), (output, out_win)];
        dispatches.push(gpu.linear_dispatch(
            Kernel::Relu,
            bytemuck::bytes_of(&params),
            &storage,
            n,
        )?);
    }
    Ok(dispatches)
}

impl Gpu {
    /// Max pooling into a new tensor.
    pub fn max_pool2d(&self, spec: &MaxPool2d, input: &GpuTensor) -> Result<GpuTensor> {
        let mut out = self.empty(spec.output_shape(input.shape(), "max_pool2d")?)?;
        self.max_pool2d_into(spec, input, &mut out)?;
        Ok(out)
    }

    /// Max pooling into an existing tensor.
    pub fn max_pool2d_into(
        &self,
        spec: &MaxPool2d,
        input: &GpuTensor,
        output: &mut GpuTensor,
    ) -> Result<()> {
        let d = prepare_max_pool(self, spec, input, output)?;
        self.run(&d)
    }

    /// ReLU into a new tensor.
    pub fn relu(&self, input: &GpuTensor) -> Result<GpuTensor> {
        let mut out = self.empty(input.shape())?;
        self.relu_into(input, &mut out)?;
        Ok(out)
    }

    /// ReLU into an existing tensor of the same shape.
    pub fn relu_into(&self, input: &GpuTensor, output: &mut GpuTensor) -> Result<()> {
        let d = prepare_relu(self, input, output)?;
        self.run(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_once_within_the_limit() {
        let spec = Conv2d::new(64, 48, 3).pad(1);
        let input = Shape::new(2, 64, 40, 30);
        let output = spec.output_shape(input, "t").unwrap();
        for max in [1usize << 30, 64 * 1200, 20_000, 5000, 1200] {
            let chunks = conv_chunks(&spec, input, output, max).unwrap();
            let mut seen = vec![0u32; input.n * spec.out_channels * spec.in_channels];
            for c in &chunks {
                assert!(c.ci_n * input.plane() <= max || c.nb == 1 && c.ci_n == 1);
                assert!(c.co_n * output.plane() <= max);
                assert!(c.co_n * spec.in_channels * 9 <= max);
                if c.nb > 1 {
                    assert!(c.nb * input.c * input.plane() <= max);
                }
                for n in c.n0..c.n0 + c.nb {
                    for co in c.co0..c.co0 + c.co_n {
                        for ci in c.ci0..c.ci0 + c.ci_n {
                            seen[(n * spec.out_channels + co) * spec.in_channels + ci] += 1;
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "max {max}");
        }
        assert!(conv_chunks(&spec, input, output, 1000).is_err());
    }

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

    #[test]
    fn split_slices_fill_the_gpu_within_depth_and_memory() {
        // Enough tiles: no split.
        assert_eq!(
            split_slices(SPLIT_TARGET_WORKGROUPS, 1 << 20, 1, usize::MAX),
            1
        );
        // fc6-like (64 tiles, depth 25088): 8 slices bring 512 workgroups.
        assert_eq!(split_slices(64, 25088, 1 << 20, usize::MAX), 8);
        // Shallow reductions are not split below SPLIT_MIN_DEPTH per slice.
        assert_eq!(split_slices(1, 3 * SPLIT_MIN_DEPTH + 5, 100, usize::MAX), 3);
        assert_eq!(split_slices(1, SPLIT_MIN_DEPTH * 2 - 1, 100, usize::MAX), 1);
        // At most SPLIT_MAX_SLICES, and the partial sums fit the scratch cap and one binding.
        assert_eq!(split_slices(1, 1 << 20, 100, usize::MAX), SPLIT_MAX_SLICES);
        let cap = (SPLIT_SCRATCH_BYTES / 4) as usize;
        assert_eq!(split_slices(1, 1 << 20, cap / 3, usize::MAX), 3);
        assert_eq!(split_slices(1, 1 << 20, 1000, 2500), 2);
    }
}
