//! `dilated train context|frontend|joint`: trains a model's context module on cached
//! front-end scores (from the identity initialisation or given weights), its front-end on
//! random image crops, or both together, with Caffe's loss, dropout and solver, on the GPU or
//! the CPU (the fast path, `CpuTrainer`); snapshots the weights and the solver's state and
//! resumes from them exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Subcommand, ValueEnum};
use dilated::gpu::SgdHyper;
use dilated::net::{FrontEnd, Model, Network, PresetOptions};
use dilated::plan::{CpuPlan, GpuTrainer};
use dilated::train::data::{BatchOrder, FeatureDataset};
use dilated::train::images::{Crops, ImageDataset};
use dilated::train::{
    ConfusionMatrix, CpuTrainer, Dropout, LrPolicy, Metrics, SgdConfig, SgdSolver,
    softmax_cross_entropy,
};
use dilated::weights::{WeightSet, write_safetensors};
use dilated::{Error, Shape};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array3, Array4};

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
    /// image, as `dilated features` writes them) against label PNGs of the same size.
    Context(ContextArgs),
    /// Trains the model's front-end on random crops of images against their label PNGs, with
    /// dropout after fc6 and fc7 (start from VGG-16's convolutions or a front-end).
    Frontend(ImageArgs),
    /// Trains the front-end and the context module together on random crops of images, with
    /// dropout after fc6 and fc7 (start from a trained front-end and context module).
    Joint(ImageArgs),
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

/// The solver's and the run's flags, the same for every stage.
#[derive(clap::Args)]
pub struct SolverArgs {
    /// Items per iteration [default: 60 for context, 14 for frontend and joint].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Iterations.
    #[arg(long, default_value_t = 40000)]
    pub iters: u64,
    /// Base learning rate [default: 0.001 for context, 0.0001 for frontend, 0.00001 for
    /// joint].
    #[arg(long)]
    pub lr: Option<f64>,
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
    /// Seed of the shuffling, the crops and the dropout masks.
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
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Iterations between test passes (and one before the first iteration and one at the
    /// end); 0 for the end only.
    #[arg(long, default_value_t = 0)]
    pub test_interval: u64,
    /// Writes the training curve as CSV: a row per iteration (`iteration,loss,lr`, the loss
    /// of the batch before the update) and a row per test pass (`iteration,,,test_loss,miou,
    /// pixel_accuracy`), rewritten whole at every test pass, snapshot and the end. A resumed
    /// run keeps the rows up to its first iteration.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Where it runs.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// GPU memory budget for the training plan, e.g. 2G (binary units): training fails with
    /// the plan's needs rather than exceed it.
    #[arg(long, value_parser = super::args::parse_memory)]
    pub max_memory: Option<u64>,
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
    /// Starting weights (.safetensors or .caffemodel holding the context layers); the default
    /// is the identity initialisation (the paper's eq. 4 / eq. 5).
    #[arg(long, conflicts_with = "resume")]
    pub weights: Option<PathBuf>,
    /// The solver and the run.
    #[command(flatten)]
    pub solver: SolverArgs,
}

/// Arguments of `dilated train frontend` and `dilated train joint`.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// The model trained (its classes, mean, layer names and, for joint, context module).
    #[arg(long)]
    pub model: String,
    /// Divides every front-end width by this (1 = the released size).
    #[arg(long, default_value_t = 1)]
    pub width_divisor: usize,
    /// List of training images (PNG, JPEG, BMP), one per line.
    #[arg(long)]
    pub train_images: PathBuf,
    /// List of training label PNGs (class ids, 255 ignored), line by line with the images.
    #[arg(long)]
    pub train_labels: PathBuf,
    /// List of test images (evaluated as centred crops).
    #[arg(long, requires = "test_labels")]
    pub test_images: Option<PathBuf>,
    /// List of test label PNGs.
    #[arg(long, requires = "test_images")]
    pub test_labels: Option<PathBuf>,
    /// Starting weights (.caffemodel or .safetensors). Layers they lack keep their
    /// initialisation (He for the front-end, identity for the context module), and are named
    /// on the output; an inner product's weights (VGG-16's fc6, fc7) are taken as the
    /// convolution of the same size.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub weights: Option<PathBuf>,
    /// Side of the square crops (the margin 372 plus a multiple of 8; 500 for VOC).
    #[arg(long, default_value_t = 500)]
    pub crop_size: usize,
    /// Do not mirror crops at random.
    #[arg(long)]
    pub no_mirror: bool,
    /// Dropout ratio after fc6 and fc7 (0 turns dropout off).
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f32,
    /// The solver and the run.
    #[command(flatten)]
    pub solver: SolverArgs,
}

/// Runs `dilated train`.
pub fn execute(args: &TrainArgs) -> Result<(), Error> {
    match &args.stage {
        Stage::Context(a) => context(a),
        Stage::Frontend(a) => images(a, false),
        Stage::Joint(a) => images(a, true),
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

/// A batch of inputs and labels at the scores' resolution.
type Batch = (Array4<f32>, Array3<u32>);

/// Loss and metrics of a network on a stage's test data.
type Evaluation<'a> = Box<dyn Fn(&Network) -> Result<(f64, Metrics), Error> + 'a>;

/// What a stage trains and on what.
struct Job<'a> {
    /// Words for the first line ("the context module of ...").
    what: String,
    /// Items in the training list.
    items: usize,
    /// The network, with its starting weights.
    net: Network,
    /// Layers followed by dropout, with the ratio.
    dropout: Vec<(String, f32)>,
    /// The batch of an iteration.
    batch: Box<dyn Fn(u64) -> Result<Batch, Error> + 'a>,
    /// Loss and metrics of the test data, if any.
    test: Option<Evaluation<'a>>,
}

/// The solver `args` set up, resumed from `args.resume` if given (weights loaded into `net`),
/// and the first iteration.
fn solver(args: &SolverArgs, base_lr: f64, net: &mut Network) -> Result<(SgdSolver, u64), Error> {
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
        base_lr: args.lr.unwrap_or(base_lr),
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
    }
    Ok((solver, start))
}

/// The batch size: `--batch` or the stage's default, at least 1.
fn batch_size(args: &SolverArgs, default: usize) -> Result<usize, Error> {
    let batch = args.batch.unwrap_or(default);
    if batch == 0 {
        return Err(Error::InvalidSpec {
            context: "--batch".into(),
            reason: "a batch needs at least one item".into(),
        });
    }
    Ok(batch)
}

fn order(args: &SolverArgs) -> BatchOrder {
    if args.no_shuffle {
        BatchOrder::InOrder
    } else {
        BatchOrder::Shuffled { seed: args.seed }
    }
}

fn context(args: &ContextArgs) -> Result<(), Error> {
    let model = Model::from_name(&args.model)?;
    let mut net = model.context_module(&PresetOptions::default()).build()?;
    let train = FeatureDataset::from_lists(&args.train_features, &args.train_labels)?;
    let test = match (&args.test_features, &args.test_labels) {
        (Some(f), Some(l)) => Some(FeatureDataset::from_lists(f, l)?),
        _ => None,
    };
    let a = &args.solver;
    let batch = batch_size(a, 60)?;
    let (solver, start) = solver(a, 0.001, &mut net)?;
    if a.resume.is_none()
        && let Some(w) = &args.weights
    {
        net.load_weights(&WeightSet::load(w)?)?;
    }
    let order = order(a);
    let job = Job {
        what: format!(
            "the context module of {} ({} layers)",
            model.name(),
            net.layers().len()
        ),
        items: train.len(),
        net,
        dropout: Vec::new(),
        batch: Box::new(move |iter| train.batch(iter, batch, order)),
        test: test.map(|test| {
            Box::new(move |net: &Network| {
                evaluate(net, test.len(), |i| {
                    test.batch(i as u64, 1, BatchOrder::InOrder)
                })
            }) as Evaluation
        }),
    };
    run(job, a, solver, start)
}

fn images(args: &ImageArgs, joint: bool) -> Result<(), Error> {
    let model = Model::from_name(&args.model)?;
    let info = model.info();
    let options = PresetOptions {
        width_divisor: args.width_divisor,
        seed: args.solver.seed,
        ..PresetOptions::default()
    };
    let front_end = FrontEnd {
        classes: info.classes,
        width_divisor: args.width_divisor,
        final_layer: info.final_layer,
    }
    .builder(info.name, options.seed)?;
    let mut net = if joint {
        front_end
            .append(model.context_module(&options).build()?)
            .build()?
    } else {
        front_end.build()?
    };
    let train = ImageDataset::from_lists(&args.train_images, &args.train_labels)?;
    let test = match (&args.test_images, &args.test_labels) {
        (Some(i), Some(l)) => Some(ImageDataset::from_lists(i, l)?),
        _ => None,
    };
    let crops = Crops {
        mirror: !args.no_mirror,
        ..Crops::new(args.crop_size, info.mean_bgr)?
    };
    let a = &args.solver;
    let batch = batch_size(a, 14)?;
    let (solver, start) = solver(a, if joint { 1e-5 } else { 1e-4 }, &mut net)?;
    if a.resume.is_none()
        && let Some(w) = &args.weights
    {
        let missing = net.load_available_weights(&WeightSet::load(w)?)?;
        if !missing.is_empty() {
            println!(
                "{} has no weights for {}: they start from the initialisation",
                w.display(),
                missing.join(", ")
            );
        }
    }
    let out = net.output_shape(Shape::new(1, 3, args.crop_size, args.crop_size))?;
    let labels = crops.label_size()?;
    if (out.h, out.w) != (labels, labels) {
        return Err(Error::Internal(format!(
            "a {0}x{0} crop gives {1}x{2} scores but {labels}x{labels} labels",
            args.crop_size, out.h, out.w
        )));
    }
    if !(0.0..1.0).contains(&args.dropout) {
        return Err(Error::InvalidSpec {
            context: "--dropout".into(),
            reason: format!("the ratio must be in [0, 1), not {}", args.dropout),
        });
    }
    let dropout = if args.dropout > 0.0 {
        ["fc6", "fc7"]
            .map(|l| (l.to_string(), args.dropout))
            .to_vec()
    } else {
        Vec::new()
    };
    let (order, seed) = (order(a), a.seed);
    let job = Job {
        what: format!(
            "the {} of {} ({} layers, {}x{} crops)",
            if joint {
                "front-end and context module"
            } else {
                "front-end"
            },
            model.name(),
            net.layers().len(),
            args.crop_size,
            args.crop_size
        ),
        items: train.len(),
        net,
        dropout,
        batch: Box::new(move |iter| train.batch(iter, batch, order, &crops, seed)),
        test: test.map(|test| {
            Box::new(move |net: &Network| evaluate(net, test.len(), |i| test.centred(&[i], &crops)))
                as Box<dyn Fn(&Network) -> Result<(f64, Metrics), Error>>
        }),
    };
    run(job, a, solver, start)
}

/// The dropout masks of iteration `iter`: a function of the seed and the iteration alone, so a
/// resumed run draws the same ones.
fn dropout_masks(
    net: &Network,
    shape: Shape,
    layers: &[(String, f32)],
    seed: u64,
    iter: u64,
) -> Result<Vec<Dropout>, Error> {
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    let named: Vec<(&str, f32)> = layers.iter().map(|(l, r)| (l.as_str(), *r)).collect();
    Dropout::masks(
        net,
        shape,
        &named,
        seed ^ 0xd20b_0a7d ^ iter.wrapping_mul(0xd1b5_4a32_d192_ed03),
    )
}

/// The training curve of `--log`.
struct Curve {
    path: PathBuf,
    rows: Vec<String>,
}

impl Curve {
    const HEADER: &'static str = "iteration,loss,lr,test_loss,miou,pixel_accuracy";

    /// The curve at `path`, keeping the rows of an earlier run up to iteration `start`.
    fn open(path: &Path, start: u64) -> Result<Self, Error> {
        let mut rows = Vec::new();
        if start > 0
            && let Ok(text) = std::fs::read_to_string(path)
        {
            rows.extend(
                text.lines()
                    .skip(1)
                    .filter(|l| {
                        // Training rows of iterations before `start`, test rows up to it.
                        let mut fields = l.split(',');
                        let iter = fields.next().and_then(|i| i.parse::<u64>().ok());
                        let test_row = fields.next() == Some("");
                        iter.is_some_and(|i| i < start || (test_row && i == start))
                    })
                    .map(str::to_string),
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            rows,
        })
    }

    fn step(&mut self, iter: u64, loss: f64, lr: f64) {
        self.rows.push(format!("{iter},{loss},{lr},,,"));
    }

    fn test(&mut self, iter: u64, loss: f64, metrics: &Metrics) {
        let f = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        self.rows.push(format!(
            "{iter},,,{loss},{},{}",
            f(metrics.mean_iou),
            f(metrics.pixel_accuracy)
        ));
    }

    fn save(&self) -> Result<(), Error> {
        let mut text = String::from(Self::HEADER);
        text.push('\n');
        for r in &self.rows {
            text.push_str(r);
            text.push('\n');
        }
        dilated::io::write_atomic(&self.path, |w| {
            std::io::Write::write_all(w, text.as_bytes())
        })
    }
}

/// The training loop every stage shares.
fn run(job: Job<'_>, args: &SolverArgs, mut solver: SgdSolver, start: u64) -> Result<(), Error> {
    let Job {
        what,
        items,
        mut net,
        dropout,
        batch,
        test,
    } = job;
    let (first_x, _) = batch(start)?;
    let d = first_x.dim();
    let shape = Shape::new(d.0, d.1, d.2, d.3);
    drop(first_x);
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
            let options = dilated::PlanOptions {
                max_memory: args.max_memory,
                ..Default::default()
            };
            let built = GpuTrainer::with_options(gpu, &net, shape, &options);
            match (built, &device) {
                (Ok(trainer), _) => {
                    for l in net.layers() {
                        if let Some(m) = solver.momentum(&l.name) {
                            trainer.set_momentum(&l.name, m)?;
                        }
                    }
                    Some(trainer)
                }
                (Err(e), Device::GpuOrCpu(_)) => {
                    eprintln!(
                        "warning: cannot train this network on the GPU ({e}); training on the CPU"
                    );
                    None
                }
                (Err(e), _) => return Err(e),
            }
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
        "training {what} on {items} items, batch {} of {shape}, on the {}",
        shape.n,
        if trainer.is_some() { "GPU" } else { "CPU" }
    );
    if let Some(t) = &trainer {
        println!("GPU memory of the training plan: {}", t.memory());
    }
    let bar = ProgressBar::new(args.iters).with_position(start);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} iterations, {per_sec}, {msg} (eta {eta})",
        )
        .map_err(|e| Error::Internal(format!("progress bar: {e}")))?,
    );
    let mut curve = match &args.log {
        Some(path) => Some(Curve::open(path, start)?),
        None => None,
    };
    if start == 0
        && args.test_interval > 0
        && let Some(test) = &test
    {
        let (loss, metrics) = test(&net)?;
        bar.suspend(|| println!("iteration 0: test loss {loss:.4}, {metrics}"));
        if let Some(c) = &mut curve {
            c.test(0, loss, &metrics);
        }
    }
    let started = Instant::now();
    for iter in start..args.iters {
        let (x, labels) = batch(iter)?;
        let rate = solver.learning_rate(iter);
        let loss = match &mut trainer {
            Some(trainer) => {
                let hyper = SgdHyper {
                    lr: rate as f32,
                    momentum: args.momentum as f32,
                    weight_decay: args.weight_decay as f32,
                };
                let masks = dropout_masks(&net, shape, &dropout, args.seed, iter)?;
                trainer
                    .step_with_dropout(x.view(), labels.view(), &masks, &hyper)?
                    .loss
            }
            None => {
                let masks = dropout_masks(&net, shape, &dropout, args.seed, iter)?;
                let t = cpu_trainer
                    .as_mut()
                    .ok_or_else(|| Error::Internal("no trainer on either device".into()))?;
                t.step(x.view(), labels.view(), &masks, iter)?.loss
            }
        };
        bar.set_message(format!("loss {loss:.4}, lr {rate:.2e}"));
        if let Some(c) = &mut curve {
            c.step(iter, loss, rate);
        }
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
            let (loss, metrics) = test(&net)?;
            bar.suspend(|| println!("iteration {done}: test loss {loss:.4}, {metrics}"));
            if let Some(c) = &mut curve {
                c.test(done, loss, &metrics);
            }
        }
        if (snapshot || testing)
            && let Some(c) = &curve
        {
            c.save()?;
        }
    }
    bar.finish();
    if let Some(c) = &curve {
        c.save()?;
    }
    write_safetensors(&args.output, &weight_set(&net)?)?;
    println!(
        "trained iterations {start}..{} in {:.1} s; weights written to {}",
        args.iters,
        started.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

/// Loss, mean IoU and pixel accuracy of `net` over `items` test items, each given by `item`
/// as a batch of one (on the CPU's fast path, without dropout).
fn evaluate(
    net: &Network,
    items: usize,
    item: impl Fn(usize) -> Result<Batch, Error>,
) -> Result<(f64, Metrics), Error> {
    let plan = CpuPlan::new(net)?;
    let mut confusion = None::<ConfusionMatrix>;
    let (mut loss_sum, mut valid) = (0.0, 0usize);
    for i in 0..items {
        let (x, y) = item(i)?;
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
