//! A network prepared for the CPU: every op on the fast path (`cpu::fast`), convolutions with
//! their weights laid out once; only the bilinear zoom, which follows the networks rather than
//! belonging to them, comes from the reference.

use web_time::Instant;

use ndarray::{Array4, ArrayView4};

use crate::cpu::fast::{self, ConvMethod, CpuConv2d, CpuPrecision};
use crate::cpu::reference;
use crate::error::{Error, Result};
use crate::net::{Network, Op};
use crate::spec::Conv2d;
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
        self.network
            .shapes(crate::spec::Shape::new(d.0, d.1, d.2, d.3))?;
        let mut times = Vec::new();
        let mut x = input.to_owned();
        for (name, step) in self.steps.iter().take(layers) {
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
