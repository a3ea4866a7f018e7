//! The fast CPU path.
//!
//! Convolutions run on one of three methods ([`ConvMethod`], chosen per layer by
//! [`CpuConv2d::auto`] or asked for with [`CpuConv2d::with_method`]):
//!
//! - **Winograd F(4x4, 3x3)** (or F(2x2, 3x3)) on AVX-512 for stride-1 kernels of 3x3 and
//!   larger with 32 or more channels (`winograd.rs`). A dilation-`d` 3x3 convolution is `d^2`
//!   ordinary ones on grids of pixels `d` apart, so a tile's outputs and its input window are
//!   read `d` apart and every dilated layer of the networks gets the 4x saving in
//!   multiplications; larger kernels (fc6's 7x7) go in 3x3 pieces whose products add up. The
//!   products run on the direct method's micro-kernel, and long sums are added in runs of 512
//!   terms, which keeps the error against the f64 reference within 1e-5 (measured 3-6e-6 for
//!   256-4608 terms; `tests/cpu_winograd.rs`).
//! - **Direct**, register-blocked AVX-512 (`direct_avx512.rs`) for horizontal stride 1: each
//!   micro-kernel call computes a tile of up to [`MAX_MR`] output channels by 16 or 32
//!   consecutive output pixels (of one row, or of the output laid out at the padded input's
//!   row pitch when rows are narrow), accumulating every input channel and kernel tap in
//!   registers (weights pre-packed at [`CpuConv2d::new`], bias and ReLU fused into the store).
//!   Dilation only changes the offsets of the taps, and taps that fall wholly into the padding
//!   are skipped. Work is cut into bands of output rows, groups of output channels and
//!   cache-sized chunks of input channels.
//! - **im2col + SGEMM** (`gemm.rs`, the `gemm` crate) elsewhere: no AVX-512, or horizontal
//!   stride above 1.
//!
//! The other kernels live in one file per family: max pooling (`pool.rs`), ReLU and softmax
//! (`elementwise.rs`), the transposed convolution (`deconv.rs`), and the backward passes
//! training needs (`grad.rs`, with the AVX-512 weight gradient in `grad_avx512.rs`); the public
//! functions are re-exported here: [`conv2d`], [`max_pool2d`], [`relu_inplace`], [`softmax`],
//! [`deconv2d`], and [`conv2d_grad_weight`], [`conv2d_grad_input`], [`bias_grad`],
//! [`max_pool2d_backward`], [`softmax_cross_entropy`] (whole networks train with
//! [`crate::train::CpuTrainer`], whose layers use [`CpuConv2d::auto_for_training`]). All
//! are multi-threaded (with the default `threads` feature), and everything is checked against
//! [`super::reference`] and [`crate::train::grad`].

mod cpu_info;
mod deconv;
#[cfg(target_arch = "x86_64")]
mod direct_avx512;
mod elementwise;
mod gemm;
pub(crate) mod grad;
#[cfg(target_arch = "x86_64")]
mod grad_avx512;
mod pool;
#[cfg(target_arch = "x86_64")]
mod winograd;

use std::sync::Mutex;

use ndarray::{Array4, ArrayView1, ArrayView4};

use crate::error::{Error, Result};
use crate::spec::{Conv2d, MaxPool2d, Shape, check_conv_params, shape_of};

pub use cpu_info::CpuInfo;
pub use deconv::deconv2d;
pub(crate) use elementwise::relu_slice;
pub use elementwise::{relu_inplace, softmax};
pub use grad::{
    bias_grad, conv2d_grad_input, conv2d_grad_weight, max_pool2d_backward, softmax_cross_entropy,
};
pub use pool::max_pool2d;
pub(crate) use pool::max_pool2d_slices;
#[cfg(target_arch = "x86_64")]
pub use winograd::WinogradTile;

/// Output tile of a Winograd scheme for 3x3 kernels (AVX-512 builds only).
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// F(2x2, 3x3).
    F2,
    /// F(4x4, 3x3).
    F4,
}

#[cfg(not(target_arch = "x86_64"))]
impl WinogradTile {
    /// Outputs along a tile edge.
    pub const fn m(self) -> usize {
        match self {
            Self::F2 => 2,
            Self::F4 => 4,
        }
    }
}

/// How the fast CPU path computes a convolution (see [`CpuConv2d::with_method`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvMethod {
    /// im2col over bands of output rows plus multi-threaded SGEMM: any CPU, any layer.
    Gemm,
    /// The direct, register-blocked AVX-512 convolution: x86-64 CPUs with AVX-512F, layers
    /// of horizontal stride 1.
    Direct,
    /// Winograd F(m x m, 3 x 3) on AVX-512 for stride-1 layers at any dilation (the dilated
    /// tile reads its window `d` apart); kernels larger than 3x3 are cut into 3x3 pieces whose
    /// products add up. Inputs holding a NaN or an infinity are computed by
    /// [`ConvMethod::Direct`], whose propagation of them matches the reference.
    Winograd(WinogradTile),
    /// The direct method in reduced precision: inputs and weights rounded to bf16 (8
    /// significant bits), products summed in f32 by AVX-512 BF16's `vdpbf16ps`, two input
    /// channels per instruction, so twice the multiply-adds of [`ConvMethod::Direct`] per
    /// cycle where the instruction runs at the FMA's rate (Zen 4), with half the weight
    /// memory. x86-64 CPUs with AVX-512F and AVX-512 BF16, horizontal stride 1. Never chosen
    /// automatically: ask for it ([`CpuConv2d::with_method`], [`CpuPrecision::Bf16`]). Its
    /// results differ from f32 by the inputs' and weights' rounding, about 2e-3 relative per
    /// layer.
    DirectBf16,
}

impl std::fmt::Display for ConvMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gemm => f.write_str("im2col+sgemm"),
            Self::Direct => f.write_str("direct"),
            Self::Winograd(WinogradTile::F2) => f.write_str("winograd-f2"),
            Self::Winograd(WinogradTile::F4) => f.write_str("winograd-f4"),
            Self::DirectBf16 => f.write_str("direct-bf16"),
        }
    }
}

impl std::str::FromStr for ConvMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "gemm" | "im2col+sgemm" => Self::Gemm,
            "direct" => Self::Direct,
            "winograd-f2" | "f2" => Self::Winograd(WinogradTile::F2),
            "winograd-f4" | "f4" | "winograd" => Self::Winograd(WinogradTile::F4),
            "direct-bf16" | "bf16" => Self::DirectBf16,
            _ => {
                return Err(Error::InvalidSpec {
                    context: "CPU convolution method".into(),
                    reason: format!(
                        "unknown method {s:?} (expected gemm, direct, winograd-f2, winograd-f4 or \
                         direct-bf16)"
                    ),
                });
            }
        })
    }
}

/// Arithmetic precision of the fast CPU path's convolutions (see
/// [`CpuConv2d::auto_for_precision`] and [`crate::plan::CpuPlan::with_precision`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuPrecision {
    /// f32 throughout (the default): every method within 1e-5 of the f64 reference per layer.
    #[default]
    F32,
    /// Convolutions on [`ConvMethod::DirectBf16`] where this CPU has AVX-512 BF16 and it is
    /// the faster choice ([`CpuConv2d::auto_for_precision`]), else as in f32: per layer about
    /// 2e-3 from f32's results (1e-2 on whole networks), half the weight memory on those
    /// layers (and fc6 without Winograd's 2.7 GB of transformed weights).
    Bf16,
}

impl CpuPrecision {
    /// Whether this CPU can compute at this precision (bf16 needs AVX-512F and AVX-512 BF16).
    pub fn is_available(self) -> bool {
        match self {
            Self::F32 => true,
            Self::Bf16 => avx512_bf16(),
        }
    }
}

impl std::fmt::Display for CpuPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for CpuPrecision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(Error::InvalidSpec {
                context: "CPU precision".into(),
                reason: format!("unknown precision {s:?} (expected f32 or bf16)"),
            }),
        }
    }
}

/// Most output channels per micro-kernel tile of the direct path.
pub const MAX_MR: usize = 14;

/// How the layer runs.
enum Method {
    /// im2col + SGEMM; weights as an `out x (in*kh*kw)` matrix.
    Gemm { weight: Vec<f32> },
    /// Direct AVX-512 convolution; weights packed per block of output channels as
    /// `[in][kh*kw][block]`, blocks stored one after the other.
    #[cfg(target_arch = "x86_64")]
    Direct {
        packed: Vec<f32>,
        /// `(first output channel, channels in the block)`.
        blocks: Vec<(usize, usize)>,
    },
    /// Winograd; the direct method's packed weights too, for inputs with NaN or infinity.
    #[cfg(target_arch = "x86_64")]
    Winograd {
        wino: winograd::Packed,
        packed: Vec<f32>,
        blocks: Vec<(usize, usize)>,
    },
    /// The direct method in bf16: weights packed as for `Direct`, each `u32` holding two
    /// consecutive input channels' bf16 values (`[in / 2][kh*kw][block]`).
    #[cfg(target_arch = "x86_64")]
    DirectBf16 {
        packed: Vec<u32>,
        blocks: Vec<(usize, usize)>,
    },
}

/// A convolution layer prepared for the CPU: weights packed for the chosen method, plus a
/// reusable scratch buffer for the padded input.
///
/// The layer is `Send + Sync`; concurrent calls on one layer take turns on the scratch buffer
/// (each call itself uses every rayon thread, with the `threads` feature).
pub struct CpuConv2d {
    spec: Conv2d,
    method: Method,
    bias: Option<Vec<f32>>,
    /// Padded input and, in the flattened layout, the padded-width output.
    scratch: Mutex<[Vec<f32>; 2]>,
}

impl CpuConv2d {
    /// Validates the weights `[out, in, kh, kw]` and bias and packs them for the fastest method
    /// this CPU supports.
    pub fn new(
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Result<Self> {
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        let weight = weight.as_standard_layout();
        let flat = weight.as_slice().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "weights are not contiguous".into(),
        })?;
        let method = Self::pack(&spec, flat, Self::auto(&spec));
        Ok(Self {
            spec,
            method,
            bias: bias.map(|b| b.to_vec()),
            scratch: Mutex::new([Vec::new(), Vec::new()]),
        })
    }

    /// As [`CpuConv2d::new`], but always on the portable im2col + SGEMM method, whatever the
    /// CPU supports (to check that method on machines that would not pick it).
    pub fn portable(
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Result<Self> {
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        let weight = weight.as_standard_layout();
        Ok(Self {
            spec,
            method: Method::Gemm {
                weight: weight.iter().copied().collect(),
            },
            bias: bias.map(|b| b.to_vec()),
            scratch: Mutex::new([Vec::new(), Vec::new()]),
        })
    }

    /// As [`CpuConv2d::new`], on the given method.
    ///
    /// Errors: [`Error::InvalidSpec`] when this CPU or layer cannot use the method (AVX-512F
    /// missing for [`ConvMethod::Direct`] and [`ConvMethod::Winograd`], a horizontal stride
    /// above 1 for the direct method, a stride above 1 or a 1x1 kernel for Winograd).
    pub fn with_method(
        spec: Conv2d,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        method: ConvMethod,
    ) -> Result<Self> {
        check_conv_params(&spec, &weight, bias.as_ref(), "conv2d")?;
        if let Some(reason) = Self::unsupported(&spec, method) {
            return Err(Error::InvalidSpec {
                context: format!("conv2d with method {method}"),
                reason,
            });
        }
        let weight = weight.as_standard_layout();
        let flat = weight.as_slice().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "weights are not contiguous".into(),
        })?;
        Ok(Self {
            spec,
            method: Self::pack(&spec, flat, method),
            bias: bias.map(|b| b.to_vec()),
            scratch: Mutex::new([Vec::new(), Vec::new()]),
        })
    }

    /// Whether `method` can compute `spec` on this CPU ([`CpuConv2d::with_method`] accepts it).
    pub fn supports(spec: &Conv2d, method: ConvMethod) -> bool {
        Self::unsupported(spec, method).is_none()
    }

    /// Why `method` cannot compute `spec` on this CPU, if it cannot.
    fn unsupported(spec: &Conv2d, method: ConvMethod) -> Option<String> {
        let avx512 = avx512();
        match method {
            ConvMethod::Gemm => None,
            ConvMethod::Direct if !avx512 => Some("this CPU lacks AVX-512F".into()),
            ConvMethod::Direct if spec.stride.1 != 1 => {
                Some("the direct method needs horizontal stride 1".into())
            }
            ConvMethod::Direct => None,
            ConvMethod::Winograd(_) if !avx512 => Some("this CPU lacks AVX-512F".into()),
            ConvMethod::Winograd(_) if spec.stride != (1, 1) => {
                Some("Winograd here computes stride 1 only".into())
            }
            ConvMethod::Winograd(_) if spec.kernel == (1, 1) => {
                Some("a 1x1 kernel has nothing for Winograd to save".into())
            }
            ConvMethod::Winograd(_) => None,
            ConvMethod::DirectBf16 if !avx512_bf16() => {
                Some("this CPU lacks AVX-512F with AVX-512 BF16".into())
            }
            ConvMethod::DirectBf16 if spec.stride.1 != 1 => {
                Some("the direct method needs horizontal stride 1".into())
            }
            ConvMethod::DirectBf16 => None,
        }
    }

    /// The fastest method this CPU supports for the layer: Winograd F(4x4, 3x3) for stride-1
    /// kernels of 3x3 and larger (in 3x3 pieces) with enough channels to amortise the
    /// transforms and transformed weights under [`WINOGRAD_MAX_WEIGHT_BYTES`], SGEMM for 1x1
    /// layers (stride 1, no padding), else the direct convolution, else im2col + SGEMM. (A Winograd layer still runs an input with too few
    /// tiles, or with a NaN or an infinity, on the direct method.)
    pub fn auto(spec: &Conv2d) -> ConvMethod {
        let wino = ConvMethod::Winograd(WinogradTile::F4);
        if spec.kernel.0 >= 3
            && spec.kernel.1 >= 3
            && Self::unsupported(spec, wino).is_none()
            && spec.in_channels >= WINOGRAD_MIN_CHANNELS
            && spec.out_channels >= WINOGRAD_MIN_CHANNELS
            && winograd_weight_bytes(spec, WinogradTile::F4) <= WINOGRAD_MAX_WEIGHT_BYTES
        {
            wino
        } else if spec.is_pointwise() {
            // A plain matrix product: the gemm crate's SGEMM, measured faster than the direct
            // kernel on 1x1 layers (`benches/CPU_RESULTS.md`).
            ConvMethod::Gemm
        } else if Self::unsupported(spec, ConvMethod::Direct).is_none() {
            ConvMethod::Direct
        } else {
            ConvMethod::Gemm
        }
    }

    /// The fastest method at `precision`: [`CpuConv2d::auto`] in f32. In bf16,
    /// [`ConvMethod::DirectBf16`] where this CPU and layer support it, except on the 3x3
    /// layers that [`CpuConv2d::auto`] gives Winograd F(4x4, 3x3): its 4x fewer
    /// multiplications match bf16's 2x faster ones there, in f32's accuracy
    /// (`benches/CPU_RESULTS.md`). Larger kernels (fc6's 7x7, where Winograd's 3x3 pieces
    /// waste taps and its transformed weights take 2.7 GB) and 1x1 layers run in bf16.
    pub fn auto_for_precision(spec: &Conv2d, precision: CpuPrecision) -> ConvMethod {
        let f32_choice = Self::auto(spec);
        match precision {
            CpuPrecision::F32 => f32_choice,
            CpuPrecision::Bf16 => match f32_choice {
                ConvMethod::Winograd(_) if spec.kernel == (3, 3) => f32_choice,
                _ if Self::supports(spec, ConvMethod::DirectBf16) => ConvMethod::DirectBf16,
                _ => f32_choice,
            },
        }
    }

    /// The fastest method for a layer whose weights change every step (training): the
    /// direct convolution where this CPU has it, else im2col + SGEMM. Winograd would transform
    /// the weights again after each update.
    pub fn auto_for_training(spec: &Conv2d) -> ConvMethod {
        if Self::unsupported(spec, ConvMethod::Direct).is_none() {
            ConvMethod::Direct
        } else {
            ConvMethod::Gemm
        }
    }

    /// The method the layer runs on.
    pub fn method(&self) -> ConvMethod {
        match &self.method {
            Method::Gemm { .. } => ConvMethod::Gemm,
            #[cfg(target_arch = "x86_64")]
            Method::Direct { .. } => ConvMethod::Direct,
            #[cfg(target_arch = "x86_64")]
            Method::Winograd { wino, .. } => ConvMethod::Winograd(wino.tile),
            #[cfg(target_arch = "x86_64")]
            Method::DirectBf16 { .. } => ConvMethod::DirectBf16,
        }
    }

    /// Bytes of the layer's weights as its method lays them out (Winograd: the transformed
    /// weights plus the direct method's copy for non-finite inputs; bf16: two values per four
    /// bytes), bias excluded.
    pub fn weight_bytes(&self) -> u64 {
        4 * match &self.method {
            Method::Gemm { weight } => weight.len(),
            #[cfg(target_arch = "x86_64")]
            Method::Direct { packed, .. } => packed.len(),
            #[cfg(target_arch = "x86_64")]
            Method::Winograd { wino, packed, .. } => wino.len() + packed.len(),
            #[cfg(target_arch = "x86_64")]
            Method::DirectBf16 { packed, .. } => packed.len(),
        } as u64
    }

    /// Whether the layer runs on the portable im2col + SGEMM method (rather than the direct
    /// AVX-512 convolution or Winograd).
    pub fn is_portable(&self) -> bool {
        matches!(self.method, Method::Gemm { .. })
    }

    /// Replaces the weights and bias (after a training step), packing them as the layer's
    /// method needs without allocating.
    ///
    /// Errors: shapes other than the spec's, or a bias given to a layer without one (or
    /// missing for a layer with one); the layer is unchanged then.
    pub fn set_weights(
        &mut self,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Result<()> {
        check_conv_params(&self.spec, &weight, bias.as_ref(), "conv2d")?;
        if bias.is_some() != self.bias.is_some() {
            return Err(Error::InvalidSpec {
                context: "conv2d".into(),
                reason: "the new bias does not match the layer's (present or absent)".into(),
            });
        }
        self.set_weights_flat(weight.as_standard_layout().as_slice().unwrap_or(&[]), bias)
    }

    /// [`CpuConv2d::set_weights`] from `[out, in, kh, kw]` weights in a slice, unchecked but
    /// for their length.
    pub(crate) fn set_weights_flat(
        &mut self,
        weight: &[f32],
        bias: Option<ArrayView1<f32>>,
    ) -> Result<()> {
        if weight.len() != self.spec.weight_len() {
            return Err(Error::Internal(format!(
                "conv2d weights of {} values for a layer of {}",
                weight.len(),
                self.spec.weight_len()
            )));
        }
        match &mut self.method {
            Method::Gemm { weight: w } => w.copy_from_slice(weight),
            #[cfg(target_arch = "x86_64")]
            Method::Direct { packed, blocks } => pack_direct(&self.spec, weight, blocks, packed),
            #[cfg(target_arch = "x86_64")]
            Method::Winograd {
                wino,
                packed,
                blocks,
            } => {
                pack_direct(&self.spec, weight, blocks, packed);
                wino.set(&self.spec, weight);
            }
            #[cfg(target_arch = "x86_64")]
            Method::DirectBf16 { packed, blocks } => {
                pack_direct_bf16(&self.spec, weight, blocks, packed)
            }
        }
        if let (Some(dst), Some(src)) = (&mut self.bias, bias) {
            for (d, s) in dst.iter_mut().zip(src.iter()) {
                *d = *s;
            }
        }
        Ok(())
    }

    /// Packs `[out, in, kh, kw]` weights for `method` (which [`Self::unsupported`] accepts).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn pack(spec: &Conv2d, weight: &[f32], method: ConvMethod) -> Method {
        #[cfg(target_arch = "x86_64")]
        {
            let direct = || {
                let blocks = split_blocks(spec.out_channels, MAX_MR);
                let mut packed = vec![0.0; weight.len()];
                pack_direct(spec, weight, &blocks, &mut packed);
                (packed, blocks)
            };
            match method {
                ConvMethod::Direct => {
                    let (packed, blocks) = direct();
                    return Method::Direct { packed, blocks };
                }
                ConvMethod::Winograd(tile) => {
                    let (packed, blocks) = direct();
                    return Method::Winograd {
                        wino: winograd::Packed::new(spec, weight, tile),
                        packed,
                        blocks,
                    };
                }
                ConvMethod::DirectBf16 => {
                    let blocks = split_blocks(spec.out_channels, MAX_MR);
                    let taps = spec.kernel.0 * spec.kernel.1;
                    let mut packed =
                        vec![0; spec.out_channels * spec.in_channels.div_ceil(2) * taps];
                    pack_direct_bf16(spec, weight, &blocks, &mut packed);
                    return Method::DirectBf16 { packed, blocks };
                }
                ConvMethod::Gemm => {}
            }
        }
        Method::Gemm {
            weight: weight.to_vec(),
        }
    }

    /// The layer's spec.
    pub fn spec(&self) -> &Conv2d {
        &self.spec
    }

    /// Output shape for an input shape (errors as [`Conv2d::output_shape`]).
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.spec.output_shape(input, "conv2d")
    }

    /// Runs the layer on an NCHW input.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        let out_shape = self.output_shape(shape_of(&input))?;
        // Every element is written by the kernels, so uninitialised memory would do; zeros keep
        // this safe at the cost of one pass of page faults.
        let mut out = Array4::<f32>::zeros(out_shape.dims());
        self.forward_into(input, &mut out)?;
        Ok(out)
    }

    /// Runs the layer on an NCHW input into `output`, which must already have the output shape
    /// (reuse it across calls to avoid allocating).
    pub fn forward_into(&self, input: ArrayView4<f32>, output: &mut Array4<f32>) -> Result<()> {
        let out_shape = self.output_shape(shape_of(&input))?;
        if output.shape() != out_shape.dims() {
            return Err(Error::ShapeMismatch {
                context: "conv2d".into(),
                left_name: "output",
                left: output.shape().to_vec(),
                right_name: "expected output",
                right: out_shape.dims().to_vec(),
            });
        }
        if !output.is_standard_layout() {
            let mut tmp = Array4::<f32>::zeros(out_shape.dims());
            self.forward_into(input, &mut tmp)?;
            output.assign(&tmp);
            return Ok(());
        }
        let input = input.as_standard_layout();
        let x = input.as_slice().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "input is not contiguous".into(),
        })?;
        let in_shape = shape_of(&input.view());
        let y = output.as_slice_mut().ok_or_else(|| Error::InvalidSpec {
            context: "conv2d".into(),
            reason: "output is not contiguous".into(),
        })?;
        // A poisoned lock only means another call panicked mid-way; the scratch is rewritten
        // before use, so it is still fine to take.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // The whole batch in one call: the layer's own scratch grows to the input's size.
        self.forward_slices_within(x, in_shape, y, &mut scratch, usize::MAX)
    }
}

impl CpuConv2d {
    /// Runs the layer on a contiguous NCHW input of shape `is` into a contiguous output of the
    /// output shape, with caller-owned scratch buffers (several layers may share them).
    pub(crate) fn forward_slices(
        &self,
        x: &[f32],
        is: Shape,
        y: &mut [f32],
        scratch: &mut [Vec<f32>; 2],
    ) -> Result<()> {
        self.forward_slices_within(x, is, y, scratch, SCRATCH_BUDGET)
    }

    /// [`CpuConv2d::forward_slices`] padding at most `budget` bytes of input per call of the
    /// direct convolution (whole images, at least one).
    pub(crate) fn forward_slices_within(
        &self,
        x: &[f32],
        is: Shape,
        y: &mut [f32],
        scratch: &mut [Vec<f32>; 2],
        budget: usize,
    ) -> Result<()> {
        let os = self.output_shape(is)?;
        if x.len() != is.len() || y.len() != os.len() {
            return Err(Error::Internal(format!(
                "conv2d on slices of {} and {} values for shapes {is} and {os}",
                x.len(),
                y.len()
            )));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (scratch, budget);
        match &self.method {
            Method::Gemm { weight } => {
                gemm::forward(&self.spec, weight, self.bias.as_deref(), x, is, os, y)
            }
            #[cfg(target_arch = "x86_64")]
            Method::Direct { packed, blocks } | Method::Winograd { packed, blocks, .. } => {
                // Groups of images whose padded copy stays within the budget, so the scratch
                // does not grow with the batch.
                let p = self.spec.padding;
                let (eh, ew) = match &self.method {
                    // Winograd's padded copy reaches past the last tiles' windows.
                    Method::Winograd { wino, .. } => {
                        let extra = wino.tile.alpha() - 3;
                        (extra * self.spec.dilation.0, extra * self.spec.dilation.1)
                    }
                    _ => (0, 0),
                };
                let padded = is.c * (is.h + p.top + p.bottom + eh) * (is.w + p.left + p.right + ew);
                let bias = self.bias.as_deref();
                in_image_groups(x, is, y, os, 4 * padded, budget, |x, is, y, os| {
                    if let Method::Winograd { wino, .. } = &self.method
                        && winograd::forward(&self.spec, wino, bias, x, is, os, y, scratch, None)
                    {
                        return;
                    }
                    direct_avx512::forward(&self.spec, packed, blocks, bias, x, is, os, y, scratch);
                });
            }
            #[cfg(target_arch = "x86_64")]
            Method::DirectBf16 { packed, blocks } => {
                // As above, with two channels per four bytes padded.
                let p = self.spec.padding;
                let padded =
                    is.c.div_ceil(2) * (is.h + p.top + p.bottom) * (is.w + p.left + p.right);
                let bias = self.bias.as_deref();
                in_image_groups(x, is, y, os, 4 * padded, budget, |x, is, y, os| {
                    direct_avx512::forward(&self.spec, packed, blocks, bias, x, is, os, y, scratch)
                });
            }
        }
        Ok(())
    }
}

impl CpuConv2d {
    /// Whether [`CpuConv2d::forward_pooled_slices`] can fuse `pool` into this layer: a
    /// Winograd layer of dilation 1 followed by a 2x2, stride-2 max pool without padding (the
    /// front-end's pool1-pool3).
    pub(crate) fn fuses_pool(&self, pool: &MaxPool2d) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            matches!(self.method, Method::Winograd { .. })
                && self.spec.dilation == (1, 1)
                && pool.kernel == (2, 2)
                && pool.stride == (2, 2)
                && pool.padding == crate::spec::Padding::default()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = pool;
            false
        }
    }

    /// The layer followed by `pool`, fused: the max pool is taken from each Winograd tile's
    /// outputs as they are transformed, so the convolution's output is never stored; `y` is
    /// the pooled output. Returns `Ok(false)`, with `y` to be overwritten, where the layer
    /// does not fuse `pool` ([`CpuConv2d::fuses_pool`]) or this input takes the direct method
    /// (a NaN or an infinity, too few tiles): the caller then runs the two layers one after
    /// the other. The values are the unfused layers' ones.
    pub(crate) fn forward_pooled_slices(
        &self,
        x: &[f32],
        is: Shape,
        pool: &MaxPool2d,
        y: &mut [f32],
        scratch: &mut [Vec<f32>; 2],
    ) -> Result<bool> {
        let os = self.output_shape(is)?;
        let ps = pool.output_shape(os, "max_pool2d")?;
        if x.len() != is.len() || y.len() != ps.len() {
            return Err(Error::Internal(format!(
                "conv2d + max_pool2d on slices of {} and {} values for shapes {is} and {ps}",
                x.len(),
                y.len()
            )));
        }
        #[cfg(target_arch = "x86_64")]
        if let (true, Method::Winograd { wino, .. }) = (self.fuses_pool(pool), &self.method) {
            let bias = self.bias.as_deref();
            return Ok(winograd::forward(
                &self.spec,
                wino,
                bias,
                x,
                is,
                os,
                y,
                scratch,
                Some((ps.h, ps.w)),
            ));
        }
        let _ = scratch;
        Ok(false)
    }
}

/// Runs `f(x, is, y, os)` on groups of whole images of the batch `x` (shape `is`) and its output
/// `y` (shape `os`), each group's padded copy (`image_bytes` per image) within `budget` bytes,
/// at least one image per group.
#[cfg(target_arch = "x86_64")]
fn in_image_groups(
    x: &[f32],
    is: Shape,
    y: &mut [f32],
    os: Shape,
    image_bytes: usize,
    budget: usize,
    mut f: impl FnMut(&[f32], Shape, &mut [f32], Shape),
) {
    let per_call = (budget / image_bytes.max(1)).clamp(1, is.n);
    let (xi, yi) = (is.len() / is.n, os.len() / os.n);
    for n0 in (0..is.n).step_by(per_call) {
        let n = per_call.min(is.n - n0);
        f(
            &x[n0 * xi..(n0 + n) * xi],
            Shape { n, ..is },
            &mut y[n0 * yi..(n0 + n) * yi],
            Shape { n, ..os },
        );
    }
}

/// Packs `[out, in, kh, kw]` weights for the direct method: per block of output channels
/// `(c0, mr)`, `[in][kh*kw][mr]`, blocks one after the other.
#[cfg(target_arch = "x86_64")]
fn pack_direct(spec: &Conv2d, weight: &[f32], blocks: &[(usize, usize)], packed: &mut [f32]) {
    let k = spec.in_channels * spec.kernel.0 * spec.kernel.1;
    let mut i = 0;
    for &(c0, mr) in blocks {
        for kk in 0..k {
            for m in 0..mr {
                packed[i] = weight[(c0 + m) * k + kk];
                i += 1;
            }
        }
    }
}

/// Packs `[out, in, kh, kw]` weights for the bf16 direct method: as [`pack_direct`], with
/// input channels `2k` and `2k + 1` rounded to bf16 in the low and high half of one `u32`
/// (zero past the last channel): per block `[in / 2][kh*kw][mr]`.
#[cfg(target_arch = "x86_64")]
fn pack_direct_bf16(spec: &Conv2d, weight: &[f32], blocks: &[(usize, usize)], packed: &mut [u32]) {
    let (cin, taps) = (spec.in_channels, spec.kernel.0 * spec.kernel.1);
    let bits = |oc: usize, ci: usize, t: usize| {
        if ci < cin {
            direct_avx512::bf16_bits(weight[(oc * cin + ci) * taps + t])
        } else {
            0
        }
    };
    let mut i = 0;
    for &(c0, mr) in blocks {
        for k in 0..cin.div_ceil(2) {
            for t in 0..taps {
                for m in 0..mr {
                    packed[i] = bits(c0 + m, 2 * k, t) | bits(c0 + m, 2 * k + 1, t) << 16;
                    i += 1;
                }
            }
        }
    }
}

/// Whether this CPU has AVX-512F and AVX-512 BF16 (the bf16 direct method needs both).
fn avx512_bf16() -> bool {
    CpuInfo::get().avx512_bf16
}

/// Whether this CPU has AVX-512F (the direct and Winograd methods need it).
fn avx512() -> bool {
    CpuInfo::get().avx512f
}

/// Bytes of a layer's Winograd-transformed weights: `(m+2)^2` values per output channel, input
/// channel and 3x3 piece of the kernel (F(4x4, 3x3): 4x the weights of a 3x3 kernel, 6.6x those
/// of fc6's 7x7).
pub fn winograd_weight_bytes(spec: &Conv2d, tile: WinogradTile) -> u64 {
    let pieces = spec.kernel.0.div_ceil(3) * spec.kernel.1.div_ceil(3);
    let a = (tile.m() + 2) as u64;
    a * a * (spec.out_channels * spec.in_channels * pieces) as u64 * 4
}

/// Most bytes of transformed weights for which [`CpuConv2d::auto`] picks Winograd. Every
/// layer of the presets is under it: conv5's 3x3 take 38 MB, fc6's 7x7 2.7 GB (against 411 MB
/// of weights), which roughly halves the time of a whole network (fc6 is over half of its
/// arithmetic). To keep memory down instead, run on [`ConvMethod::Direct`]
/// ([`crate::plan::CpuPlan::with_method`], `dilated bench --cpu-method direct`).
pub const WINOGRAD_MAX_WEIGHT_BYTES: u64 = 4 << 30;

/// Fewest input and output channels for which [`CpuConv2d::auto`] picks Winograd.
pub const WINOGRAD_MIN_CHANNELS: usize = 32;

/// Bytes of padded input one call of the direct convolution pads at most on the slice path
/// (whole images; at least one).
pub(crate) const SCRATCH_BUDGET: usize = 128 << 20;

/// Splits `n` channels into the fewest blocks of at most `max` channels, sizes differing by at
/// most one.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn split_blocks(n: usize, max: usize) -> Vec<(usize, usize)> {
    let count = n.div_ceil(max);
    let (base, extra) = (n / count, n % count);
    let mut start = 0;
    (0..count)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let b = (start, len);
            start += len;
            b
        })
        .collect()
}

/// Convolution on the CPU's fast path (prepares the weights, then runs once).
pub fn conv2d(
    input: ArrayView4<f32>,
    spec: &Conv2d,
    weight: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
) -> Result<Array4<f32>> {
    CpuConv2d::new(*spec, weight, bias)?.forward(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_channels_evenly() {
        for n in 1..100 {
            let b = split_blocks(n, MAX_MR);
            assert_eq!(b.iter().map(|&(_, l)| l).sum::<usize>(), n);
            assert!(b.iter().all(|&(_, l)| (1..=MAX_MR).contains(&l)));
            assert_eq!(b.len(), n.div_ceil(MAX_MR));
            for w in b.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0);
            }
        }
    }
}
