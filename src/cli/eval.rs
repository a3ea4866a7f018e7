//! `dilated eval`: the accuracy of predicted label PNGs against ground-truth label PNGs, as one
//! confusion matrix over every non-ignored pixel of every pair: per-class IoU, mean IoU and
//! pixel accuracy.

use std::path::{Path, PathBuf};

use dilated::Error;
use dilated::io::{load_label_png, load_label_png_with_palette, read_list, write_file};
use dilated::net::Model;
use dilated::segment::{class_names, palette};
use dilated::train::{ConfusionMatrix, IGNORE_LABEL, Metrics, percent};
use ndarray::Array2;

/// Arguments of `dilated eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// List of predicted label PNGs, one path per line: 8-bit grayscale or palette-indexed PNGs
    /// of class ids, or (with --model) colour PNGs in the model's palette, as `dilated segment`
    /// writes them.
    #[arg(long)]
    pub predictions: PathBuf,
    /// List of ground-truth label PNGs (8-bit grayscale or palette-indexed class ids, 255
    /// ignored), line by line with the predictions.
    #[arg(long)]
    pub labels: PathBuf,
    /// Number of classes; may be left out with --model, and must agree with it.
    #[arg(long, required_unless_present = "model")]
    pub classes: Option<usize>,
    /// The model the predictions come from: its class count, class names and palette.
    #[arg(long)]
    pub model: Option<String>,
    /// Also write the results as JSON (fractions, not percentages, and the confusion matrix).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Reads every pair, accumulates the confusion matrix and prints (and writes) the results.
pub fn execute(args: &EvalArgs) -> Result<(), Error> {
    let model = args.model.as_deref().map(Model::from_name).transpose()?;
    let classes = match (args.classes, model) {
        (Some(c), Some(m)) if c != m.info().classes => {
            return Err(Error::InvalidSpec {
                context: "--classes".into(),
                reason: format!(
                    "--classes {c} disagrees with --model {}, which has {} classes",
                    m.name(),
                    m.info().classes
                ),
            });
        }
        (Some(c), _) => c,
        (None, Some(m)) => m.info().classes,
        (None, None) => {
            return Err(Error::InvalidSpec {
                context: "dilated eval".into(),
                reason: "give --classes or --model".into(),
            });
        }
    };
    if classes == 0 || classes > IGNORE_LABEL as usize {
        return Err(Error::InvalidSpec {
            context: "--classes".into(),
            reason: format!(
                "{classes} classes: label PNGs hold class ids 0..{} (and {IGNORE_LABEL}, ignored)",
                IGNORE_LABEL - 1
            ),
        });
    }
    let predictions = read_list(&args.predictions)?;
    let labels = read_list(&args.labels)?;
    if predictions.len() != labels.len() {
        return Err(Error::InvalidSpec {
            context: "dilated eval".into(),
            reason: format!(
                "{} lists {} predictions but {} lists {} label images; they must correspond \
                 line by line",
                args.predictions.display(),
                predictions.len(),
                args.labels.display(),
                labels.len()
            ),
        });
    }
    if predictions.is_empty() {
        return Err(Error::InvalidSpec {
            context: "dilated eval".into(),
            reason: format!("{} lists no images", args.predictions.display()),
        });
    }
    let colours = model.map(palette);
    let mut confusion = ConfusionMatrix::new(classes);
    for (p, l) in predictions.iter().zip(&labels) {
        let prediction = match &colours {
            Some(c) => load_label_png_with_palette(p, c)?,
            None => load_label_png(p)?,
        };
        let label = load_label_png(l)?;
        if prediction.dim() != label.dim() {
            let (ph, pw) = prediction.dim();
            let (lh, lw) = label.dim();
            return Err(Error::InvalidSpec {
                context: "dilated eval".into(),
                reason: format!(
                    "the prediction {} is {pw}x{ph} but its label image {} is {lw}x{lh}",
                    p.display(),
                    l.display()
                ),
            });
        }
        check_classes(p, &prediction, classes, "prediction", false)?;
        check_classes(l, &label, classes, "label", true)?;
        confusion.add(label.view(), prediction.view())?;
    }
    let metrics = confusion.metrics();
    let names = model.map(class_names);
    println!(
        "{} image(s), {} pixels counted, {classes} classes{}",
        predictions.len(),
        confusion.total(),
        model.map_or(String::new(), |m| format!(" ({})", m.name()))
    );
    for (c, iou) in metrics.iou.iter().enumerate() {
        let name = names.and_then(|n| n.get(c)).copied().unwrap_or("");
        println!("  class {c:>3} {name:<14} IoU {:>7}", percent(*iou));
    }
    let present = metrics.iou.iter().filter(|v| v.is_some()).count();
    println!(
        "mIoU {}, pixel accuracy {} (mean over the {present} classes present in the labels or \
         the predictions)",
        percent(metrics.mean_iou),
        percent(metrics.pixel_accuracy)
    );
    if let Some(path) = &args.json {
        write_json(path, args, model, &confusion, &metrics, predictions.len())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Errors, naming the file and the first pixel, unless every value of `ids` is a class below
/// `classes` (or, for labels, [`IGNORE_LABEL`]).
fn check_classes(
    path: &Path,
    ids: &Array2<u8>,
    classes: usize,
    what: &str,
    ignore: bool,
) -> Result<(), Error> {
    let bad = ids
        .indexed_iter()
        .find(|&(_, &v)| (v as usize) >= classes && !(ignore && v as u32 == IGNORE_LABEL));
    match bad {
        None => Ok(()),
        Some(((y, x), &v)) => Err(Error::InvalidFile {
            path: path.display().to_string(),
            format: "label PNG",
            reason: format!(
                "the {what} of pixel (x {x}, y {y}) is class {v}, but there are {classes} \
                 classes (0..{}){}",
                classes - 1,
                if ignore {
                    format!(" and {IGNORE_LABEL} for ignored pixels")
                } else {
                    String::new()
                }
            ),
        }),
    }
}

/// The results as JSON: fractions, per-class IoU (with names where the model gives them) and
/// the confusion matrix (rows: labels, columns: predictions).
fn write_json(
    path: &Path,
    args: &EvalArgs,
    model: Option<Model>,
    confusion: &ConfusionMatrix,
    metrics: &Metrics,
    images: usize,
) -> Result<(), Error> {
    let classes = confusion.classes();
    let names = model.map(class_names);
    let per_class: Vec<serde_json::Value> = metrics
        .iou
        .iter()
        .enumerate()
        .map(|(c, iou)| {
            serde_json::json!({
                "class": c,
                "name": names.and_then(|n| n.get(c)),
                "iou": iou,
                "labelled_pixels": (0..classes).map(|p| confusion.count(c, p)).sum::<u64>(),
                "predicted_pixels": (0..classes).map(|l| confusion.count(l, c)).sum::<u64>(),
            })
        })
        .collect();
    let matrix: Vec<Vec<u64>> = (0..classes)
        .map(|l| (0..classes).map(|p| confusion.count(l, p)).collect())
        .collect();
    let value = serde_json::json!({
        "predictions": args.predictions.display().to_string(),
        "labels": args.labels.display().to_string(),
        "model": model.map(|m| m.name()),
        "classes": classes,
        "images": images,
        "pixels": confusion.total(),
        "mean_iou": metrics.mean_iou,
        "pixel_accuracy": metrics.pixel_accuracy,
        "per_class": per_class,
        "confusion": matrix,
    });
    let text = serde_json::to_string_pretty(&value)
        .map_err(|e| Error::Internal(format!("JSON of the results: {e}")))?;
    write_file(path, format!("{text}\n").as_bytes())
}
