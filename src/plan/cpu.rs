//! A network prepared for the CPU: every op on the fast path (`cpu::fast`), convolutions with
//! their weights laid out once; only the bilinear zoom, which follows the networks rather than
//! belonging to them, comes from the reference.

use std::sync::Mutex;

use web_time::{Duration, Instant};

use ndarray::{Array4, ArrayView4};

use crate::cpu::fast::{self, ConvMethod, CpuConv2d, CpuPrecision};
use crate::cpu::reference;
use crate::error::{Error, Result};
use crate::net::{Network, Op};
use crate::spec::{Conv2d, Shape};
use crate::timing::LayerTimes;

enum Step {
    Conv(CpuConv2d),
    Other(Op),
}

/// Buffers of one pass: two activations (ping-pong) and the convolutions' scratch.
#[derive(Default)]
struct Buffers {
    activations: [Vec<f32>; 2],
    scratch: [Vec<f32>; 2],
}

/// A network ready to run on the CPU (any input size the network accepts).
///
/// A pass runs layer to layer between two activation buffers, with ReLU layers in place and a
/// 2x2 max pool after a Winograd convolution taken from the tiles' outputs (the front-end's
/// pool1-pool3: the unpooled output is never stored; its time counts as the convolution's); the
/// buffers stay with the plan for the next pass (one set per pass running at once), so a
/// pass writes into memory it has touched before instead of faulting in fresh pages for
/// every layer's output (on a 900x900 VOC pass, 0.4 GB for conv1_1's alone). They hold two
/// activations of the largest layer output ([`CpuPlan::buffer_bytes`]) until
/// [`CpuPlan::release_buffers`] or the plan is dropped.
pub struct CpuPlan {
    steps: Vec<(String, Step)>,
    network: Network,
    /// Buffers of earlier passes, one set per pass running at once.
    buffers: Mutex<Vec<Buffers>>,
}

impl CpuPlan {
    /// Prepares every layer of `network`, each convolution on the fastest method this CPU
    /// has for it ([`CpuConv2d::auto`]).
    pub fn new(network: &Network) -> Result<Self> {
        Self::with_method(network, None)
    }

    /// As [`CpuPlan::new`], with every convolution that `method` can compute on it (the others
    /// on their automatic choice); `None` is [`CpuPlan::new`]. To compare the methods on whole
    /// networks.
    pub fn with_method(network: &Network, method: Option<ConvMethod>) -> Result<Self> {
        Self::build(network, |spec| match method {
            Some(m) if CpuConv2d::supports(spec, m) => m,
            _ => CpuConv2d::auto(spec),
        })
    }

    /// As [`CpuPlan::new`] at `precision`: each convolution on
    /// [`CpuConv2d::auto_for_precision`]'s choice ([`CpuPrecision::F32`] is [`CpuPlan::new`]).
    ///
    /// Errors: [`Error::InvalidSpec`] when this CPU cannot compute at `precision`
    /// ([`CpuPrecision::is_available`]).
    pub fn with_precision(network: &Network, precision: CpuPrecision) -> Result<Self> {
        if !precision.is_available() {
            return Err(Error::InvalidSpec {
                context: format!("CPU precision {precision}"),
                reason: "this CPU lacks AVX-512F with AVX-512 BF16 (vdpbf16ps)".into(),
            });
        }
        Self::build(network, |spec| {
            CpuConv2d::auto_for_precision(spec, precision)
        })
    }

    /// Prepares every layer, each convolution on `method(spec)` (one the layer supports).
    fn build(network: &Network, method: impl Fn(&Conv2d) -> ConvMethod) -> Result<Self> {
        let mut steps = Vec::with_capacity(network.layers().len());
        for l in network.layers() {
            let step = match &l.op {
                Op::Conv { spec, weight, bias } => {
                    let (w, b) = (weight.view(), bias.as_ref().map(|b| b.view()));
                    Step::Conv(CpuConv2d::with_method(*spec, w, b, method(spec))?)
                }
                other => Step::Other(other.clone()),
            };
            steps.push((l.name.clone(), step));
        }
        Ok(Self {
            steps,
            network: network.clone(),
            buffers: Mutex::new(Vec::new()),
        })
    }

    /// Each convolution's name and method, in order.
    pub fn conv_methods(&self) -> Vec<(&str, ConvMethod)> {
        self.steps
            .iter()
            .filter_map(|(name, step)| match step {
                Step::Conv(c) => Some((name.as_str(), c.method())),
                Step::Other(_) => None,
            })
            .collect()
    }

    /// Bytes of the convolutions' weights as their methods lay them out
    /// ([`CpuConv2d::weight_bytes`]).
    pub fn weight_bytes(&self) -> u64 {
        self.steps
            .iter()
            .map(|(_, step)| match step {
                Step::Conv(c) => c.weight_bytes(),
                Step::Other(_) => 0,
            })
            .sum()
    }

    /// Bytes of the buffers earlier passes left with the plan for the next ones (two
    /// activations of the largest layer output and the convolutions' scratch per pass that
    /// ran at once).
    pub fn buffer_bytes(&self) -> u64 {
        let sets = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        sets.iter()
            .flat_map(|b| b.activations.iter().chain(&b.scratch))
            .map(|v| 4 * v.len() as u64)
            .sum()
    }

    /// Frees the buffers kept for later passes ([`CpuPlan::buffer_bytes`]); the next pass
    /// allocates them again.
    pub fn release_buffers(&self) {
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Runs the network.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        Ok(self.run(input, false)?.0)
    }

    /// Runs the network and times every layer on the host.
    pub fn forward_profiled(&self, input: ArrayView4<f32>) -> Result<(Array4<f32>, LayerTimes)> {
        self.run(input, true)
    }

    /// Runs the first `layers` layers of the network (all of them when `layers` is larger):
    /// e.g. all but a final softmax, for the scores before it.
    pub fn forward_prefix(&self, input: ArrayView4<f32>, layers: usize) -> Result<Array4<f32>> {
        Ok(self.run_prefix(input, layers, false)?.0)
    }

    fn run(&self, input: ArrayView4<f32>, timed: bool) -> Result<(Array4<f32>, LayerTimes)> {
        self.run_prefix(input, usize::MAX, timed)
    }

    fn run_prefix(
        &self,
        input: ArrayView4<f32>,
        layers: usize,
        timed: bool,
    ) -> Result<(Array4<f32>, LayerTimes)> {
        let d = input.dim();
        // Validates the input size against every layer (errors name the layer).
        let input_shape = Shape::new(d.0, d.1, d.2, d.3);
        // The input's shape, then every layer's output shape.
        let mut shapes = vec![input_shape];
        shapes.extend(self.network.shapes(input_shape)?);
        let layers = layers.min(self.steps.len());
        // A set of buffers no other pass is using, kept for the next pass: a pass then writes
        // into memory it has touched before instead of faulting in fresh pages per layer.
        let mut buffers = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let result = self.run_in(input, &shapes, layers, timed, &mut buffers);
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffers);
        result
    }

    /// The pass, ping-ponging between the two activation buffers of `buffers`.
    fn run_in(
        &self,
        input: ArrayView4<f32>,
        shapes: &[Shape],
        layers: usize,
        timed: bool,
        buffers: &mut Buffers,
    ) -> Result<(Array4<f32>, LayerTimes)> {
        let largest = shapes[..=layers].iter().map(Shape::len).max().unwrap_or(0);
        let Buffers {
            activations: [a, b],
            scratch,
        } = buffers;
        for buf in [&mut *a, &mut *b] {
            if buf.len() < largest {
                buf.resize(largest, 0.0);
            }
        }
        let (mut x, mut y) = (a, b);
        match input.as_slice() {
            Some(v) => x[..v.len()].copy_from_slice(v),
            None => {
                for (d, v) in x.iter_mut().zip(input.iter()) {
                    *d = *v;
                }
            }
        }
        let mut times = Vec::new();
        let mut i = 0;
        while i < layers {
            let (name, step) = &self.steps[i];
            let start = Instant::now();
            // A convolution followed by a max pool it can take into its epilogue: one step.
            if let (Step::Conv(conv), Some((pool_name, Step::Other(Op::MaxPool(p))))) =
                (step, self.steps[..layers].get(i + 1))
                && conv.fuses_pool(p)
            {
                let (is, os, ps) = (shapes[i], shapes[i + 1], shapes[i + 2]);
                let named = |name: &String, e: Error| Error::Layer {
                    layer: name.clone(),
                    reason: e.to_string(),
                };
                let fused = conv
                    .forward_pooled_slices(&x[..is.len()], is, p, &mut y[..ps.len()], scratch)
                    .map_err(|e| named(name, e))?;
                if fused {
                    std::mem::swap(&mut x, &mut y);
                    if timed {
                        times.push((name.clone(), start.elapsed()));
                        times.push((pool_name.clone(), Duration::ZERO));
                    }
                } else {
                    // This input takes the direct method: the two layers one after the other,
                    // the pool back into the convolution's (no longer needed) input buffer.
                    conv.forward_slices(&x[..is.len()], is, &mut y[..os.len()], scratch)
                        .map_err(|e| named(name, e))?;
                    let pooled = Instant::now();
                    fast::max_pool2d_slices(&y[..os.len()], os, p, &mut x[..ps.len()])
                        .map_err(|e| named(pool_name, e))?;
                    if timed {
                        times.push((name.clone(), pooled - start));
                        times.push((pool_name.clone(), pooled.elapsed()));
                    }
                }
                i += 2;
                continue;
            }
            let (is, os) = (shapes[i], shapes[i + 1]);
            let (src, dst) = (&mut x[..is.len()], &mut y[..os.len()]);
            let named = |e: Error| Error::Layer {
                layer: name.clone(),
                reason: e.to_string(),
            };
            let in_place = match step {
                Step::Conv(conv) => {
                    conv.forward_slices(src, is, dst, scratch).map_err(named)?;
                    false
                }
                Step::Other(Op::MaxPool(p)) => {
                    fast::max_pool2d_slices(src, is, p, dst).map_err(named)?;
                    false
                }
                Step::Other(Op::Relu) => {
                    fast::relu_slice(src);
                    true
                }
                Step::Other(op) => {
                    let view = ArrayView4::from_shape(is.dims(), &*src)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    let out = match op {
                        Op::Softmax => fast::softmax(view),
                        Op::Deconv { spec, weight } => fast::deconv2d(view, spec, weight.view())?,
                        // The zoom (after the network in the presets) from the reference.
                        _ => reference::apply(op, view)?,
                    };
                    dst.copy_from_slice(out.as_slice().ok_or_else(|| {
                        Error::Internal(format!("{name}: output not contiguous"))
                    })?);
                    false
                }
            };
            if !in_place {
                std::mem::swap(&mut x, &mut y);
            }
            if timed {
                times.push((name.clone(), start.elapsed()));
            }
            i += 1;
        }
        let out_shape = shapes[layers];
        let output = Array4::from_shape_vec(out_shape.dims(), x[..out_shape.len()].to_vec())
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((
            output,
            LayerTimes {
                layers: times,
                from_timestamps: false,
            },
        ))
    }
}
