//! `dilated train context`: trains a model's context module on cached front-end scores, from
//! the identity initialisation or given weights, with Caffe's loss and solver, on the GPU or
//! the CPU (the fast path, `CpuTrainer`); snapshots the weights and the solver's state and
//! resumes from them exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Subcommand, ValueEnum};
use dilated::gpu::SgdHyper;
use dilated::net::{Model, Network, PresetOptions};
use dilated::plan::{CpuPlan, GpuTrainer};
use dilated::train::data::{BatchOrder, FeatureDataset};
use dilated::train::{
    ConfusionMatrix, CpuTrainer, LrPolicy, SgdConfig, SgdSolver, softmax_cross_entropy,
};
use dilated::weights::{WeightSet, write_safetensors};
use dilated::{Error, Shape};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::DeviceArgs;
use super::device::Device;

/// Arguments of `dilated train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// What to train.
    #[command(subcommand)]
    pub stage: Stage,
}

/// The training stages.
#[derive(Subcommand)]
pub enum Stage {
    /// Trains the model's context module on cached front-end scores (`.npy` [C, H, W] per
    /// image) against label PNGs of the same size.
    Context(ContextArgs),
}

/// Caffe's learning-rate policies.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Policy {
    /// The base rate throughout.
    Fixed,
    /// The base rate times gamma every `--stepsize` iterations.
    Step,
    /// The base rate times (1 - iter / iters) ^ power.
    Poly,
}

/// Arguments of `dilated train context`.
#[derive(clap::Args)]
pub struct ContextArgs {
    /// The model whose context module is trained (its classes, dilations and layer names).
    #[arg(long)]
    pub model: String,
    /// List of training feature files (`.npy`, [C, H, W] float32), one per line.
    #[arg(long)]
    pub train_features: PathBuf,
    /// List of training label PNGs (class ids, 255 ignored), line by line with the features.
    #[arg(long)]
    pub train_labels: PathBuf,
    /// List of test feature files.
    #[arg(long, requires = "test_labels")]
    pub test_features: Option<PathBuf>,
    /// List of test label PNGs.
    #[arg(long, requires = "test_features")]
    pub test_labels: Option<PathBuf>,
    /// Iterations between test passes (and one at the end); 0 for the end only.
    #[arg(long, default_value_t = 0)]
    pub test_interval: u64,
    /// Starting weights (.safetensors or .caffemodel holding the context layers); the default
    /// is the identity initialisation (the paper's eq. 4 / eq. 5).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Items per iteration.
    #[arg(long, default_value_t = 60)]
    pub batch: usize,
    /// Iterations.
    #[arg(long, default_value_t = 40000)]
    pub iters: u64,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    /// Momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0005)]
    pub weight_decay: f64,
    /// Learning-rate policy.
    #[arg(long, value_enum, default_value_t = Policy::Fixed)]
    pub lr_policy: Policy,
    /// `step`: the factor per step.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// `step`: iterations per step.
    #[arg(long, default_value_t = 100_000)]
    pub stepsize: u64,
    /// `poly`: the exponent.
    #[arg(long, default_value_t = 0.9)]
    pub power: f64,
    /// Take the items in list order (`batch` per iteration, wrapping around) instead of
    /// shuffling them every pass.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the trained weights go (.safetensors, `<layer>.weight` / `<layer>.bias`).
    #[arg(long)]
    pub output: PathBuf,
    /// Iterations between snapshots: the weights so far at `--output` and the solver's state
    /// at `<output>.solverstate`; 0 for none.
    #[arg(long, default_value_t = 0)]
    pub snapshot_every: u64,
    /// Resumes from a snapshot's `.solverstate` (momentum and iteration), with the weights
    /// beside it (the same path without `.solverstate`).
    #[arg(long, conflicts_with = "weights")]
    pub resume: Option<PathBuf>,
    /// Where it runs.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `dilated train`.
pub fn execute(args: &TrainArgs) -> Result<(), Error> {
    match &args.stage {
        Stage::Context(a) => context(a),
    }
}

/// The state file of a snapshot whose weights are at `weights`.
fn state_path(weights: &Path) -> PathBuf {
    let mut s = weights.as_os_str().to_owned();
    s.push(".solverstate");
    PathBuf::from(s)
}

/// The network's weights as a set (every convolution).
fn weight_set(net: &Network) -> Result<WeightSet, Error> {
    let mut set = WeightSet::new();
    for l in net.layers() {
        if let dilated::net::Op::Conv { weight, bias, .. } = &l.op {
            set.insert(
                &l.name,
                dilated::weights::LayerWeights::new(&l.name, weight.clone(), bias.clone())?,
            );
        }
    }
    Ok(set)
}

fn context(args: &ContextArgs) -> Result<(), Error> {
    let model = Model::from_name(&args.model)?;
    let mut net = model.context_module(&PresetOptions::default()).build()?;
    let train = FeatureDataset::from_lists(&args.train_features, &args.train_labels)?;
    let test = match (&args.test_features, &args.test_labels) {
        (Some(f), Some(l)) => Some(FeatureDataset::from_lists(f, l)?),
        _ => None,
    };
    if args.batch == 0 {
        return Err(Error::InvalidSpec {
            context: "--batch".into(),
            reason: "a batch needs at least one item".into(),
        });
    }
    let policy = match args.lr_policy {
        Policy::Fixed => LrPolicy::Fixed,
        Policy::Step => LrPolicy::Step {
            gamma: args.gamma,
            stepsize: args.stepsize,
        },
        Policy::Poly => LrPolicy::Poly {
            power: args.power,
            max_iter: args.iters,
        },
    };
    let mut solver = SgdSolver::new(SgdConfig {
        base_lr: args.lr,
        policy,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        ..SgdConfig::default()
    })?;
    let mut start = 0;
    if let Some(state) = &args.resume {
        start = solver.load_state(state)?;
        let weights = state
            .to_str()
            .and_then(|s| s.strip_suffix(".solverstate"))
            .map(PathBuf::from)
            .ok_or_else(|| Error::InvalidSpec {
                context: "--resume".into(),
                reason: format!("{} does not end in .solverstate", state.display()),
            })?;
        net.load_weights(&WeightSet::load(&weights)?)?;
    } else if let Some(w) = &args.weights {
        net.load_weights(&WeightSet::load(w)?)?;
    }
    let order = if args.no_shuffle {
        BatchOrder::InOrder
    } else {
        BatchOrder::Shuffled { seed: args.seed }
    };
    let (first_x, _) = train.batch(start, args.batch, order)?;
    let d = first_x.dim();
    let shape = Shape::new(d.0, d.1, d.2, d.3);
    let device = Device::open(&args.device)?;
    let gpu = match &device {
        Device::Cpu => None,
        Device::Gpu(gpu) => Some(gpu),
        Device::GpuOrCpu(Ok(gpu)) => Some(gpu),
        Device::GpuOrCpu(Err(e)) => {
            eprintln!("warning: no GPU ({e}); training on the CPU");
            None
        }
    };
    // The GPU trainer, or None for the CPU.
    let mut trainer = match gpu {
        Some(gpu) => {
            let trainer = GpuTrainer::new(gpu, &net, shape)?;
            for l in net.layers() {
                if let Some(m) = solver.momentum(&l.name) {
                    trainer.set_momentum(&l.name, m)?;
                }
            }
            Some(trainer)
        }
        None => None,
    };
    // Without a GPU, the CPU's fast path (momentum from the solver's state when resuming).
    let mut cpu_trainer = match trainer {
        Some(_) => None,
        None => {
            let mut t = CpuTrainer::new(&net, shape, *solver.config())?;
            t.load_momentum(&solver)?;
            Some(t)
        }
    };
    println!(
        "training the context module of {} ({} layers) on {} items, batch {} of {shape}, on the {}",
        model.name(),
        net.layers().len(),
        train.len(),
        args.batch,
        if trainer.is_some() { "GPU" } else { "CPU" }
    );
    let bar = ProgressBar::new(args.iters).with_position(start);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} iterations, {per_sec}, {msg} (eta {eta})",
        )
        .map_err(|e| Error::Internal(format!("progress bar: {e}")))?,
    );
    let started = Instant::now();
    for iter in start..args.iters {
        let (x, labels) = train.batch(iter, args.batch, order)?;
        let rate = solver.learning_rate(iter);
        let loss = match &mut trainer {
            Some(trainer) => {
                let hyper = SgdHyper {
                    lr: rate as f32,
                    momentum: args.momentum as f32,
                    weight_decay: args.weight_decay as f32,
                };
                trainer.step(x.view(), labels.view(), &hyper)?.loss
            }
            None => {
                let t = cpu_trainer
                    .as_mut()
                    .ok_or_else(|| Error::Internal("no trainer on either device".into()))?;
                t.step(x.view(), labels.view(), &[], iter)?.loss
            }
        };
        bar.set_message(format!("loss {loss:.4}, lr {rate:.2e}"));
        bar.inc(1);
        let done = iter + 1;
        let snapshot = args.snapshot_every > 0 && done % args.snapshot_every == 0;
        let testing = test.is_some()
            && (done == args.iters || (args.test_interval > 0 && done % args.test_interval == 0));
        if (snapshot || testing || done == args.iters)
            && let Some(trainer) = &trainer
        {
            trainer.download_into(&mut net)?;
            for (name, m) in trainer.momentum()? {
                solver.set_momentum(&name, m)?;
            }
        }
        if (snapshot || testing || done == args.iters)
            && let Some(t) = &cpu_trainer
        {
            t.download_into(&mut net)?;
            t.store_momentum(&mut solver)?;
        }
        if snapshot {
            write_safetensors(&args.output, &weight_set(&net)?)?;
            solver.save_state(state_path(&args.output), done)?;
        }
        if testing && let Some(test) = &test {
            let (loss, metrics) = evaluate(&net, test)?;
            bar.suspend(|| println!("iteration {done}: test loss {loss:.4}, {metrics}"));
        }
    }
    bar.finish();
    write_safetensors(&args.output, &weight_set(&net)?)?;
    println!(
        "trained iterations {start}..{} in {:.1} s; weights written to {}",
        args.iters,
        started.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

/// Loss, mean IoU and pixel accuracy of `net` on every item of `test` (on the CPU).
fn evaluate(net: &Network, test: &FeatureDataset) -> Result<(f64, dilated::train::Metrics), Error> {
    let plan = CpuPlan::new(net)?;
    let mut confusion = None::<ConfusionMatrix>;
    let (mut loss_sum, mut valid) = (0.0, 0usize);
    for i in 0..test.len() {
        let (x, y) = test.batch(i as u64, 1, BatchOrder::InOrder)?;
        let scores = plan.forward(x.view())?;
        let loss = softmax_cross_entropy(scores.view(), y.view())?;
        loss_sum += loss.loss * loss.valid as f64;
        valid += loss.valid;
        let predictions = dilated::cpu::reference::argmax(scores.view());
        confusion
            .get_or_insert_with(|| ConfusionMatrix::new(scores.dim().1))
            .add(y.view(), predictions.view())?;
    }
    let metrics = confusion
        .map(|c| c.metrics())
        .ok_or_else(|| Error::InvalidSpec {
            context: "test data".into(),
            reason: "no items".into(),
        })?;
    Ok((
        if valid == 0 {
            0.0
        } else {
            loss_sum / valid as f64
        },
        metrics,
    ))
}
