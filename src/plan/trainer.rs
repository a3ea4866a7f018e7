//! Training a network of convolutions on the GPU (the context module, trained from the
//! identity initialisation on cached front-end scores): a forward pass that keeps every
//! layer's output, Caffe's softmax cross-entropy over the last layer's scores, the backward
//! pass through every convolution and its fused ReLU, and Caffe's SGD step, recorded once and
//! run as one submission per iteration.

use ndarray::{ArrayView3, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::layer::named_after;
use crate::gpu::ops::train::softmax_loss::mean_loss;
use crate::gpu::{
    ConvAlgorithm, ConvGrads, Dispatch, Gpu, GpuConv2d, GpuLayer, GpuReluGrad, GpuSoftmaxLoss,
    GpuTensor, Io, SgdHyper,
};
use crate::net::{Network, Op};
use crate::spec::Shape;
use crate::weights::LayerWeights;

/// One convolution of the network with what its training keeps on the GPU.
struct TrainLayer {
    name: String,
    conv: GpuConv2d,
    /// The layer's output (after its ReLU), kept for the backward pass.
    output: GpuTensor,
    /// `dL/d output`.
    grad_output: GpuTensor,
    /// `dL/d output` before the fused ReLU (layers with a ReLU only).
    grad_pre_relu: Option<GpuTensor>,
    grads: ConvGrads,
    velocity: ConvGrads,
}

/// What one training iteration measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch's non-ignored pixels, before the update.
    pub loss: f64,
    /// Non-ignored pixels in the batch.
    pub valid_pixels: usize,
}

/// A network of convolutions (each with or without a fused ReLU) trained on the GPU at one
/// batch shape.
pub struct GpuTrainer<'g> {
    gpu: &'g Gpu,
    input: GpuTensor,
    labels: GpuTensor,
    losses: GpuTensor,
    layers: Vec<TrainLayer>,
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    loss: GpuSoftmaxLoss,
    /// The loss dispatch for a batch of this many non-ignored pixels (its scale), re-recorded
    /// only when the count changes.
    loss_dispatch: Option<(usize, Dispatch)>,
    /// The SGD dispatches for these settings, re-recorded only when they change (each
    /// iteration under a `step` or `poly` learning-rate policy, once under `fixed`).
    update: Option<(SgdHyper, Vec<Dispatch>)>,
}

impl<'g> GpuTrainer<'g> {
    /// Uploads `network`'s weights and records its passes for batches of `input_shape`. Every
    /// layer must be a convolution; a final softmax is the loss's and is skipped.
    pub fn new(gpu: &'g Gpu, network: &Network, input_shape: Shape) -> Result<Self> {
        let shapes = network.shapes(input_shape)?;
        let mut layers = Vec::new();
        for (i, (layer, &shape)) in network.layers().iter().zip(&shapes).enumerate() {
            let named = |e| named_after(&layer.name, e);
            match &layer.op {
                Op::Conv { spec, weight, bias } => {
                    let conv =
                        GpuConv2d::new(gpu, *spec, weight.view(), bias.as_ref().map(|b| b.view()))
                            .map_err(named)?
                            .with_algorithm(ConvAlgorithm::Auto);
                    layers.push(TrainLayer {
                        name: layer.name.clone(),
                        output: gpu.empty(shape).map_err(named)?,
                        grad_output: gpu.empty(shape).map_err(named)?,
                        grad_pre_relu: if spec.relu {
                            Some(gpu.empty(shape).map_err(named)?)
                        } else {
                            None
                        },
                        grads: ConvGrads::zeros(gpu, &conv).map_err(named)?,
                        velocity: ConvGrads::zeros(gpu, &conv).map_err(named)?,
                        conv,
                    });
                }
                Op::Softmax if i + 1 == shapes.len() => {}
                other => {
                    return Err(Error::Layer {
                        layer: layer.name.clone(),
                        reason: format!(
                            "training on the GPU takes convolutions only, not {}",
                            other.kind()
                        ),
                    });
                }
            }
        }
        let Some(last) = layers.last() else {
            return Err(Error::InvalidSpec {
                context: network.name().into(),
                reason: "a network to train needs at least one convolution".into(),
            });
        };
        let scores = last.output.shape();
        let pixels = Shape { c: 1, ..scores };
        let input = gpu.empty(input_shape)?;
        let mut forward = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let src = if i == 0 {
                &input
            } else {
                &layers[i - 1].output
            };
            let io = Io::tensors(src, &l.output);
            forward.extend(
                l.conv
                    .prepare(gpu, &io)
                    .map_err(|e| named_after(&l.name, e))?,
            );
        }
        let mut backward = Vec::new();
        for (i, l) in layers.iter().enumerate().rev() {
            let named = |e| named_after(&l.name, e);
            let grad = match &l.grad_pre_relu {
                Some(pre) => {
                    backward.extend(
                        GpuReluGrad
                            .prepare(gpu, &l.grad_output, &l.output, pre)
                            .map_err(named)?,
                    );
                    pre
                }
                None => &l.grad_output,
            };
            let src = if i == 0 {
                &input
            } else {
                &layers[i - 1].output
            };
            backward.extend(
                l.conv
                    .prepare_grad_params(gpu, src, grad, &l.grads)
                    .map_err(named)?,
            );
            if i > 0 {
                backward.extend(
                    l.conv
                        .prepare_grad_input(gpu, grad, &layers[i - 1].grad_output)
                        .map_err(named)?,
                );
            }
        }
        Ok(Self {
            gpu,
            labels: gpu.empty(pixels)?,
            losses: gpu.empty(pixels)?,
            input,
            layers,
            forward,
            backward,
            loss: GpuSoftmaxLoss::default(),
            loss_dispatch: None,
            update: None,
        })
    }

    /// The batch shape the trainer was built for.
    pub fn input_shape(&self) -> Shape {
        self.input.shape()
    }

    /// One iteration on a batch `x` with `labels` `[n, h, w]` at the scores' resolution
    /// (class ids, 255 ignored): forward, loss, backward, then the SGD step with `hyper`.
    /// The loss is that of the weights before the step.
    pub fn step(
        &mut self,
        x: ArrayView4<f32>,
        labels: ArrayView3<u32>,
        hyper: &SgdHyper,
    ) -> Result<StepStats> {
        let gpu = self.gpu;
        let d = x.dim();
        crate::gpu::dispatch::expect_shape(
            "training batch",
            Shape::new(d.0, d.1, d.2, d.3),
            self.input.shape(),
        )?;
        let scores = &self.layers[self.layers.len() - 1];
        let valid = self.loss.valid_pixels(scores.output.shape(), labels)?;
        gpu.write_tensor(&self.input, x)?;
        let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l)).collect();
        gpu.write_f32(&self.labels.buffer, 0, &bits)?;
        if self.loss_dispatch.as_ref().is_none_or(|(v, _)| *v != valid) {
            let dispatch = self.loss.prepare(
                gpu,
                &scores.output,
                &self.labels,
                valid,
                &scores.grad_output,
                &self.losses,
            )?;
            self.loss_dispatch = Some((valid, dispatch));
        }
        if self.update.as_ref().is_none_or(|(h, _)| h != hyper) {
            let mut update = Vec::new();
            for l in &self.layers {
                update.extend(
                    l.conv
                        .prepare_sgd_step(gpu, &l.grads, &l.velocity, hyper)
                        .map_err(|e| named_after(&l.name, e))?,
                );
            }
            self.update = Some((*hyper, update));
        }
        let (Some((_, loss)), Some((_, update))) = (&self.loss_dispatch, &self.update) else {
            return Err(Error::Internal("training dispatches not recorded".into()));
        };
        let mut commands = Vec::with_capacity(self.forward.len() + self.backward.len() + 1);
        commands.extend(self.forward.iter());
        commands.push(loss);
        commands.extend(self.backward.iter());
        commands.extend(update.iter());
        gpu.run_all(&commands)?;
        Ok(StepStats {
            loss: mean_loss(gpu, &self.losses, valid)?,
            valid_pixels: valid,
        })
    }

    /// The gradients of the last step, by layer: weights `[out, in, kh, kw]` and bias.
    pub fn gradients(&self) -> Result<Vec<(String, LayerWeights)>> {
        self.layers
            .iter()
            .map(|l| {
                let (w, b) = l.grads.download(self.gpu)?;
                Ok((l.name.clone(), LayerWeights::new(&l.name, w, b)?))
            })
            .collect()
    }

    /// The momentum buffers, by layer, in the layout of the weights (`[out, in, kh, kw]`).
    pub fn momentum(&self) -> Result<Vec<(String, LayerWeights)>> {
        self.layers
            .iter()
            .map(|l| {
                let (w, b) = l.velocity.download(self.gpu)?;
                Ok((l.name.clone(), LayerWeights::new(&l.name, w, b)?))
            })
            .collect()
    }

    /// Replaces a layer's momentum (to resume a run); shapes must be the layer's.
    pub fn set_momentum(&self, layer: &str, momentum: &LayerWeights) -> Result<()> {
        let l = self
            .layers
            .iter()
            .find(|l| l.name == layer)
            .ok_or_else(|| Error::Layer {
                layer: layer.to_string(),
                reason: "no such convolution in the trained network".into(),
            })?;
        l.velocity.upload(self.gpu, momentum)
    }

    /// Writes the current weights into `network` (the one the trainer was built from).
    pub fn download_into(&self, network: &mut Network) -> Result<()> {
        for l in &self.layers {
            let (w, b) = l.conv.download_params(self.gpu)?;
            network.set_weights(&l.name, w, b)?;
        }
        Ok(())
    }
}
