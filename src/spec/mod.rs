//! Op specifications and their shape arithmetic.
//!
//! Every op's geometry lives in one spec type that validates itself and knows its output size,
//! so the CPU path, the GPU path and the shader uniforms all derive from the same numbers.

use crate::error::{Error, Result};

mod checks;

pub use checks::{check_conv_params, check_deconv_weight};
pub(crate) use checks::{check_conv_weight, same_shape, shape_of};

/// Padding on each side of a 2-D input, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding {
    /// Rows added above.
    pub top: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding {
    /// The same padding on all four sides.
    pub const fn uniform(p: usize) -> Self {
        Self {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }

    /// Padding given per side.
    pub const fn new(top: usize, left: usize, bottom: usize, right: usize) -> Self {
        Self {
            top,
            left,
            bottom,
            right,
        }
    }
}

/// Shape of an NCHW tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape {
    /// A shape from its four dimensions.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }

    /// The shape as `[n, c, h, w]`.
    pub const fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// True if any dimension is zero.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes as f32.
    pub const fn bytes(&self) -> u64 {
        self.len() as u64 * 4
    }

    /// Elements in one channel plane (`h * w`).
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Errors unless every dimension is at least 1.
    pub fn check_nonzero(&self, context: &str) -> Result<()> {
        for (v, what) in [
            (self.n, "batch size"),
            (self.c, "channel count"),
            (self.h, "height"),
            (self.w, "width"),
        ] {
            if v == 0 {
                return Err(Error::ZeroDimension {
                    context: context.to_string(),
                    what,
                });
            }
        }
        Ok(())
    }
}

impl From<[usize; 4]> for Shape {
    fn from(d: [usize; 4]) -> Self {
        Self::new(d[0], d[1], d[2], d[3])
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}

/// Output size of a sliding window along one axis: `floor((size + pads - extent) / stride) + 1`,
/// or `None` when the extent does not fit in the padded input.
fn window_out(size: usize, pads: usize, extent: usize, stride: usize) -> Option<usize> {
    let padded = size + pads;
    (padded >= extent).then(|| (padded - extent) / stride + 1)
}

/// A 2-D convolution: kernel size, dilation, padding and stride per axis, channel counts,
/// optional bias and optionally a fused ReLU.
///
/// Weights are `[out_channels, in_channels, kernel_h, kernel_w]`, bias `[out_channels]`
/// (Caffe's and PyTorch's layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size (height, width).
    pub kernel: (usize, usize),
    /// Dilation (vertical, horizontal); 1 is an ordinary convolution.
    pub dilation: (usize, usize),
    /// Stride (vertical, horizontal).
    pub stride: (usize, usize),
    /// Zero padding per side.
    pub padding: Padding,
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// Whether a ReLU is fused on the output.
    pub relu: bool,
}

impl Conv2d {
    /// A square `k x k` convolution, stride 1, dilation 1, no padding, with bias, no ReLU.
    pub const fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: (k, k),
            dilation: (1, 1),
            stride: (1, 1),
            padding: Padding::uniform(0),
            bias: true,
            relu: false,
        }
    }

    /// Sets a non-square kernel (height, width).
    pub const fn kernel(mut self, kh: usize, kw: usize) -> Self {
        self.kernel = (kh, kw);
        self
    }

    /// Sets the same dilation on both axes.
    pub const fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }

    /// Sets dilation per axis (vertical, horizontal).
    pub const fn dilation_hw(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }

    /// Sets the same stride on both axes.
    pub const fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }

    /// Sets stride per axis (vertical, horizontal).
    pub const fn stride_hw(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }

    /// Sets the same padding on all sides.
    pub const fn pad(mut self, p: usize) -> Self {
        self.padding = Padding::uniform(p);
        self
    }

    /// Sets padding per side.
    pub const fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Enables or disables the bias.
    pub const fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Enables or disables the fused ReLU.
    pub const fn with_relu(mut self, relu: bool) -> Self {
        self.relu = relu;
        self
    }

    /// Effective kernel extent after dilation: `(k - 1) * d + 1` per axis.
    pub const fn extent(&self) -> (usize, usize) {
        (
            (self.kernel.0.saturating_sub(1)) * self.dilation.0 + 1,
            (self.kernel.1.saturating_sub(1)) * self.dilation.1 + 1,
        )
    }

    /// Weight shape `[out, in, kh, kw]`.
    pub const fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel.0,
            self.kernel.1,
        ]
    }

    /// Number of weights (without bias).
    pub const fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// Parameters: weights plus bias.
    pub const fn params(&self) -> usize {
        self.weight_len() + if self.bias { self.out_channels } else { 0 }
    }

    /// True for a 1x1, stride-1, unpadded convolution (a matrix product).
    pub const fn is_pointwise(&self) -> bool {
        self.kernel.0 == 1
            && self.kernel.1 == 1
            && self.stride.0 == 1
            && self.stride.1 == 1
            && self.padding.top == 0
            && self.padding.left == 0
            && self.padding.bottom == 0
            && self.padding.right == 0
    }

    /// Checks that every size, stride and dilation is positive.
    pub fn validate(&self, context: &str) -> Result<()> {
        for (v, what) in [
            (self.in_channels, "input channel count"),
            (self.out_channels, "output channel count"),
            (self.kernel.0, "kernel height"),
            (self.kernel.1, "kernel width"),
            (self.dilation.0, "vertical dilation"),
            (self.dilation.1, "horizontal dilation"),
            (self.stride.0, "vertical stride"),
            (self.stride.1, "horizontal stride"),
        ] {
            if v == 0 {
                return Err(Error::ZeroDimension {
                    context: context.to_string(),
                    what,
                });
            }
        }
        Ok(())
    }

    /// Output shape for an input shape, checking channels and that the kernel fits.
    pub fn output_shape(&self, input: Shape, context: &str) -> Result<Shape> {
        self.validate(context)?;
        input.check_nonzero(context)?;
        if input.c != self.in_channels {
            return Err(Error::ShapeMismatch {
                context: context.to_string(),
                left_name: "input",
                left: input.dims().to_vec(),
                right_name: "weight",
                right: self.weight_shape().to_vec(),
            });
        }
        let (eh, ew) = self.extent();
        let ph = input.h + self.padding.top + self.padding.bottom;
        let pw = input.w + self.padding.left + self.padding.right;
        match (
            window_out(
                input.h,
                self.padding.top + self.padding.bottom,
                eh,
                self.stride.0,
            ),
            window_out(
                input.w,
                self.padding.left + self.padding.right,
                ew,
                self.stride.1,
            ),
        ) {
            (Some(h), Some(w)) => Ok(Shape::new(input.n, self.out_channels, h, w)),
            _ => Err(Error::KernelLargerThanInput {
                context: context.to_string(),
                kernel: (eh, ew),
                padded_input: (ph, pw),
            }),
        }
    }

    /// Floating-point operations (multiply-add counted as 2) for an output shape.
    pub const fn flops(&self, output: Shape) -> u64 {
        2 * (output.len() as u64) * (self.in_channels * self.kernel.0 * self.kernel.1) as u64
    }
}

/// Max pooling with kernel, stride and padding per axis and Caffe's ceil rounding of the
/// output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    /// Window size (height, width).
    pub kernel: (usize, usize),
    /// Stride (vertical, horizontal).
    pub stride: (usize, usize),
    /// Padding per side; padded positions never win.
    pub padding: Padding,
    /// Round the output size up (Caffe) instead of down (PyTorch's default).
    pub ceil_mode: bool,
}

impl MaxPool2d {
    /// Caffe's pooling: `k x k` window, stride `s`, no padding, ceil rounding.
    pub const fn caffe(k: usize, s: usize) -> Self {
        Self {
            kernel: (k, k),
            stride: (s, s),
            padding: Padding::uniform(0),
            ceil_mode: true,
        }
    }

    /// Sets padding per side.
    pub const fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Sets floor (false) or ceil (true) rounding.
    pub const fn ceil_mode(mut self, ceil: bool) -> Self {
        self.ceil_mode = ceil;
        self
    }

    /// Output size along one axis, Caffe's rule: `ceil((size + pads - k) / s) + 1`, minus one
    /// when the last window would start inside the far padding (or past the input).
    fn axis_out(
        &self,
        size: usize,
        pad_lo: usize,
        pad_hi: usize,
        k: usize,
        s: usize,
    ) -> Option<usize> {
        let padded = size + pad_lo + pad_hi;
        if padded < k {
            return None;
        }
        let span = padded - k;
        let mut out = if self.ceil_mode {
            span.div_ceil(s)
        } else {
            span / s
        } + 1;
        // The last window must start inside the input or the near padding.
        if (out - 1) * s >= size + pad_lo {
            out -= 1;
        }
        Some(out)
    }

    /// Checks kernel and stride are positive and padding is smaller than the kernel.
    pub fn validate(&self, context: &str) -> Result<()> {
        for (v, what) in [
            (self.kernel.0, "pool height"),
            (self.kernel.1, "pool width"),
            (self.stride.0, "vertical stride"),
            (self.stride.1, "horizontal stride"),
        ] {
            if v == 0 {
                return Err(Error::ZeroDimension {
                    context: context.to_string(),
                    what,
                });
            }
        }
        let p = self.padding;
        if p.top.max(p.bottom) >= self.kernel.0 || p.left.max(p.right) >= self.kernel.1 {
            return Err(Error::InvalidSpec {
                context: context.to_string(),
                reason: format!(
                    "padding {p:?} must be smaller than the pooling window {:?}",
                    self.kernel
                ),
            });
        }
        Ok(())
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, input: Shape, context: &str) -> Result<Shape> {
        self.validate(context)?;
        input.check_nonzero(context)?;
        let p = self.padding;
        match (
            self.axis_out(input.h, p.top, p.bottom, self.kernel.0, self.stride.0),
            self.axis_out(input.w, p.left, p.right, self.kernel.1, self.stride.1),
        ) {
            (Some(h), Some(w)) if h > 0 && w > 0 => Ok(Shape::new(input.n, input.c, h, w)),
            _ => Err(Error::KernelLargerThanInput {
                context: context.to_string(),
                kernel: self.kernel,
                padded_input: (input.h + p.top + p.bottom, input.w + p.left + p.right),
            }),
        }
    }
}

/// A per-channel ("one group per channel") transposed convolution without bias, as Cityscapes'
/// in-network upsampling uses it (kernel 16, stride 8, padding 4, fixed bilinear weights).
///
/// Weights are `[channels, 1, kernel, kernel]`. Output size: `(H - 1) * stride - 2 * pad + kernel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Deconv2d {
    /// Channels (= groups).
    pub channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride (upsampling factor).
    pub stride: usize,
    /// Padding cropped from each side of the full output.
    pub pad: usize,
}

impl Deconv2d {
    /// Caffe's bilinear upsampling by `factor`: kernel `2f - f % 2`, stride `f`,
    /// padding `ceil((f - 1) / 2)`.
    pub const fn bilinear(channels: usize, factor: usize) -> Self {
        Self {
            channels,
            kernel: 2 * factor - factor % 2,
            stride: factor,
            pad: factor.saturating_sub(1).div_ceil(2),
        }
    }

    /// Weight shape `[channels, 1, kernel, kernel]`.
    pub const fn weight_shape(&self) -> [usize; 4] {
        [self.channels, 1, self.kernel, self.kernel]
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, input: Shape, context: &str) -> Result<Shape> {
        for (v, what) in [
            (self.channels, "channel count"),
            (self.kernel, "kernel size"),
            (self.stride, "stride"),
        ] {
            if v == 0 {
                return Err(Error::ZeroDimension {
                    context: context.to_string(),
                    what,
                });
            }
        }
        input.check_nonzero(context)?;
        if input.c != self.channels {
            return Err(Error::ShapeMismatch {
                context: context.to_string(),
                left_name: "input",
                left: input.dims().to_vec(),
                right_name: "weight",
                right: self.weight_shape().to_vec(),
            });
        }
        let full = |x: usize| (x - 1) * self.stride + self.kernel;
        if full(input.h) <= 2 * self.pad || full(input.w) <= 2 * self.pad {
            return Err(Error::InvalidSpec {
                context: context.to_string(),
                reason: format!("padding {} crops away the whole output", self.pad),
            });
        }
        Ok(Shape::new(
            input.n,
            input.c,
            full(input.h) - 2 * self.pad,
            full(input.w) - 2 * self.pad,
        ))
    }

    /// Caffe's bilinear filler for this kernel: `(1 - |x / f - c|) * (1 - |y / f - c|)` with
    /// `f = ceil(k / 2)`, `c = (2f - 1 - f % 2) / (2f)`, the same for every channel.
    pub fn bilinear_weights(&self) -> Vec<f32> {
        let f = self.kernel.div_ceil(2) as f64;
        let c = (2.0 * f - 1.0 - f % 2.0) / (2.0 * f);
        let mut w = Vec::with_capacity(self.channels * self.kernel * self.kernel);
        for _ in 0..self.channels {
            for y in 0..self.kernel {
                for x in 0..self.kernel {
                    let wy = 1.0 - (y as f64 / f - c).abs();
                    let wx = 1.0 - (x as f64 / f - c).abs();
                    w.push((wy * wx) as f32);
                }
            }
        }
        w
    }

    /// Floating-point operations for an output shape (multiply-add = 2): each input pixel is
    /// spread over `kernel^2` outputs.
    pub const fn flops(&self, input: Shape) -> u64 {
        2 * input.len() as u64 * (self.kernel * self.kernel) as u64
    }
}

/// Bilinear zoom by an integer factor, sampling the input at `(y / f, x / f)` with no half-pixel
/// offset (the reference predictor's `interp_map`); the last row and column are repeated at the
/// far edge. Output size `H * f x W * f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zoom {
    /// The factor.
    pub factor: usize,
}

impl Zoom {
    /// Output shape for an input shape.
    pub fn output_shape(&self, input: Shape, context: &str) -> Result<Shape> {
        if self.factor == 0 {
            return Err(Error::ZeroDimension {
                context: context.to_string(),
                what: "zoom factor",
            });
        }
        input.check_nonzero(context)?;
        Ok(Shape::new(
            input.n,
            input.c,
            input.h * self.factor,
            input.w * self.factor,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_output_size_follows_the_formula() {
        // H_out = H + 2p - l(k-1) for stride 1.
        let c = Conv2d::new(3, 8, 3).dilation(4).pad(4);
        let s = c.output_shape(Shape::new(1, 3, 20, 17), "t").unwrap();
        assert_eq!((s.h, s.w), (20, 17));
        let c = Conv2d::new(3, 8, 3).dilation(2);
        let s = c.output_shape(Shape::new(2, 3, 20, 17), "t").unwrap();
        assert_eq!(s, Shape::new(2, 8, 16, 13));
        let c = Conv2d::new(1, 1, 3).stride(2);
        assert_eq!(c.output_shape(Shape::new(1, 1, 8, 9), "t").unwrap().h, 3);
    }

    #[test]
    fn cityscapes_deconvolution_upsamples_by_eight() {
        let d = Deconv2d::bilinear(19, 8);
        assert_eq!((d.kernel, d.stride, d.pad), (16, 8, 4));
        let s = d.output_shape(Shape::new(1, 19, 128, 128), "up").unwrap();
        assert_eq!((s.h, s.w), (1024, 1024));
        // The bilinear filler of a 16-tap kernel is symmetric with a peak under 1.
        let w = d.bilinear_weights();
        assert_eq!(w[0], w[15]);
        assert!((w[7 * 16 + 7] - (1.0 - 1.0 / 16.0f32).powi(2)).abs() < 1e-6);
    }

    #[test]
    fn caffe_pool_rounds_up() {
        let p = MaxPool2d::caffe(2, 2);
        for (h, want) in [(2usize, 1usize), (3, 2), (898, 449), (447, 224), (221, 111)] {
            let s = p.output_shape(Shape::new(1, 1, h, h), "pool").unwrap();
            assert_eq!(s.h, want, "input {h}");
            // NETWORK.md: ceil((H - 2) / 2) + 1
            if h >= 2 {
                assert_eq!(s.h, (h - 2).div_ceil(2) + 1);
            }
        }
        let floor = MaxPool2d::caffe(2, 2).ceil_mode(false);
        assert_eq!(
            floor.output_shape(Shape::new(1, 1, 7, 7), "p").unwrap().h,
            3
        );
    }
}
