//! The commands of the `dilated` tool, one module each. The flags they share are defined once
//! in [`args`]; [`device`] is where every command that runs a network chooses between the GPU
//! and the CPU; [`network`] builds the networks and inputs and [`report`] holds shared
//! formatting.

pub mod args;
pub mod bench;
pub mod convert;
pub mod demo;
pub mod device;
pub mod eval;
pub mod features;
pub mod info;
pub mod network;
pub mod receptive_field;
pub mod report;
pub mod run;
pub mod segment;
pub mod train;
pub mod tune;

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Parser)]
#[command(
    name = "dilated",
    version,
    about = "Dilated-convolution networks on any GPU, checked against the CPU"
)]
pub struct Cli {
    /// The command; the demo when none is given.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Runs a real network topology on the GPU and the CPU on a generated input and compares
    /// them (the default when no command is given).
    Demo(demo::DemoArgs),
    /// Prints the CPU's features and caches, and lists every adapter wgpu sees with the
    /// limits that matter here.
    Info,
    /// Times a whole network on the GPU and the CPU with a per-layer table.
    Bench(bench::BenchArgs),
    /// Converts weights between .caffemodel and .safetensors, checking them against a model.
    Convert(convert::ConvertArgs),
    /// Runs a network on an NCHW float32 .npy and writes the raw scores as .npy (on the GPU,
    /// or on the CPU with a warning when there is none or it fails).
    Run(run::RunArgs),
    /// Segments an image into a colour-coded label PNG, as the reference predictor does (on the
    /// GPU, or on the CPU with a warning when there is none or it fails).
    Segment(segment::SegmentArgs),
    /// Trains a model's parts: `dilated train context` the context module on cached front-end
    /// scores, `frontend` the front-end on image crops, `joint` both together.
    Train(train::TrainArgs),
    /// Caches a model's front-end scores for `dilated train context`: one .npy per image and
    /// their list (and the labels at the scores' size).
    Features(features::FeaturesArgs),
    /// Scores predicted label PNGs against ground-truth label PNGs: per-class IoU, mean IoU and
    /// pixel accuracy over every non-ignored pixel of every pair (one confusion matrix).
    Eval(eval::EvalArgs),
    /// Measures the convolution kernels of every layer geometry of a network on this adapter,
    /// prints each candidate's time and the winner, and records the winners for later plans.
    Tune(tune::TuneArgs),
    /// Draws the theoretical and the effective receptive field (Luo et al. 2016) of the centre
    /// output pixel for a model's front-end, its context module and both together, as a PNG.
    ReceptiveField(receptive_field::ReceptiveFieldArgs),
}

/// Runs the command `cli` names.
pub fn execute(cli: Cli) -> Result<(), dilated::Error> {
    match cli
        .command
        .unwrap_or_else(|| Command::Demo(demo::DemoArgs::defaults()))
    {
        Command::Demo(args) => demo::execute(&args),
        Command::Info => info::execute(),
        Command::Bench(args) => bench::execute(&args),
        Command::Convert(args) => convert::execute(&args),
        Command::Run(args) => run::execute(&args),
        Command::Segment(args) => segment::execute(&args),
        Command::Train(args) => train::execute(&args),
        Command::Features(args) => features::execute(&args),
        Command::Eval(args) => eval::execute(&args),
        Command::ReceptiveField(args) => receptive_field::execute(&args),
        Command::Tune(args) => tune::execute(&args),
    }
}
