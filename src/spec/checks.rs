//! Checks of an array's shape and of a layer's parameters against its spec, shared by the CPU
//! reference, the fast CPU path, the GPU ops and network validation.

use ndarray::{ArrayView1, ArrayView4};

use super::{Conv2d, Deconv2d, Shape};
use crate::error::{Error, Result};

/// Shape of an ndarray as a [`Shape`].
pub(crate) fn shape_of(a: &ArrayView4<f32>) -> Shape {
    let d = a.dim();
    Shape::new(d.0, d.1, d.2, d.3)
}

/// Checks a per-channel transposed convolution's weight shape (`[channels, 1, k, k]`).
pub fn check_deconv_weight(spec: &Deconv2d, weight: &ArrayView4<f32>) -> Result<()> {
    if weight.shape() != spec.weight_shape() {
        return Err(Error::ShapeMismatch {
            context: "deconv2d".into(),
            left_name: "weight",
            left: weight.shape().to_vec(),
            right_name: "layer spec [channels, 1, k, k]",
            right: spec.weight_shape().to_vec(),
        });
    }
    Ok(())
}

/// Errors unless two 4-D shapes are equal, naming both.
pub(crate) fn same_shape(
    context: &str,
    left_name: &'static str,
    left: Shape,
    right_name: &'static str,
    right: Shape,
) -> Result<()> {
    if left == right {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            context: context.to_string(),
            left_name,
            left: left.dims().to_vec(),
            right_name,
            right: right.dims().to_vec(),
        })
    }
}

/// Checks a convolution spec and its weight shape (`[out, in, kh, kw]`).
pub(crate) fn check_conv_weight(
    spec: &Conv2d,
    weight: &ArrayView4<f32>,
    context: &str,
) -> Result<()> {
    spec.validate(context)?;
    if weight.shape() != spec.weight_shape() {
        return Err(Error::ShapeMismatch {
            context: context.to_string(),
            left_name: "weight",
            left: weight.shape().to_vec(),
            right_name: "layer spec [out, in, kh, kw]",
            right: spec.weight_shape().to_vec(),
        });
    }
    Ok(())
}

/// Checks weight and bias shapes against a convolution spec.
pub fn check_conv_params(
    spec: &Conv2d,
    weight: &ArrayView4<f32>,
    bias: Option<&ArrayView1<f32>>,
    context: &str,
) -> Result<()> {
    check_conv_weight(spec, weight, context)?;
    match (spec.bias, bias) {
        (true, Some(b)) if b.len() != spec.out_channels => Err(Error::BiasLength {
            context: context.to_string(),
            expected: spec.out_channels,
            actual: b.len(),
        }),
        (true, None) => Err(Error::InvalidSpec {
            context: context.to_string(),
            reason: "the layer has a bias but none was given".into(),
        }),
        (false, Some(_)) => Err(Error::InvalidSpec {
            context: context.to_string(),
            reason: "a bias was given but the layer has none".into(),
        }),
        _ => Ok(()),
    }
}
