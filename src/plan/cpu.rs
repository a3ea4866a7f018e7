//! A network prepared for the CPU: every op on the fast path (`cpu::fast`), convolutions with
//! their weights laid out once; only the bilinear zoom, which follows the networks rather than
//! belonging to them, comes from the reference.

use web_time::Instant;

use ndarray::{Array4, ArrayView4};

use crate::cpu::fast::{self, ConvMethod, CpuConv2d};
use crate::cpu::reference;
use crate::error::Result;
use crate::net::{Network, Op};
use crate::timing::LayerTimes;

enum Step {
    Conv(CpuConv2d),
    Other(Op),
}

/// A network ready to run on the CPU (any input size the network accepts).
pub struct CpuPlan {
    steps: Vec<(String, Step)>,
    network: Network,
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
        let mut steps = Vec::with_capacity(network.layers().len());
        for l in network.layers() {
            let step = match &l.op {
                Op::Conv { spec, weight, bias } => {
                    let (w, b) = (weight.view(), bias.as_ref().map(|b| b.view()));
                    let layer = match method {
                        Some(m) if CpuConv2d::supports(spec, m) => {
                            CpuConv2d::with_method(*spec, w, b, m)?
                        }
                        _ => CpuConv2d::new(*spec, w, b)?,
                    };
                    Step::Conv(layer)
                }
                other => Step::Other(other.clone()),
            };
            steps.push((l.name.clone(), step));
        }
        Ok(Self {
            steps,
            network: network.clone(),
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

    /// Runs the network.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Array4<f32>> {
        Ok(self.run(input, false)?.0)
    }

    /// Runs the network and times every layer on the host.
    pub fn forward_profiled(&self, input: ArrayView4<f32>) -> Result<(Array4<f32>, LayerTimes)> {
        self.run(input, true)
    }

    fn run(&self, input: ArrayView4<f32>, timed: bool) -> Result<(Array4<f32>, LayerTimes)> {
        let d = input.dim();
        // Validates the input size against every layer (errors name the layer).
        self.network
            .shapes(crate::spec::Shape::new(d.0, d.1, d.2, d.3))?;
        let mut times = Vec::new();
        let mut x = input.to_owned();
        for (name, step) in &self.steps {
            let start = Instant::now();
            x = match step {
                Step::Conv(conv) => conv.forward(x.view())?,
                Step::Other(Op::MaxPool(p)) => fast::max_pool2d(x.view(), p)?,
                Step::Other(Op::Relu) => {
                    fast::relu_inplace(&mut x);
                    x
                }
                Step::Other(Op::Softmax) => fast::softmax(x.view()),
                Step::Other(Op::Deconv { spec, weight }) => {
                    fast::deconv2d(x.view(), spec, weight.view())?
                }
                // The zoom (after the network in the presets) from the reference.
                Step::Other(op) => reference::apply(op, x.view())?,
            };
            if timed {
                times.push((name.clone(), start.elapsed()));
            }
        }
        Ok((
            x,
            LayerTimes {
                layers: times,
                from_timestamps: false,
            },
        ))
    }
}
