//! `dilated features`: caches a model's front-end scores for the context stage, one `.npy`
//! per image, and the list of them (and, given labels, the label images at the scores' size).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use dilated::Error;
use dilated::io::{load_image_bgr, load_label_png, read_list, save_label_png, write_npy};
use dilated::net::{FrontEnd, Model, Network};
use dilated::segment::{Backend, Segmenter};
use dilated::weights::WeightSet;
use ndarray::Array2;

use super::args::{DeviceArgs, ModelArgs, parse_size};
use super::device::{self, Device};

/// Arguments of `dilated features`.
#[derive(clap::Args)]
pub struct FeaturesArgs {
    /// The preset whose front-end runs.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights holding at least the front-end's layers (.caffemodel or .safetensors; the
    /// context module's layers, if present, are ignored).
    #[arg(long)]
    pub weights: PathBuf,
    /// List of images (PNG, JPEG, BMP), one per line.
    #[arg(long)]
    pub images: PathBuf,
    /// List of label PNGs, line by line with the images: each is also written at the scores'
    /// size (the label under each output pixel's centre, every 8th pixel from the first).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Where the `.npy` files (`<image name>.npy`, [C, H, W] float32), `features.txt` and,
    /// given labels, `<image name>_labels.png` and `labels.txt` go.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Keep the files of images already done (an interrupted run continues where it stopped;
    /// every file is written whole or not at all).
    #[arg(long)]
    pub skip_existing: bool,
    /// Tile size HxW (default: the model's deploy input size); each side must be 372 plus a
    /// multiple of 8.
    #[arg(long, value_parser = parse_size)]
    pub tile: Option<(usize, usize)>,
    /// Where it runs.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `dilated features`.
pub fn execute(args: &FeaturesArgs) -> Result<(), Error> {
    let model = Model::from_name(&args.model.model)?;
    let info = model.info();
    let mut net = FrontEnd {
        classes: info.classes,
        width_divisor: args.model.width_divisor,
        final_layer: info.final_layer,
    }
    .build(info.name, 0)?;
    net.load_weights(&WeightSet::load(&args.weights)?)?;
    let images = read_list(&args.images)?;
    let labels = match &args.labels {
        Some(l) => {
            let labels = read_list(l)?;
            if labels.len() != images.len() {
                return Err(Error::InvalidSpec {
                    context: "--labels".into(),
                    reason: format!(
                        "{} images but {} label files; the lists must correspond line by line",
                        images.len(),
                        labels.len()
                    ),
                });
            }
            Some(labels)
        }
        None => None,
    };
    // Output names from the image names, which must then be distinct.
    let mut seen = HashSet::new();
    let stems = images
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or_else(|| Error::InvalidSpec {
                    context: "--images".into(),
                    reason: format!("{} has no file name", p.display()),
                })?;
            if !seen.insert(stem.clone()) {
                return Err(Error::InvalidSpec {
                    context: "--images".into(),
                    reason: format!(
                        "two images are named {stem}: their feature files would collide"
                    ),
                });
            }
            Ok(stem)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    std::fs::create_dir_all(&args.output_dir).map_err(|source| Error::Io {
        path: args.output_dir.display().to_string(),
        source,
    })?;
    let device = Device::open(&args.device)?;
    let executor = device.executor(net);
    let net = executor.network();
    let done = device::run(
        &executor,
        "computing the features",
        |gpu| {
            write_all(
                args,
                model,
                net,
                Backend::Gpu(gpu),
                &images,
                labels.as_deref(),
                &stems,
            )
        },
        || {
            write_all(
                args,
                model,
                net,
                Backend::Cpu,
                &images,
                labels.as_deref(),
                &stems,
            )
        },
    )?;
    let dir = &args.output_dir;
    let list = |suffix: &str| {
        stems
            .iter()
            .map(|s| format!("{}\n", dir.join(format!("{s}{suffix}")).display()))
            .collect::<String>()
    };
    write_text(&dir.join("features.txt"), &list(".npy"))?;
    if labels.is_some() {
        write_text(&dir.join("labels.txt"), &list("_labels.png"))?;
    }
    println!(
        "wrote the front-end scores of {} images ({done} computed) to {}, listed in features.txt{}",
        images.len(),
        dir.display(),
        if labels.is_some() {
            ", and their labels in labels.txt"
        } else {
            ""
        }
    );
    Ok(())
}

fn write_text(path: &Path, text: &str) -> Result<(), Error> {
    dilated::io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))
}

/// Computes and writes every image's scores (and labels); returns how many were computed.
fn write_all(
    args: &FeaturesArgs,
    model: Model,
    net: &Network,
    backend: Backend<'_>,
    images: &[PathBuf],
    labels: Option<&[PathBuf]>,
    stems: &[String],
) -> Result<usize, Error> {
    let segmenter = Segmenter::new(model, net, backend, args.tile)?;
    let bar = indicatif::ProgressBar::new(images.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images, {per_sec}, {elapsed} elapsed, {eta} left",
        )
        .map_err(|e| Error::Internal(format!("progress bar: {e}")))?,
    );
    let mut computed = 0;
    for (i, image_path) in images.iter().enumerate() {
        let npy = args.output_dir.join(format!("{}.npy", stems[i]));
        let label_out = args.output_dir.join(format!("{}_labels.png", stems[i]));
        let have = npy.exists() && (labels.is_none() || label_out.exists());
        if !(args.skip_existing && have) {
            let image = load_image_bgr(image_path)?;
            let scores = segmenter.scores(image.view(), &mut |_, _| {})?;
            if let Some(labels) = labels {
                let full = load_label_png(&labels[i])?;
                let (h, w, _) = image.dim();
                if full.dim() != (h, w) {
                    return Err(Error::ShapeMismatch {
                        context: format!("{} and {}", image_path.display(), labels[i].display()),
                        left_name: "image (H, W)",
                        left: vec![h, w],
                        right_name: "labels (H, W)",
                        right: vec![full.dim().0, full.dim().1],
                    });
                }
                let (_, sh, sw) = scores.dim();
                let (sy, sx) = segmenter.stride();
                let small = Array2::from_shape_fn((sh, sw), |(y, x)| full[[y * sy, x * sx]]);
                save_label_png(&label_out, &small)?;
            }
            write_npy(&npy, &scores)?;
            computed += 1;
        }
        bar.inc(1);
    }
    bar.finish();
    Ok(computed)
}
