//! Caffe's SGD step with momentum on the GPU: `v = momentum * v + lr * lr_mult * (grad +
//! weight_decay * decay_mult * w); w = w - v`, with a convolution's weights at `lr_mult` 1,
//! `decay_mult` 1 and its bias at 2 and 0 (as the authors' `network.py` sets them).

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::dispatch::{Dispatch, expect_shape};
use crate::gpu::ops::conv::GpuConv2d;
use crate::gpu::ops::train::ConvGrads;
use crate::gpu::shader::{Kernel, uniform};
use crate::spec::Shape;

uniform! {
    /// Uniform of `shaders/grad/sgd.wgsl`.
    pub(crate) struct SgdParams {
        total: u32, momentum: f32, rate: f32, decay: f32,
        grad_base: u32, v_base: u32, param_base: u32, pad0: u32,
    }
}

/// The solver's settings for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    /// Learning rate of this iteration (after the policy).
    pub lr: f32,
    /// Momentum.
    pub momentum: f32,
    /// Weight decay.
    pub weight_decay: f32,
}

impl GpuConv2d {
    /// Records one SGD step on the layer's weights and bias (in place) from `grads`, keeping
    /// the momentum in `velocity` (both shaped by [`ConvGrads::zeros`]), over ranges of
    /// elements that fit one binding (fc6's 411 MB of weights in several).
    pub fn prepare_sgd_step(
        &self,
        gpu: &Gpu,
        grads: &ConvGrads,
        velocity: &ConvGrads,
        hyper: &SgdHyper,
    ) -> Result<Vec<Dispatch>> {
        let s = &self.spec;
        let len = s.weight_len();
        expect_shape("sgd", grads.weight.shape(), velocity.weight.shape())?;
        if grads.weight.shape().len() != len {
            return Err(Error::InvalidSpec {
                context: "sgd".into(),
                reason: "the gradients are not this layer's".into(),
            });
        }
        let max = gpu.max_binding_elems();
        // One dispatch per range of elements that fits one binding.
        let step =
            |param: &wgpu::Buffer, grad: &wgpu::Buffer, v: &wgpu::Buffer, len, mult, decay| {
                (0..len)
                    .step_by(max)
                    .map(|start| {
                        let n = max.min(len - start);
                        let (gw, vw, pw) = (
                            gpu.window(grad, start, n),
                            gpu.window(v, start, n),
                            gpu.window(param, start, n),
                        );
                        gpu.linear_dispatch(
                            Kernel::Sgd,
                            &SgdParams {
                                total: n as u32,
                                momentum: hyper.momentum,
                                rate: hyper.lr * mult,
                                decay: hyper.weight_decay * decay,
                                grad_base: gw.base,
                                v_base: vw.base,
                                param_base: pw.base,
                                pad0: 0,
                            },
                            &[(grad, gw), (v, vw), (param, pw)],
                            n,
                        )
                    })
                    .collect::<Result<Vec<_>>>()
            };
        let mut dispatches = step(
            &self.weight,
            &grads.weight.buffer,
            &velocity.weight.buffer,
            len,
            1.0,
            1.0,
        )?;
        match (&grads.bias, &velocity.bias, s.bias) {
            (Some(g), Some(v), true) => dispatches.extend({
                let bias = Shape::new(1, s.out_channels, 1, 1);
                expect_shape("sgd bias gradient", g.shape(), bias)?;
                expect_shape("sgd bias momentum", v.shape(), bias)?;
                step(&self.bias, &g.buffer, &v.buffer, s.out_channels, 2.0, 0.0)?
            }),
            (None, None, false) => {}
            _ => {
                return Err(Error::InvalidSpec {
                    context: "sgd".into(),
                    reason: "the gradients' bias does not match the layer's".into(),
                });
            }
        }
        Ok(dispatches)
    }

    /// Runs one SGD step (see [`GpuConv2d::prepare_sgd_step`]).
    pub fn sgd_step(
        &self,
        gpu: &Gpu,
        grads: &ConvGrads,
        velocity: &ConvGrads,
        hyper: &SgdHyper,
    ) -> Result<()> {
        gpu.run(&self.prepare_sgd_step(gpu, grads, velocity, hyper)?)
    }
}
