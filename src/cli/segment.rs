//! `dilated segment`: an image segmented into a colour-coded label PNG, as the reference
//! predictor does.

use std::path::PathBuf;

use dilated::Error;
use dilated::io::{load_image_bgr, save_png};
use dilated::net::{Model, Network};
use dilated::segment::{Backend, Segmentation, Segmenter, colorize, overlay, palette};
use ndarray::Array3;

use super::args::{CpuPrecisionArgs, DeviceArgs, MemoryArgs, ModelArgs, WeightsArgs, parse_size};
use super::device::{self, Device};
use super::network;
use super::report::mib;

/// Arguments of `dilated segment`.
#[derive(clap::Args)]
#[command(
    mut_arg("model", |a| a.required(false).default_value("dilation8_pascal_voc")),
    mut_arg("width_divisor", |a| a.help(
        "Divides every front-end width by this (1 = the released size; weights must match)"
    )),
    mut_arg("weights", |a| a.required(false).help(
        "Weights (.caffemodel or .safetensors); without them the network's initial (random) \
         weights are used and the result is meaningless"
    )),
)]
pub struct SegmentArgs {
    /// Image to segment (PNG, JPEG or BMP).
    pub image: PathBuf,
    /// Output label PNG in the dataset's palette.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The preset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Its weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Blend the label colours over the image instead of writing bare labels.
    #[arg(long)]
    pub overlay: bool,
    /// Also write the class probabilities as a [classes, height, width] float32 .npy.
    #[arg(long)]
    pub probs: Option<PathBuf>,
    /// Where it runs.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Tile size HxW (default: the model's deploy input size); each side must be 372 plus a
    /// multiple of 8.
    #[arg(long, value_parser = parse_size)]
    pub tile: Option<(usize, usize)>,
    /// The GPU memory budget.
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// The CPU's arithmetic.
    #[command(flatten)]
    pub precision: CpuPrecisionArgs,
}

/// Segments the image and writes the label PNG (and the probabilities when asked).
pub fn execute(args: &SegmentArgs) -> Result<(), Error> {
    let image = load_image_bgr(&args.image)?;
    // Pixels of 8-bit images are always finite: NaN or infinite values can only come from the
    // weights, which `network::load` checks.
    let (model, net) = network::load(&args.model, args.weights.weights.as_deref())?;
    if args.weights.weights.is_none() {
        eprintln!(
            "warning: no --weights given: using randomly initialised weights; the labels are meaningless"
        );
    }
    let device = Device::open(&args.device)?;
    let executor = device.executor(net);
    let net = executor.network();
    let (result, tiles, tile) = device::run(
        &executor,
        "segmenting",
        |gpu| segment_on(args, &image, model, net, Backend::Gpu(gpu), gpu.name()),
        || segment_on(args, &image, model, net, Backend::Cpu, "the CPU"),
    )?;
    let (h, w, _) = image.dim();
    let colored = colorize(&result.labels, &palette(model));
    let picture = if args.overlay {
        overlay(&image, &colored, 0.5)
    } else {
        colored
    };
    if let (Some(path), Some(p)) = (&args.probs, &result.probabilities) {
        dilated::io::write_npy(path, p)?;
    }
    save_png(&args.output, &picture)?;
    println!(
        "wrote {} ({w}x{h}, {tiles} tile(s) of {}x{})",
        args.output.display(),
        tile.0,
        tile.1
    );
    Ok(())
}

/// Segments `image` on one backend: the result, the number of tiles and the tile size.
fn segment_on(
    args: &SegmentArgs,
    image: &Array3<f32>,
    model: Model,
    net: &Network,
    backend: Backend<'_>,
    device: &str,
) -> Result<(Segmentation, usize, (usize, usize)), Error> {
    let options = args.precision.apply(args.memory.plan_options());
    let segmenter = Segmenter::with_options(model, net, backend, args.tile, &options)?;
    if let (Some(budget), Some(bytes)) = (args.memory.max_memory, segmenter.gpu_memory()) {
        println!(
            "GPU memory of the plan: {:.1} MiB (budget {:.1} MiB)",
            mib(bytes),
            mib(budget)
        );
    }
    let (h, w, _) = image.dim();
    let (ty, tx) = segmenter.tiles(h, w);
    let bar = (ty * tx > 1).then(|| {
        let bar = indicatif::ProgressBar::new((ty * tx) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} tiles, {elapsed} elapsed, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} on {device}", model.name()));
        bar
    });
    let result = segmenter.segment(image.view(), args.probs.is_some(), &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish();
    }
    Ok((result?, ty * tx, segmenter.tile()))
}
