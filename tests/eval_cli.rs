//! `dilated eval` end to end on label PNGs written here with known content: the IoUs, mean IoU
//! and pixel accuracy worked out by hand, the same numbers from class-id and palette-colour
//! predictions, the JSON file, and every error naming the file at fault.

mod common;

use std::path::{Path, PathBuf};

use common::{run_cli, tmpdir};

/// Ground truth and predictions of two images, three classes (255: ignored).
const LABEL_A: [[u8; 4]; 3] = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]];
const PRED_A: [[u8; 4]; 3] = [[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 0, 1]];
const LABEL_B: [[u8; 2]; 2] = [[1, 2], [255, 0]];
const PRED_B: [[u8; 2]; 2] = [[1, 2], [2, 0]];

// By hand, over the 13 non-ignored pixels, (label, prediction) counts:
//   label 0: predicted 0 four times (A: 1 + 2, B: 1), 1 once          -> row 5
//   label 1: predicted 1 four times (A: 2 + 1, B: 1), 2 once          -> row 5
//   label 2: predicted 2 twice (A: 1, B: 1), 0 once                   -> row 3
// columns: predicted 0: 4 + 0 + 1 = 5, predicted 1: 1 + 4 = 5, predicted 2: 1 + 2 = 3.
// IoU = TP / (row + column - TP): class 0 4/6, class 1 4/6, class 2 2/4.
const CONFUSION: [[u64; 3]; 3] = [[4, 1, 0], [0, 4, 1], [1, 0, 2]];
const IOU: [f64; 3] = [4.0 / 6.0, 4.0 / 6.0, 2.0 / 4.0];
/// (4/6 + 4/6 + 2/4) / 3 = 11/18 = 61.11 %.
const MEAN_IOU: f64 = 11.0 / 18.0;
/// 10 of 13 pixels right = 76.92 %.
const PIXEL_ACCURACY: f64 = 10.0 / 13.0;

/// The VOC colours of classes 0, 1 and 2 (background, aeroplane, bicycle).
const VOC_COLOURS: [[u8; 3]; 3] = [[0, 0, 0], [128, 0, 0], [0, 128, 0]];

fn rows<const W: usize>(a: &[[u8; W]]) -> Vec<Vec<u8>> {
    a.iter().map(|r| r.to_vec()).collect()
}

fn gray_png(path: &Path, ids: &[Vec<u8>]) {
    let (h, w) = (ids.len() as u32, ids[0].len() as u32);
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([ids[y as usize][x as usize]]))
        .save(path)
        .unwrap();
}

fn colour_png(path: &Path, ids: &[Vec<u8>]) {
    let (h, w) = (ids.len() as u32, ids[0].len() as u32);
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb(VOC_COLOURS[ids[y as usize][x as usize] as usize])
    })
    .save(path)
    .unwrap();
}

/// A palette-indexed PNG whose indices are the class ids (as VOC's ground truth is stored).
fn indexed_png(path: &Path, ids: &[Vec<u8>]) {
    let (h, w) = (ids.len() as u32, ids[0].len() as u32);
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    let mut palette = vec![0u8; 256 * 3];
    for (i, c) in VOC_COLOURS.iter().enumerate() {
        palette[3 * i..3 * i + 3].copy_from_slice(c);
    }
    enc.set_palette(palette);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&ids.concat()).unwrap();
}

fn list(path: &Path, files: &[&Path]) -> PathBuf {
    let text: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// The fixture: labels (A as grayscale, B palette-indexed), predictions as class ids and as
/// VOC colours, and the three lists.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    labels: PathBuf,
    ids: PathBuf,
    colours: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tmpdir();
    let root = dir.path().to_path_buf();
    let p = |name: &str| root.join(name);
    gray_png(&p("label_a.png"), &rows(&LABEL_A));
    indexed_png(&p("label_b.png"), &rows(&LABEL_B));
    gray_png(&p("pred_a.png"), &rows(&PRED_A));
    gray_png(&p("pred_b.png"), &rows(&PRED_B));
    colour_png(&p("colour_a.png"), &rows(&PRED_A));
    colour_png(&p("colour_b.png"), &rows(&PRED_B));
    let labels = list(&p("labels.txt"), &[&p("label_a.png"), &p("label_b.png")]);
    let ids = list(&p("ids.txt"), &[&p("pred_a.png"), &p("pred_b.png")]);
    let colours = list(&p("colours.txt"), &[&p("colour_a.png"), &p("colour_b.png")]);
    Fixture {
        _dir: dir,
        root,
        labels,
        ids,
        colours,
    }
}

fn eval(predictions: &Path, labels: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "eval",
        "--predictions",
        predictions.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_cli(&args, &[])
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails unless the run failed with a message containing every one of `needles`.
fn assert_fails(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(a: &serde_json::Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-12)
}

#[test]
fn class_ids_give_the_hand_worked_numbers() {
    let f = fixture();
    let stdout = stdout_of(&eval(&f.ids, &f.labels, &["--classes", "3"]));
    assert!(stdout.contains("mIoU 61.11%"), "{stdout}");
    assert!(stdout.contains("pixel accuracy 76.92%"), "{stdout}");
    assert!(stdout.contains("13 pixels"), "{stdout}");
    let class_lines: Vec<&str> = stdout.lines().filter(|l| l.contains("IoU")).collect();
    assert!(class_lines[0].contains("66.67%"), "{stdout}");
    assert!(class_lines[1].contains("66.67%"), "{stdout}");
    assert!(class_lines[2].contains("50.00%"), "{stdout}");
}

#[test]
fn a_class_present_nowhere_does_not_count_in_the_mean() {
    let f = fixture();
    let stdout = stdout_of(&eval(&f.ids, &f.labels, &["--classes", "5"]));
    assert!(stdout.contains("mIoU 61.11%"), "{stdout}");
    assert!(stdout.contains("n/a"), "{stdout}");
}

#[test]
fn palette_colours_and_class_ids_give_the_same_numbers_and_json() {
    let f = fixture();
    let (j_ids, j_colours) = (f.root.join("ids.json"), f.root.join("colours.json"));
    let model = ["--model", "dilation8_pascal_voc", "--json"];
    let a = stdout_of(&eval(
        &f.ids,
        &f.labels,
        &[&model[..], &[j_ids.to_str().unwrap()]].concat(),
    ));
    let b = stdout_of(&eval(
        &f.colours,
        &f.labels,
        &[&model[..], &[j_colours.to_str().unwrap()]].concat(),
    ));
    assert!(
        a.contains("mIoU 61.11%") && a.contains("pixel accuracy 76.92%"),
        "{a}"
    );
    assert!(a.contains("aeroplane") && a.contains("bicycle"), "{a}");
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("wrote"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&a), strip(&b));
    let (ja, jb) = (read_json(&j_ids), read_json(&j_colours));
    for key in [
        "mean_iou",
        "pixel_accuracy",
        "per_class",
        "confusion",
        "pixels",
    ] {
        assert_eq!(ja[key], jb[key], "{key}");
    }

    // The JSON holds the hand-worked numbers.
    assert_eq!(ja["model"], "dilation8_pascal_voc");
    assert_eq!(ja["classes"], 21);
    assert_eq!(ja["images"], 2);
    assert_eq!(ja["pixels"], 13);
    assert!(close(&ja["mean_iou"], MEAN_IOU), "{}", ja["mean_iou"]);
    assert!(close(&ja["pixel_accuracy"], PIXEL_ACCURACY));
    let per_class = ja["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 21);
    for (c, iou) in IOU.iter().enumerate() {
        assert!(close(&per_class[c]["iou"], *iou), "class {c}");
    }
    assert_eq!(per_class[1]["name"], "aeroplane");
    assert!(per_class[3]["iou"].is_null());
    let confusion = ja["confusion"].as_array().unwrap();
    for (l, row) in CONFUSION.iter().enumerate() {
        for (p, &n) in row.iter().enumerate() {
            assert_eq!(confusion[l][p], n, "label {l}, prediction {p}");
        }
    }
}

#[test]
fn mismatched_lists_are_an_error_naming_both() {
    let f = fixture();
    let short = list(&f.root.join("short.txt"), &[&f.root.join("pred_a.png")]);
    let json = f.root.join("out.json");
    let out = eval(
        &short,
        &f.labels,
        &["--classes", "3", "--json", json.to_str().unwrap()],
    );
    assert_fails(&out, &["short.txt", "labels.txt", "1", "2"]);
    assert!(!json.exists(), "no partial JSON");
}

#[test]
fn images_of_different_sizes_are_an_error_naming_both() {
    let f = fixture();
    let swapped = list(
        &f.root.join("swapped.txt"),
        &[&f.root.join("pred_b.png"), &f.root.join("pred_a.png")],
    );
    let out = eval(&swapped, &f.labels, &["--classes", "3"]);
    assert_fails(&out, &["pred_b.png", "label_a.png", "2x2", "4x3"]);
}

#[test]
fn a_prediction_class_past_the_classes_is_an_error_naming_the_file() {
    let f = fixture();
    let out = eval(&f.ids, &f.labels, &["--classes", "2"]);
    assert_fails(&out, &["pred_a.png", "class 2", "2 classes"]);
}

#[test]
fn a_label_past_the_classes_is_an_error_naming_the_file() {
    let f = fixture();
    // Predictions of class 0 only, so the label check is the one that fails.
    let zeros = f.root.join("zeros.png");
    gray_png(&zeros, &vec![vec![0u8; 4]; 3]);
    let zeros_b = f.root.join("zeros_b.png");
    gray_png(&zeros_b, &vec![vec![0u8; 2]; 2]);
    let preds = list(&f.root.join("zeros.txt"), &[&zeros, &zeros_b]);
    let out = eval(&preds, &f.labels, &["--classes", "2"]);
    assert_fails(&out, &["label_a.png", "class 2", "255"]);
}

#[test]
fn a_colour_outside_the_palette_is_an_error_naming_the_file() {
    let f = fixture();
    let odd = f.root.join("odd.png");
    let mut img = image::RgbImage::from_pixel(4, 3, image::Rgb([0, 0, 0]));
    img.put_pixel(2, 1, image::Rgb([1, 2, 3]));
    img.save(&odd).unwrap();
    let preds = list(
        &f.root.join("odd.txt"),
        &[&odd, &f.root.join("colour_b.png")],
    );
    let out = eval(&preds, &f.labels, &["--model", "pascal_voc"]);
    assert_fails(&out, &["odd.png", "(1, 2, 3)", "x 2, y 1", "palette"]);
}

#[test]
fn colour_predictions_need_the_model() {
    let f = fixture();
    let out = eval(&f.colours, &f.labels, &["--classes", "21"]);
    assert_fails(&out, &["colour_a.png", "Rgb"]);
}

#[test]
fn unreadable_files_are_errors_naming_them() {
    let f = fixture();
    let missing = list(
        &f.root.join("missing.txt"),
        &[&f.root.join("nowhere.png"), &f.root.join("pred_b.png")],
    );
    assert_fails(
        &eval(&missing, &f.labels, &["--classes", "3"]),
        &["nowhere.png"],
    );
    let garbage = f.root.join("garbage.png");
    std::fs::write(&garbage, b"not a png at all").unwrap();
    let bad = list(
        &f.root.join("garbage.txt"),
        &[&garbage, &f.root.join("pred_b.png")],
    );
    assert_fails(
        &eval(&bad, &f.labels, &["--classes", "3"]),
        &["garbage.png"],
    );
    assert_fails(
        &eval(&f.root.join("no-list.txt"), &f.labels, &["--classes", "3"]),
        &["no-list.txt"],
    );
}

#[test]
fn classes_must_agree_with_the_model() {
    let f = fixture();
    let out = eval(
        &f.ids,
        &f.labels,
        &["--classes", "19", "--model", "dilation8_pascal_voc"],
    );
    assert_fails(&out, &["--classes 19", "dilation8_pascal_voc", "21"]);
    // Neither given: a usage error.
    let out = eval(&f.ids, &f.labels, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--classes"));
}
