//! The WGSL kernels as data: each kernel lists its shared parts (`shaders/common/`), its own
//! file and its storage bindings; its source is assembled from them with the shared constants
//! spliced in, and its pipeline and bind group layout are built from the same list, once per
//! device and [`Precision`] on first use.
//!
//! The forward kernels read and write their tensors, weights and biases through the storage
//! type `store_t`, an alias spliced in per precision (`f32`, or `f16` after `enable f16;`):
//! they read with `f32(x[i])`, compute in f32 and write `store_t(v)`, so one source serves
//! both precisions and the f32 variant does exactly what it did before the alias existed.
//!
//! Every kernel's uniform is a `#[repr(C)]` Rust struct declared with `uniform!`, whose layout
//! a test checks against the WGSL struct by naga reflection, in every variant.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::gpu::precision::Precision;

/// Invocations per workgroup of the one-element-per-invocation kernels.
pub const WG_LINEAR: u32 = 64;
/// Output channels per workgroup tile of the tiled convolution.
pub const TILE_M: u32 = 128;
/// Output pixels per workgroup tile of the tiled convolution.
pub const TILE_N: u32 = 128;
/// Reduction depth staged in workgroup memory per step of the tiled convolution.
pub const TILE_K: u32 = 8;
/// Invocations per workgroup of the tiled convolution (16 x 16, each 8 x 8 outputs).
pub const WG_TILED: u32 = 256;
/// Invocations per workgroup of the register-blocked convolution.
pub const WG_BLOCKED: u32 = 64;
/// Output channels per invocation (and per workgroup) of the register-blocked convolution; a
/// multiple of 8, the subgroup lanes its weights are broadcast from.
pub const BLOCK_C: u32 = 32;
/// Output channels per invocation of the wide register-blocked convolution
/// ([`Kernel::ConvBlocked64`]): twice the registers, half the input loads per multiply-add.
pub const BLOCK_C_WIDE: u32 = 64;
/// Output pixels per invocation of the register-blocked convolution (one `vec4`).
pub const BLOCK_P: u32 = 4;
/// A tile shape of the generated tiled convolution (`shaders/conv2d_tiled_generic.wgsl`),
/// each its own kernel: output channels x pixels per workgroup tile, channels x pixels per
/// invocation, reduction depth per step (the workgroup size follows) and vector width (the
/// `-v4` variants keep their tiles in workgroup memory as `vec4`s, and each invocation owns
/// runs of 4 adjacent channels and pixels, read one `vec4` at a time). They are tuning
/// candidates on GPUs beside the hand-unrolled 128 x 128 x 8 kernel ([`Kernel::ConvTiled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TiledVariant {
    /// 64 x 64 tiles, 4 x 4 outputs per invocation (256 invocations), depth 16.
    T64x4,
    /// 64 x 64 tiles, 8 x 8 outputs per invocation (64 invocations), depth 8.
    T64x8,
    /// 32 x 32 tiles, 4 x 4 outputs per invocation (64 invocations), depth 8.
    T32x4,
    /// 128 channels x 64 pixels, 8 x 4 outputs per invocation (256 invocations), depth 8:
    /// for layers with many channels and few pixels (fc6 on small inputs).
    T128x64,
    /// 64 channels x 128 pixels, 4 x 8 outputs per invocation (256 invocations), depth 8:
    /// for layers with few channels and many pixels (the first layers, the context module).
    T64x128,
    /// [`TiledVariant::T64x8`] with vector width 4.
    T64x8V4,
    /// [`TiledVariant::T128x64`] with vector width 4.
    T128x64V4,
}

/// The sizes of a [`TiledVariant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// Output channels per workgroup tile.
    pub tile_m: u32,
    /// Output pixels per workgroup tile.
    pub tile_n: u32,
    /// Output channels per invocation.
    pub per_m: u32,
    /// Output pixels per invocation.
    pub per_n: u32,
    /// Reduction depth staged in workgroup memory per step.
    pub depth: u32,
    /// Vector width of the workgroup-memory reads, 1 or 4 (dividing `per_m` and `per_n`).
    pub vec: u32,
}

impl TiledVariant {
    /// Every variant.
    pub const ALL: [TiledVariant; 7] = [
        TiledVariant::T64x4,
        TiledVariant::T64x8,
        TiledVariant::T32x4,
        TiledVariant::T128x64,
        TiledVariant::T64x128,
        TiledVariant::T64x8V4,
        TiledVariant::T128x64V4,
    ];

    /// The variant's sizes.
    pub const fn shape(self) -> TileShape {
        let (tile_m, tile_n, per_m, per_n, depth, vec) = match self {
            TiledVariant::T64x4 => (64, 64, 4, 4, 16, 1),
            TiledVariant::T64x8 => (64, 64, 8, 8, 8, 1),
            TiledVariant::T32x4 => (32, 32, 4, 4, 8, 1),
            TiledVariant::T128x64 => (128, 64, 8, 4, 8, 1),
            TiledVariant::T64x128 => (64, 128, 4, 8, 8, 1),
            TiledVariant::T64x8V4 => (64, 64, 8, 8, 8, 4),
            TiledVariant::T128x64V4 => (128, 64, 8, 4, 8, 4),
        };
        TileShape {
            tile_m,
            tile_n,
            per_m,
            per_n,
            depth,
            vec,
        }
    }

    /// Invocations per workgroup.
    pub const fn workgroup_size(self) -> u32 {
        let s = self.shape();
        (s.tile_m / s.per_m) * (s.tile_n / s.per_n)
    }

    /// Bytes of workgroup memory: the two tiles, the weight tile's rows padded by one vector.
    pub const fn shared_bytes(self) -> u32 {
        let s = self.shape();
        4 * s.depth * (s.tile_m + s.vec) + 4 * s.depth * s.tile_n
    }

    /// The choice's name (`tiled-64-4x4-k16`, ...): the tile (one side when square, else
    /// channels x pixels), the outputs per invocation, the depth and, past 1, the vector width
    /// (`-v4`).
    pub const fn name(self) -> &'static str {
        match self {
            TiledVariant::T64x4 => "tiled-64-4x4-k16",
            TiledVariant::T64x8 => "tiled-64-8x8-k8",
            TiledVariant::T32x4 => "tiled-32-4x4-k8",
            TiledVariant::T128x64 => "tiled-128x64-8x4-k8",
            TiledVariant::T64x128 => "tiled-64x128-4x8-k8",
            TiledVariant::T64x8V4 => "tiled-64-8x8-k8-v4",
            TiledVariant::T128x64V4 => "tiled-128x64-8x4-k8-v4",
        }
    }

    /// [`TiledVariant::name`] with `-nosplit` (the choice that may not split its reduction).
    pub const fn name_nosplit(self) -> &'static str {
        match self {
            TiledVariant::T64x4 => "tiled-64-4x4-k16-nosplit",
            TiledVariant::T64x8 => "tiled-64-8x8-k8-nosplit",
            TiledVariant::T32x4 => "tiled-32-4x4-k8-nosplit",
            TiledVariant::T128x64 => "tiled-128x64-8x4-k8-nosplit",
            TiledVariant::T64x128 => "tiled-64x128-4x8-k8-nosplit",
            TiledVariant::T64x8V4 => "tiled-64-8x8-k8-v4-nosplit",
            TiledVariant::T128x64V4 => "tiled-128x64-8x4-k8-v4-nosplit",
        }
    }

    /// The name of the variant's kernel ([`Kernel::name`]).
    pub const fn kernel_name(self) -> &'static str {
        match self {
            TiledVariant::T64x4 => "conv2d_tiled_64_4x4_k16",
            TiledVariant::T64x8 => "conv2d_tiled_64_8x8_k8",
            TiledVariant::T32x4 => "conv2d_tiled_32_4x4_k8",
            TiledVariant::T128x64 => "conv2d_tiled_128x64_8x4_k8",
            TiledVariant::T64x128 => "conv2d_tiled_64x128_4x8_k8",
            TiledVariant::T64x8V4 => "conv2d_tiled_64_8x8_k8_v4",
            TiledVariant::T128x64V4 => "conv2d_tiled_128x64_8x4_k8_v4",
        }
    }

    /// The variant's kernel.
    pub const fn kernel(self) -> Kernel {
        match self {
            TiledVariant::T64x4 => Kernel::ConvTiled64x4,
            TiledVariant::T64x8 => Kernel::ConvTiled64x8,
            TiledVariant::T32x4 => Kernel::ConvTiled32x4,
            TiledVariant::T128x64 => Kernel::ConvTiled128x64,
            TiledVariant::T64x8V4 => Kernel::ConvTiled64x8V4,
            TiledVariant::T128x64V4 => Kernel::ConvTiled128x64V4,
            TiledVariant::T64x128 => Kernel::ConvTiled64x128,
        }
    }
}

/// Invocations per workgroup of the cooperative-matrix convolutions: any subgroup size that
/// divides it works (see `shaders/conv2d_coop.wgsl`).
pub const WG_COOP: u32 = 128;
/// Most subgroups of a workgroup that do work in the cooperative-matrix convolutions: all of
/// them ([`WG_COOP`]), unless `DILATED_COOP_MAX_SUBGROUPS` (read once, 1 to 128) asks for
/// fewer. The others repeat a working subgroup's multiply-adds and store them where nothing
/// reads, so a device with narrow subgroups runs the rounds that one with subgroups of 64 or
/// more runs (fewer than four working subgroups take turns): the tests use it to check that
/// path on lavapipe. It changes no result, only the speed. An unreadable value is ignored
/// with a warning.
pub fn coop_max_subgroups() -> u32 {
    static CAP: OnceLock<u32> = OnceLock::new();
    *CAP.get_or_init(|| {
        coop_cap_from_env(std::env::var("DILATED_COOP_MAX_SUBGROUPS").ok().as_deref())
            .unwrap_or_else(|value| {
                log::warn!(
                    "DILATED_COOP_MAX_SUBGROUPS={value:?} is not a count from 1 to {WG_COOP}: \
                     ignored"
                );
                WG_COOP
            })
    })
}

/// [`coop_max_subgroups`] from the variable's value: unset is [`WG_COOP`]; anything but a
/// count from 1 to [`WG_COOP`] comes back as the error.
fn coop_cap_from_env(value: Option<&str>) -> Result<u32, String> {
    match value {
        None => Ok(WG_COOP),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if (1..=WG_COOP).contains(&n) => Ok(n),
            _ => Err(v.to_string()),
        },
    }
}

/// Cooperative-matrix blocks along each side of a cooperative-matrix convolution's workgroup
/// tile (a 4 x 4 grid of blocks, 2 x 2 per subgroup).
pub const COOP_TILE_PER_SIDE: u32 = 4;
/// Workgroup memory of a cooperative-matrix convolution for matrices of side `side`: weight
/// and input tiles of f16 (tile x 2 `side` each), the f32 output tile with `side` spare
/// rows, and one u32: 7 KiB for side 8, 28 KiB for side 16.
pub const fn coop_shared_bytes(side: u32) -> u32 {
    let tile = COOP_TILE_PER_SIDE * side;
    2 * (2 * tile * 2 * side) + 4 * (tile + side) * tile + 4
}

/// Smallest subgroup size the register-blocked convolution works with.
pub const BLOCKED_MIN_SUBGROUP: u32 = 8;
/// Most iterations of its reduction loop one invocation of a convolution gradient kernel
/// runs; longer reductions are cut into dispatches that add up. Mesa's lavapipe (llvmpipe's
/// gallivm) ends every loop of an invocation once its loops have run 65,535 iterations in all,
/// silently; this stays well below, and keeps each invocation short on GPUs with a watchdog.
pub const MAX_LOOP_STEPS: usize = 16384;
/// Most input channels x kernel taps one dispatch of a forward convolution reduces over
/// ([`MAX_LOOP_STEPS`] x 3, with room under lavapipe's 65,535 for the loops over taps): deeper
/// reductions are cut into chunks of input channels that add to the output. No released
/// network comes near (fc6: 25,088).
pub const MAX_REDUCTION_DEPTH: usize = 3 * MAX_LOOP_STEPS;

/// The layout of a uniform struct or of one of its fields, as Rust lays it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UniformLayout {
    /// A `u32`.
    U32,
    /// An `f32`.
    F32,
    /// A nested struct: its size and its fields `(name, offset, layout)` in order.
    Struct {
        /// Size in bytes.
        size: usize,
        /// Fields in declaration order.
        fields: Vec<(&'static str, usize, UniformLayout)>,
    },
}

/// A kernel uniform (or a part of one): plain old data whose layout is known field by field.
pub trait Uniform: bytemuck::Pod {
    /// The field-by-field layout.
    fn layout() -> UniformLayout;
}

impl Uniform for u32 {
    fn layout() -> UniformLayout {
        UniformLayout::U32
    }
}

impl Uniform for f32 {
    fn layout() -> UniformLayout {
        UniformLayout::F32
    }
}

/// Declares a kernel uniform: a `#[repr(C)]` Pod struct of `u32`s and nested uniforms, with
/// its [`Uniform`] layout for the reflection test.
macro_rules! uniform {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $(#[allow(missing_docs)] pub $field: $ty),*
        }

        impl $crate::gpu::shader::Uniform for $name {
            fn layout() -> $crate::gpu::shader::UniformLayout {
                $crate::gpu::shader::UniformLayout::Struct {
                    size: std::mem::size_of::<$name>(),
                    fields: vec![$((
                        stringify!($field),
                        std::mem::offset_of!($name, $field),
                        <$ty as $crate::gpu::shader::Uniform>::layout(),
                    )),*],
                }
            }
        }
    };
}
pub(crate) use uniform;

/// A shared piece of WGSL in `shaders/common/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The entry point of one-element-per-invocation kernels (`main` calling `element(i)`).
    Linear,
    /// The convolutions' uniform.
    ConvParams,
    /// The convolutions' epilogue (`finish`, `store_output`).
    ConvFinish,
    /// The plane-to-plane kernels' uniform header and output position.
    Planes,
    /// The per-pixel channel reductions' uniform.
    PerPixel,
    /// The tiled convolutions' share of work per workgroup (`tile_work`).
    TileWork,
}

impl Part {
    fn source(self) -> &'static str {
        match self {
            Part::Linear => include_str!("../../shaders/common/linear.wgsl"),
            Part::ConvParams => include_str!("../../shaders/common/conv_params.wgsl"),
            Part::ConvFinish => include_str!("../../shaders/common/conv_finish.wgsl"),
            Part::Planes => include_str!("../../shaders/common/planes.wgsl"),
            Part::PerPixel => include_str!("../../shaders/common/per_pixel.wgsl"),
            Part::TileWork => include_str!("../../shaders/common/tile_work.wgsl"),
        }
    }
}

/// The element type of a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    /// Always f32 (the training kernels).
    F32,
    /// Always u32 (labels, masks).
    U32,
    /// The precision's storage type `store_t` (the forward kernels' tensors and weights).
    Store,
    /// Vectors of 4 `store_t` (weights read 4 at a time).
    StoreVec4,
}

/// A storage binding after the uniform (binding 0): name in the WGSL, element type, and
/// whether the kernel writes it.
type Storage = (&'static str, Elem, bool);

const READ: bool = false;
const WRITE: bool = true;

/// One compute kernel of this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Direct convolution, one output per invocation.
    ConvDirect,
    /// Tiled implicit-GEMM convolution, any geometry.
    ConvTiled,
    /// Tiled matrix product for 1x1 convolutions.
    ConvPointwise,
    /// Register-blocked convolution without workgroup memory.
    ConvBlocked,
    /// Register-blocked convolution over [`BLOCK_C_WIDE`] output channels per invocation.
    ConvBlocked64,
    /// [`Kernel::ConvBlocked64`] reading weights packed by [`Kernel::ConvPackBlocked`]: two
    /// contiguous `vec4` loads per lane and reduction step.
    ConvBlockedPacked,
    /// Copies a convolution's weights into the layout of [`Kernel::ConvBlockedPacked`].
    ConvPackBlocked,
    /// Generated tiled convolution, [`TiledVariant::T64x4`].
    ConvTiled64x4,
    /// Generated tiled convolution, [`TiledVariant::T64x8`].
    ConvTiled64x8,
    /// Generated tiled convolution, [`TiledVariant::T32x4`].
    ConvTiled32x4,
    /// Generated tiled convolution, [`TiledVariant::T128x64`].
    ConvTiled128x64,
    /// Generated tiled convolution, [`TiledVariant::T64x128`].
    ConvTiled64x128,
    /// Generated tiled convolution, [`TiledVariant::T64x8V4`].
    ConvTiled64x8V4,
    /// Generated tiled convolution, [`TiledVariant::T128x64V4`].
    ConvTiled128x64V4,
    /// Tiled convolution on 8x8x8 cooperative matrices (f16 operands, f32 accumulators):
    /// [`COOP_TILE_PER_SIDE`] x 8 channels and pixels per workgroup tile.
    ConvCoop8,
    /// Tiled convolution on 16x16x16 cooperative matrices (tensor cores on NVIDIA and AMD).
    ConvCoop16,
    /// Second pass of a tiled convolution whose reduction was split: adds the partial sums,
    /// then bias and ReLU.
    ConvSplitReduce,
    /// ReLU on its own.
    Relu,
    /// Max pooling.
    MaxPool,
    /// Softmax over channels.
    Softmax,
    /// Argmax over channels into a label map.
    Argmax,
    /// Bilinear zoom by an integer factor.
    Zoom,
    /// Per-channel transposed convolution (in-network upsampling).
    Deconv,
    /// Gradient of a convolution with respect to its input.
    ConvGradInput,
    /// Gradient of a convolution with respect to its weights.
    ConvGradWeight,
    /// Gradient of a convolution with respect to its bias.
    ConvGradBias,
    /// A convolution's weights turned 180 degrees with input and output channels swapped: the
    /// weights of the convolution that computes its input gradient.
    ConvWeightFlip,
    /// Register-blocked gradient of a convolution with respect to its weights.
    ConvGradWeightBlocked,
    /// Gradient through a ReLU.
    ReluGrad,
    /// Softmax cross-entropy per pixel, with its gradient.
    SoftmaxLoss,
    /// SGD step with momentum and weight decay.
    Sgd,
    /// Gradient of max pooling with respect to its input.
    MaxPoolGrad,
    /// Dropout with a given mask, in place (forward and backward).
    Dropout,
}

/// How a kernel's source is put together.
struct Definition {
    name: &'static str,
    /// Shared parts, spliced in this order before the kernel's own file.
    parts: &'static [Part],
    file: &'static str,
    storage: &'static [Storage],
}

const CONV_STORAGE: &[Storage] = &[
    ("input", Elem::Store, READ),
    ("weight", Elem::Store, READ),
    ("bias", Elem::Store, READ),
    ("output", Elem::Store, WRITE),
];
const UNARY: &[Storage] = &[("input", Elem::Store, READ), ("output", Elem::Store, WRITE)];

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 33] = [
        Kernel::ConvDirect,
        Kernel::ConvTiled,
        Kernel::ConvPointwise,
        Kernel::ConvBlocked,
        Kernel::ConvBlocked64,
        Kernel::ConvBlockedPacked,
        Kernel::ConvPackBlocked,
        Kernel::ConvTiled64x4,
        Kernel::ConvTiled64x8,
        Kernel::ConvTiled32x4,
        Kernel::ConvTiled128x64,
        Kernel::ConvTiled64x128,
        Kernel::ConvTiled64x8V4,
        Kernel::ConvTiled128x64V4,
        Kernel::ConvCoop8,
        Kernel::ConvCoop16,
        Kernel::ConvSplitReduce,
        Kernel::Relu,
        Kernel::MaxPool,
        Kernel::Softmax,
        Kernel::Argmax,
        Kernel::Zoom,
        Kernel::Deconv,
        Kernel::ConvGradInput,
        Kernel::ConvGradWeight,
        Kernel::ConvGradBias,
        Kernel::ConvWeightFlip,
        Kernel::ConvGradWeightBlocked,
        Kernel::ReluGrad,
        Kernel::SoftmaxLoss,
        Kernel::Sgd,
        Kernel::MaxPoolGrad,
        Kernel::Dropout,
    ];

    fn definition(self) -> Definition {
        use Part::*;
        let def = |name, parts, file, storage| Definition {
            name,
            parts,
            file,
            storage,
        };
        let tiled = include_str!("../../shaders/conv2d_tiled.wgsl");
        match self {
            Kernel::ConvDirect => def(
                "conv2d_direct",
                &[ConvParams, ConvFinish, Linear],
                include_str!("../../shaders/conv2d_direct.wgsl"),
                CONV_STORAGE,
            ),
            Kernel::ConvTiled => def(
                "conv2d_tiled",
                &[ConvParams, ConvFinish, TileWork],
                tiled,
                CONV_STORAGE,
            ),
            Kernel::ConvPointwise => def(
                "conv2d_tiled_pointwise",
                &[ConvParams, ConvFinish, TileWork],
                tiled,
                CONV_STORAGE,
            ),
            Kernel::ConvBlocked => def(
                "conv2d_blocked",
                &[ConvParams, ConvFinish],
                include_str!("../../shaders/conv2d_blocked.wgsl"),
                CONV_STORAGE,
            ),
            Kernel::ConvBlocked64 => def(
                "conv2d_blocked_64",
                &[ConvParams, ConvFinish],
                include_str!("../../shaders/conv2d_blocked.wgsl"),
                CONV_STORAGE,
            ),
            Kernel::ConvBlockedPacked => def(
                "conv2d_blocked_packed",
                &[ConvParams, ConvFinish],
                include_str!("../../shaders/conv2d_blocked.wgsl"),
                &[
                    ("input", Elem::Store, READ),
                    ("weight", Elem::StoreVec4, READ),
                    ("bias", Elem::Store, READ),
                    ("output", Elem::Store, WRITE),
                ],
            ),
            Kernel::ConvPackBlocked => def(
                "conv2d_pack_blocked",
                &[ConvParams, Linear],
                include_str!("../../shaders/conv2d_pack_blocked.wgsl"),
                &[
                    ("weight", Elem::Store, READ),
                    ("output", Elem::Store, WRITE),
                ],
            ),
            Kernel::ConvTiled64x4
            | Kernel::ConvTiled64x8
            | Kernel::ConvTiled32x4
            | Kernel::ConvTiled128x64
            | Kernel::ConvTiled64x128
            | Kernel::ConvTiled64x8V4
            | Kernel::ConvTiled128x64V4 => def(
                self.tiled_variant()
                    .map_or("conv2d_tiled_generic", TiledVariant::kernel_name),
                &[ConvParams, ConvFinish, TileWork],
                include_str!("../../shaders/conv2d_tiled_generic.wgsl"),
                CONV_STORAGE,
            ),
            Kernel::ConvCoop8 | Kernel::ConvCoop16 => def(
                if self == Kernel::ConvCoop8 {
                    "conv2d_coop_8"
                } else {
                    "conv2d_coop_16"
                },
                &[ConvParams, ConvFinish, TileWork],
                include_str!("../../shaders/conv2d_coop.wgsl"),
                CONV_STORAGE,
            ),
            Kernel::ConvSplitReduce => def(
                "conv2d_split_reduce",
                &[ConvFinish, Linear],
                include_str!("../../shaders/conv2d_split_reduce.wgsl"),
                &[
                    ("partial", Elem::Store, READ),
                    ("bias", Elem::Store, READ),
                    ("output", Elem::Store, WRITE),
                ],
            ),
            Kernel::Relu => def(
                "relu",
                &[Linear],
                include_str!("../../shaders/relu.wgsl"),
                UNARY,
            ),
            Kernel::MaxPool => def(
                "max_pool",
                &[Planes, Linear],
                include_str!("../../shaders/max_pool.wgsl"),
                UNARY,
            ),
            Kernel::Softmax => def(
                "softmax",
                &[PerPixel, Linear],
                include_str!("../../shaders/softmax.wgsl"),
                UNARY,
            ),
            Kernel::Argmax => def(
                "argmax",
                &[PerPixel, Linear],
                include_str!("../../shaders/argmax.wgsl"),
                &[("input", Elem::Store, READ), ("labels", Elem::U32, WRITE)],
            ),
            Kernel::Zoom => def(
                "zoom",
                &[Planes, Linear],
                include_str!("../../shaders/zoom.wgsl"),
                UNARY,
            ),
            Kernel::Deconv => def(
                "deconv",
                &[Planes, Linear],
                include_str!("../../shaders/deconv.wgsl"),
                &[
                    ("input", Elem::Store, READ),
                    ("weight", Elem::Store, READ),
                    ("output", Elem::Store, WRITE),
                ],
            ),
            Kernel::ConvGradInput => def(
                "conv2d_grad_input",
                &[ConvParams, Linear],
                include_str!("../../shaders/grad/conv2d_grad_input.wgsl"),
                &[
                    ("grad", Elem::F32, READ),
                    ("weight", Elem::F32, READ),
                    ("output", Elem::F32, WRITE),
                ],
            ),
            Kernel::ConvGradWeight => def(
                "conv2d_grad_weight",
                &[ConvParams, Linear],
                include_str!("../../shaders/grad/conv2d_grad_weight.wgsl"),
                &[
                    ("input", Elem::F32, READ),
                    ("grad", Elem::F32, READ),
                    ("output", Elem::F32, WRITE),
                ],
            ),
            Kernel::ConvGradBias => def(
                "conv2d_grad_bias",
                &[ConvParams, Linear],
                include_str!("../../shaders/grad/conv2d_grad_bias.wgsl"),
                &[("grad", Elem::F32, READ), ("output", Elem::F32, WRITE)],
            ),
            Kernel::ConvWeightFlip => def(
                "conv2d_weight_flip",
                &[ConvParams, Linear],
                include_str!("../../shaders/grad/conv2d_weight_flip.wgsl"),
                &[("weight", Elem::F32, READ), ("output", Elem::F32, WRITE)],
            ),
            Kernel::ConvGradWeightBlocked => def(
                "conv2d_grad_weight_blocked",
                &[ConvParams],
                include_str!("../../shaders/grad/conv2d_grad_weight_blocked.wgsl"),
                &[
                    ("input", Elem::F32, READ),
                    ("grad", Elem::F32, READ),
                    ("output", Elem::F32, WRITE),
                ],
            ),
            Kernel::ReluGrad => def(
                "relu_grad",
                &[Linear],
                include_str!("../../shaders/grad/relu_grad.wgsl"),
                &[
                    ("grad", Elem::F32, READ),
                    ("activation", Elem::F32, READ),
                    ("output", Elem::F32, WRITE),
                ],
            ),
            Kernel::SoftmaxLoss => def(
                "softmax_loss",
                &[Linear],
                include_str!("../../shaders/grad/softmax_loss.wgsl"),
                &[
                    ("input", Elem::F32, READ),
                    ("labels", Elem::U32, READ),
                    ("output", Elem::F32, WRITE),
                    ("loss", Elem::F32, WRITE),
                ],
            ),
            Kernel::Sgd => def(
                "sgd",
                &[Linear],
                include_str!("../../shaders/grad/sgd.wgsl"),
                &[
                    ("grad", Elem::F32, READ),
                    ("velocity", Elem::F32, WRITE),
                    ("param", Elem::F32, WRITE),
                ],
            ),
            Kernel::MaxPoolGrad => def(
                "max_pool_grad",
                &[Linear],
                include_str!("../../shaders/grad/max_pool_grad.wgsl"),
                &[
                    ("input", Elem::F32, READ),
                    ("grad", Elem::F32, READ),
                    ("output", Elem::F32, WRITE),
                ],
            ),
            Kernel::Dropout => def(
                "dropout",
                &[Linear],
                include_str!("../../shaders/grad/dropout.wgsl"),
                &[("mask", Elem::U32, READ), ("data", Elem::F32, WRITE)],
            ),
        }
    }

    /// The kernel's name (its pipeline label; its shader file is named after it, the pointwise
    /// variant sharing `conv2d_tiled.wgsl`).
    pub fn name(self) -> &'static str {
        self.definition().name
    }

    /// The complete WGSL source of the f32 variant ([`Kernel::source_as`]).
    pub fn source(self) -> String {
        self.source_as(Precision::F32)
    }

    /// Whether the kernel has an f16 variant: it keeps tensors or weights in the storage
    /// type (the forward kernels; the training kernels are f32 only).
    pub fn has_f16(self) -> bool {
        self.definition()
            .storage
            .iter()
            .any(|(_, elem, _)| matches!(elem, Elem::Store | Elem::StoreVec4))
    }

    /// The complete WGSL source for a storage precision: `enable f16;` for f16 (and, with
    /// `enable wgpu_cooperative_matrix;`, for the cooperative-matrix kernels), the shared
    /// constants (and a generated tiled variant's tile shape), the storage type alias
    /// `store_t`, the uniform and storage bindings, the
    /// kernel's shared parts and its own file, with the `// BLOCK:` template lines of the
    /// register-blocked kernels expanded.
    pub fn source_as(self, precision: Precision) -> String {
        let def = self.definition();
        let pointwise = self == Kernel::ConvPointwise;
        let block_c = self.block_channels();
        let mut out = String::new();
        let coop = self.coop_size();
        if precision == Precision::F16 || coop.is_some() {
            out.push_str("enable f16;\n");
        }
        if coop.is_some() {
            out.push_str("enable wgpu_cooperative_matrix;\n");
        }
        if precision == Precision::F16 || coop.is_some() {
            out.push('\n');
        }
        out.push_str(&format!("alias store_t = {};\n", precision.wgsl()));
        out += &format!(
            "const WG_LINEAR: u32 = {WG_LINEAR}u;\nconst WG_TILED: u32 = {WG_TILED}u;\n\
             const TILE_M: u32 = {TILE_M}u;\nconst TILE_N: u32 = {TILE_N}u;\n\
             const TILE_K: u32 = {TILE_K}u;\nconst POINTWISE: bool = {pointwise};\n\
             const WG_BLOCKED: u32 = {WG_BLOCKED}u;\nconst BLOCK_C: u32 = {block_c}u;\n\
             const BLOCK_P: u32 = {BLOCK_P}u;\n"
        );
        if let Some(v) = self.tiled_variant() {
            let s = v.shape();
            out += &format!(
                "const GT_TILE_M: u32 = {}u;\nconst GT_TILE_N: u32 = {}u;\n\
                 const GT_PER_M: u32 = {}u;\nconst GT_PER_N: u32 = {}u;\n\
                 const GT_DEPTH: u32 = {}u;\nconst GT_VEC: u32 = {}u;\n",
                s.tile_m, s.tile_n, s.per_m, s.per_n, s.depth, s.vec
            );
            out += if s.vec == 4 { TILE_VEC4 } else { TILE_VEC1 };
        }
        if let Some(side) = coop {
            out += &format!(
                "const COOP_S: u32 = {side}u;\nconst WG_COOP: u32 = {WG_COOP}u;\n\
                 const COOP_MAX_SUBGROUPS: u32 = {}u;\n\
                 alias coop_a = coop_mat{side}x{side}<f16, A>;\n\
                 alias coop_b = coop_mat{side}x{side}<f16, B>;\n\
                 alias coop_c = coop_mat{side}x{side}<f32, C>;\n",
                coop_max_subgroups()
            );
        }
        out.push_str("\n@group(0) @binding(0) var<uniform> p: Params;\n");
        for (i, (name, elem, write)) in def.storage.iter().enumerate() {
            let access = if *write { "read_write" } else { "read" };
            let ty = match elem {
                Elem::F32 => "f32",
                Elem::U32 => "u32",
                Elem::Store => "store_t",
                Elem::StoreVec4 => "vec4<store_t>",
            };
            out.push_str(&format!(
                "@group(0) @binding({}) var<storage, {access}> {name}: array<{ty}>;\n",
                i + 1
            ));
        }
        for part in def.parts {
            out.push('\n');
            out.push_str(part.source());
        }
        out.push('\n');
        if matches!(
            self,
            Kernel::ConvBlocked
                | Kernel::ConvBlocked64
                | Kernel::ConvBlockedPacked
                | Kernel::ConvGradWeightBlocked
        ) {
            let packed = self == Kernel::ConvBlockedPacked;
            out.push_str(&expand_blocks(&select_lines(def.file, packed), block_c));
        } else {
            out.push_str(def.file);
        }
        out
    }

    /// Output channels per invocation of a register-blocked kernel (the `BLOCK_C` of its
    /// source): [`BLOCK_C_WIDE`] for [`Kernel::ConvBlocked64`], [`BLOCK_C`] for the others.
    pub const fn block_channels(self) -> u32 {
        match self {
            Kernel::ConvBlocked64 | Kernel::ConvBlockedPacked | Kernel::ConvPackBlocked => {
                BLOCK_C_WIDE
            }
            _ => BLOCK_C,
        }
    }

    /// The tile shape of a generated tiled convolution kernel.
    pub const fn tiled_variant(self) -> Option<TiledVariant> {
        match self {
            Kernel::ConvTiled64x4 => Some(TiledVariant::T64x4),
            Kernel::ConvTiled64x8 => Some(TiledVariant::T64x8),
            Kernel::ConvTiled32x4 => Some(TiledVariant::T32x4),
            Kernel::ConvTiled128x64 => Some(TiledVariant::T128x64),
            Kernel::ConvTiled64x8V4 => Some(TiledVariant::T64x8V4),
            Kernel::ConvTiled128x64V4 => Some(TiledVariant::T128x64V4),
            Kernel::ConvTiled64x128 => Some(TiledVariant::T64x128),
            _ => None,
        }
    }

    /// The side of the square cooperative matrices a cooperative-matrix convolution runs on
    /// (8 or 16); `None` for the other kernels.
    pub const fn coop_size(self) -> Option<u32> {
        match self {
            Kernel::ConvCoop8 => Some(8),
            Kernel::ConvCoop16 => Some(16),
            _ => None,
        }
    }

    /// The cooperative-matrix convolution for matrices of side `side` (8 or 16).
    pub const fn coop_for(side: u32) -> Option<Kernel> {
        match side {
            8 => Some(Kernel::ConvCoop8),
            16 => Some(Kernel::ConvCoop16),
            _ => None,
        }
    }

    /// Output channels (and pixels) per workgroup tile of a cooperative-matrix convolution.
    pub const fn coop_tile(self) -> Option<u32> {
        match self.coop_size() {
            Some(side) => Some(COOP_TILE_PER_SIDE * side),
            None => None,
        }
    }

    /// Number of storage buffers the kernel binds after its uniform (binding 0): read-only
    /// inputs first, then the buffers it writes.
    pub fn storage_bindings(self) -> u32 {
        self.definition().storage.len() as u32
    }

    /// Position in [`Kernel::ALL`] (declaration order).
    const fn index(self) -> usize {
        self as usize
    }
}

/// The workgroup-memory tiles of a generated tiled variant of vector width 1: scalars, `lane`
/// the identity. Sizes and the stores' and reads' indices are in words (`tile_get` reads one
/// vector, `GT_VEC` words, at a multiple of `GT_VEC`).
const TILE_VEC1: &str = "alias tile_v = f32;
var<workgroup> tile_w: array<f32, GT_DEPTH * W_STRIDE>; // [k][m]
var<workgroup> tile_x: array<f32, GT_DEPTH * GT_TILE_N>; // [k][n]
fn tile_w_set(i: u32, v: f32) { tile_w[i] = v; }
fn tile_x_set(i: u32, v: f32) { tile_x[i] = v; }
fn tile_w_get(i: u32) -> tile_v { return tile_w[i]; }
fn tile_x_get(i: u32) -> tile_v { return tile_x[i]; }
fn lane(v: tile_v, e: u32) -> f32 { return v; }
";

/// [`TILE_VEC1`] for vector width 4: the tiles are arrays of `vec4<f32>`.
const TILE_VEC4: &str = "alias tile_v = vec4<f32>;
var<workgroup> tile_w: array<vec4<f32>, GT_DEPTH * W_STRIDE / 4u>; // [k][m]
var<workgroup> tile_x: array<vec4<f32>, GT_DEPTH * GT_TILE_N / 4u>; // [k][n]
fn tile_w_set(i: u32, v: f32) { tile_w[i / 4u][i % 4u] = v; }
fn tile_x_set(i: u32, v: f32) { tile_x[i / 4u][i % 4u] = v; }
fn tile_w_get(i: u32) -> tile_v { return tile_w[i / 4u]; }
fn tile_x_get(i: u32) -> tile_v { return tile_x[i / 4u]; }
fn lane(v: tile_v, e: u32) -> f32 { return v[e]; }
";

/// The lines of the register-blocked source for the packed variant (`packed`) or the others:
/// `// P: line` and `// BLOCK-P: template` become `line` and `// BLOCK: template` for the packed
/// one and are dropped for the others, `// S:` and `// BLOCK-S:` the other way round.
fn select_lines(file: &str, packed: bool) -> String {
    let (keep, drop) = if packed { ("P", "S") } else { ("S", "P") };
    let mut out = String::with_capacity(file.len());
    for line in file.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with(&format!("// {drop}: "))
            || trimmed.starts_with(&format!("// BLOCK-{drop}: "))
        {
            continue;
        }
        if let Some(code) = trimmed.strip_prefix(&format!("// {keep}: ")) {
            out.push_str(&format!("{indent}{code}\n"));
        } else if let Some(template) = trimmed.strip_prefix(&format!("// BLOCK-{keep}: ")) {
            out.push_str(&format!("{indent}// BLOCK: {template}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Expands each line `// BLOCK: template` into one line per weight row `r` (`{r}`, `{8r}`), per
/// packed weight `vec4` `q` (`{q}`, `{8q}`; one per 32 channels) or per output channel `i`
/// (`{i}`, `{i/8}`, `{i%8}`, `{i/32}`, `{i%4}`, `{i%32/4}`) of a `block_c`-channel block, after
/// the comment.
fn expand_blocks(file: &str, block_c: u32) -> String {
    let mut out = String::with_capacity(file.len() * 4);
    for line in file.lines() {
        out.push_str(line);
        out.push('\n');
        let Some((indent, template)) = line.split_once("// BLOCK: ") else {
            continue;
        };
        if template.contains("{i") {
            for i in 0..block_c {
                let l = template
                    .replace("{i}", &i.to_string())
                    .replace("{i/8}", &(i / 8).to_string())
                    .replace("{i%8}", &(i % 8).to_string())
                    .replace("{i/32}", &(i / 32).to_string())
                    .replace("{i%4}", &(i % 4).to_string())
                    .replace("{i%32/4}", &(i % 32 / 4).to_string());
                out.push_str(&format!("{indent}{l}\n"));
            }
        } else if template.contains("{q}") || template.contains("{8q}") {
            for q in 0..block_c / 32 {
                let l = template
                    .replace("{q}", &q.to_string())
                    .replace("{8q}", &(8 * q).to_string());
                out.push_str(&format!("{indent}{l}\n"));
            }
        } else {
            for r in 0..block_c / 8 {
                let l = template
                    .replace("{r}", &r.to_string())
                    .replace("{8r}", &(8 * r).to_string());
                out.push_str(&format!("{indent}{l}\n"));
            }
        }
    }
    out
}

/// A kernel's pipeline and the layout of its bind group.
pub(crate) struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines of one device, one per kernel and precision, each built on first use with an
/// explicit layout, through the device's pipeline cache when it has one.
pub(crate) struct Kernels {
    compiled: [[OnceLock<Compiled>; Precision::ALL.len()]; Kernel::ALL.len()],
    cache: Option<wgpu::PipelineCache>,
    /// A pipeline was built since the cache's data was last taken (see [`Kernels::take_new`]).
    built: AtomicBool,
}

impl Default for Kernels {
    fn default() -> Self {
        Self {
            compiled: std::array::from_fn(|_| Default::default()),
            cache: None,
            built: AtomicBool::new(false),
        }
    }
}

impl Kernels {
    /// Pipelines built through `cache` (or without one).
    pub(crate) fn new(cache: Option<wgpu::PipelineCache>) -> Self {
        Self {
            cache,
            ..Self::default()
        }
    }

    /// The pipeline cache pipelines are built through.
    #[cfg(feature = "fs")]
    pub(crate) fn cache(&self) -> Option<&wgpu::PipelineCache> {
        self.cache.as_ref()
    }

    /// Whether a pipeline was built since the last call (and clears the mark).
    #[cfg(feature = "fs")]
    pub(crate) fn take_new(&self) -> bool {
        self.built.swap(false, Ordering::SeqCst)
    }

    /// The pipeline of `kernel` for `precision`, built on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        precision: Precision,
    ) -> &Compiled {
        self.compiled[kernel.index()][precision.index()].get_or_init(|| {
            self.built.store(true, Ordering::SeqCst);
            let def = kernel.definition();
            let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let mut entries = vec![buffer(0, wgpu::BufferBindingType::Uniform)];
            for (i, (_, _, write)) in def.storage.iter().enumerate() {
                entries.push(buffer(
                    i as u32 + 1,
                    wgpu::BufferBindingType::Storage { read_only: !write },
                ));
            }
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(def.name),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(def.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(def.name),
                source: wgpu::ShaderSource::Wgsl(kernel.source_as(precision).into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(def.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: self.cache.as_ref(),
            });
            Compiled { pipeline, layout }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kernel_in_declaration_order() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        assert_eq!(Kernel::Dropout.index() + 1, Kernel::ALL.len());
    }

    /// The Rust uniform of a kernel.
    fn rust_uniform(kernel: Kernel) -> UniformLayout {
        use crate::gpu::ops::train::{dropout, max_pool_grad, relu_grad, sgd, softmax_loss};
        use crate::gpu::ops::{conv, deconv, max_pool, per_pixel, relu, zoom};
        match kernel {
            Kernel::ConvDirect
            | Kernel::ConvTiled
            | Kernel::ConvPointwise
            | Kernel::ConvBlocked
            | Kernel::ConvBlocked64
            | Kernel::ConvBlockedPacked
            | Kernel::ConvPackBlocked
            | Kernel::ConvTiled64x4
            | Kernel::ConvTiled64x8
            | Kernel::ConvTiled32x4
            | Kernel::ConvTiled128x64
            | Kernel::ConvTiled64x8V4
            | Kernel::ConvTiled128x64V4
            | Kernel::ConvTiled64x128
            | Kernel::ConvCoop8
            | Kernel::ConvCoop16
            | Kernel::ConvGradInput
            | Kernel::ConvGradWeight
            | Kernel::ConvGradBias
            | Kernel::ConvWeightFlip
            | Kernel::ConvGradWeightBlocked => conv::ConvParams::layout(),
            Kernel::ReluGrad => relu_grad::ReluGradParams::layout(),
            Kernel::SoftmaxLoss => softmax_loss::SoftmaxLossParams::layout(),
            Kernel::Sgd => sgd::SgdParams::layout(),
            Kernel::MaxPoolGrad => max_pool_grad::MaxPoolGradParams::layout(),
            Kernel::Dropout => dropout::DropoutParams::layout(),
            Kernel::ConvSplitReduce => conv::SplitReduceParams::layout(),
            Kernel::Relu => relu::ReluParams::layout(),
            Kernel::MaxPool => max_pool::MaxPoolParams::layout(),
            Kernel::Softmax | Kernel::Argmax => per_pixel::PixelParams::layout(),
            Kernel::Zoom => zoom::ZoomParams::layout(),
            Kernel::Deconv => deconv::DeconvParams::layout(),
        }
    }

    /// The layout naga gives a WGSL type, in the terms of [`UniformLayout`].
    fn wgsl_layout(module: &naga::Module, ty: naga::Handle<naga::Type>, at: &str) -> UniformLayout {
        match &module.types[ty].inner {
            naga::TypeInner::Scalar(naga::Scalar {
                kind: naga::ScalarKind::Uint,
                width: 4,
            }) => UniformLayout::U32,
            naga::TypeInner::Scalar(naga::Scalar {
                kind: naga::ScalarKind::Float,
                width: 4,
            }) => UniformLayout::F32,
            naga::TypeInner::Struct { members, span } => UniformLayout::Struct {
                size: *span as usize,
                fields: members
                    .iter()
                    .map(|m| {
                        let name = m.name.clone().unwrap_or_default();
                        let inner = wgsl_layout(module, m.ty, &format!("{at}.{name}"));
                        (&*name.leak(), m.offset as usize, inner)
                    })
                    .collect(),
            },
            other => panic!("{at}: a uniform holds only u32, f32 and structs, found {other:?}"),
        }
    }

    /// Every kernel's WGSL uniform (binding 0), in each of its variants, has the Rust struct's
    /// size, field names and field offsets, nested structs included: the host writes exactly
    /// what the shader reads.
    #[test]
    fn wgsl_uniforms_match_the_rust_structs_field_by_field() {
        let variants = Kernel::ALL.into_iter().flat_map(|k| {
            Precision::ALL
                .into_iter()
                .filter(move |p| *p == Precision::F32 || k.has_f16())
                .map(move |p| (k, p))
        });
        for (kernel, precision) in variants {
            let source = kernel.source_as(precision);
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
            let (_, uniform) = module
                .global_variables
                .iter()
                .find(|(_, g)| {
                    g.space == naga::AddressSpace::Uniform
                        && g.binding
                            .as_ref()
                            .is_some_and(|b| b.group == 0 && b.binding == 0)
                })
                .unwrap_or_else(|| panic!("{}: no uniform at binding 0", kernel.name()));
            let wgsl = wgsl_layout(&module, uniform.ty, kernel.name());
            assert_eq!(wgsl, rust_uniform(kernel), "{} {precision}", kernel.name());
        }
    }

    /// Every forward kernel has an f16 variant that naga parses and validates (with f16 in
    /// storage); the f32 sources enable no f16, except the cooperative-matrix kernels', whose
    /// operands are f16 in every variant (plans run them on f16 storage only).
    #[test]
    fn f16_variants_parse_and_validate() {
        let forward = [
            Kernel::ConvDirect,
            Kernel::ConvTiled,
            Kernel::ConvPointwise,
            Kernel::ConvBlocked,
            Kernel::ConvBlocked64,
            Kernel::ConvBlockedPacked,
            Kernel::ConvPackBlocked,
            Kernel::ConvTiled64x4,
            Kernel::ConvTiled64x8,
            Kernel::ConvTiled32x4,
            Kernel::ConvTiled128x64,
            Kernel::ConvTiled64x128,
            Kernel::ConvTiled64x8V4,
            Kernel::ConvTiled128x64V4,
            Kernel::ConvCoop8,
            Kernel::ConvCoop16,
            Kernel::ConvSplitReduce,
            Kernel::Relu,
            Kernel::MaxPool,
            Kernel::Softmax,
            Kernel::Argmax,
            Kernel::Zoom,
            Kernel::Deconv,
        ];
        let validate = |kernel: Kernel, source: &str| {
            let module = naga::front::wgsl::parse_str(source)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(source)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", kernel.name()));
        };
        for kernel in Kernel::ALL {
            assert_eq!(kernel.has_f16(), forward.contains(&kernel), "{kernel:?}");
            let f32_source = kernel.source();
            if kernel.coop_size().is_some() {
                assert!(
                    f32_source.starts_with(
                        "enable f16;\nenable wgpu_cooperative_matrix;\n\nalias store_t = f32;"
                    ),
                    "{kernel:?}"
                );
                validate(kernel, &f32_source);
            } else {
                assert!(f32_source.starts_with("alias store_t = f32;"), "{kernel:?}");
                assert!(!f32_source.contains("enable f16"), "{kernel:?}");
            }
            if !kernel.has_f16() {
                continue;
            }
            let source = kernel.source_as(Precision::F16);
            assert!(source.starts_with("enable f16;"), "{kernel:?}");
            validate(kernel, &source);
        }
    }

    /// The workgroup memory the host budgets for each cooperative-matrix kernel
    /// ([`coop_shared_bytes`], checked against the device's limit) is what its WGSL declares.
    #[test]
    fn coop_workgroup_memory_matches_the_shader() {
        for kernel in [Kernel::ConvCoop8, Kernel::ConvCoop16] {
            let source = kernel.source_as(Precision::F16);
            let module = naga::front::wgsl::parse_str(&source).expect("parse");
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).expect("layout");
            let declared: u32 = module
                .global_variables
                .iter()
                .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                .map(|(_, g)| layouter[g.ty].size)
                .sum();
            let side = kernel.coop_size().unwrap();
            assert_eq!(declared, coop_shared_bytes(side), "{kernel:?}");
        }
    }

    /// `DILATED_COOP_MAX_SUBGROUPS` is a count from 1 to WG_COOP, or ignored.
    #[test]
    fn coop_subgroup_cap_is_read_strictly() {
        assert_eq!(coop_cap_from_env(None), Ok(WG_COOP));
        assert_eq!(coop_cap_from_env(Some("1")), Ok(1));
        assert_eq!(coop_cap_from_env(Some(" 3\n")), Ok(3));
        assert_eq!(coop_cap_from_env(Some("128")), Ok(128));
        for bad in ["0", "129", "-1", "two", ""] {
            assert_eq!(coop_cap_from_env(Some(bad)), Err(bad.to_string()));
        }
    }

    #[test]
    fn written_storage_bindings_come_last() {
        for k in Kernel::ALL {
            let storage = k.definition().storage;
            let first_write = storage.iter().position(|s| s.2).expect("a written binding");
            assert!(storage[first_write..].iter().all(|s| s.2), "{k:?}");
        }
    }
}
