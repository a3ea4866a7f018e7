//! `dilated train frontend` and `dilated train joint` end to end on a few generated images:
//! starting from partial weights (an inner product's fc6 included), test passes, resuming,
//! and clear errors.

mod common;

use std::path::{Path, PathBuf};

use common::run_cli;
use dilated::net::{FrontEnd, Model};
use dilated::weights::{LayerWeights, WeightSet, read_safetensors, write_safetensors};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Three images of different sizes, a checkerboard of two classes with a few ignored labels,
/// and their lists; returns (images list, labels list).
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let mut r = StdRng::seed_from_u64(70);
    let (mut images, mut labels) = (String::new(), String::new());
    for i in 0..3u32 {
        let (w, h) = (40 + 3 * i, 30 + 5 * i);
        let class = |x: u32, y: u32| ((x / 10 + y / 10) % 2) as u8;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let k = class(x, y);
            image::Rgb([if k == 1 { 200 } else { 30 }, r.random(), 90])
        });
        let lab = image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([if r.random_bool(0.05) {
                255
            } else {
                class(x, y)
            }])
        });
        let (ip, lp) = (dir.join(format!("i{i}.png")), dir.join(format!("l{i}.png")));
        img.save(&ip).unwrap();
        lab.save(&lp).unwrap();
        images += &format!("{}\n", ip.display());
        labels += &format!("{}\n", lp.display());
    }
    let (il, ll) = (dir.join("images.txt"), dir.join("labels.txt"));
    std::fs::write(&il, images).unwrap();
    std::fs::write(&ll, labels).unwrap();
    (il, ll)
}

/// Starting weights of the KITTI front-end at width / 32 without its final layer, fc6 stored
/// as the inner product VGG-16 has (`[out, in * 49, 1, 1]`).
fn start_weights(path: &Path) -> WeightSet {
    let info = Model::Kitti.info();
    let net = FrontEnd {
        classes: info.classes,
        width_divisor: 32,
        final_layer: info.final_layer,
    }
    .build("start", 5)
    .unwrap();
    let mut set = net.weight_set().unwrap();
    set.remove("final").unwrap();
    let fc6 = set.remove("fc6").unwrap();
    let [o, i, kh, kw] = fc6.weight_shape();
    let flat = fc6
        .weight
        .clone()
        .into_shape_with_order((o, i * kh * kw, 1, 1))
        .unwrap();
    set.insert(
        "fc6",
        LayerWeights::new("fc6", flat, fc6.bias.clone()).unwrap(),
    );
    write_safetensors(path, &set).unwrap();
    set
}

/// Runs `dilated train <stage>` on the dataset (KITTI at width / 32, 396 crops, batch 2) with
/// `extra` flags.
fn run_train(
    stage: &str,
    lists: &(PathBuf, PathBuf),
    output: &Path,
    extra: &[&str],
) -> std::process::Output {
    let (i, l) = (lists.0.to_str().unwrap(), lists.1.to_str().unwrap());
    let mut args = vec![
        "train",
        stage,
        "--model",
        "dilation7_kitti",
        "--width-divisor",
        "32",
        "--train-images",
        i,
        "--train-labels",
        l,
        "--crop-size",
        "396",
        "--batch",
        "2",
        "--lr",
        "0.001",
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_cli(&args, &[])
}

/// [`run_train`], which must succeed; its stdout and stderr.
fn train(stage: &str, lists: &(PathBuf, PathBuf), output: &Path, extra: &[&str]) -> String {
    let out = run_train(stage, lists, output, extra);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{stage} {extra:?}\n{text}");
    text
}

#[test]
fn frontend_starts_from_partial_weights_and_reports_test_passes() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let start = dir.path().join("start.safetensors");
    let start_set = start_weights(&start);
    let out = dir.path().join("fe.safetensors");
    let (i, l) = (lists.0.to_str().unwrap(), lists.1.to_str().unwrap());
    let text = train(
        "frontend",
        &lists,
        &out,
        &[
            "--iters",
            "2",
            "--weights",
            start.to_str().unwrap(),
            "--test-images",
            i,
            "--test-labels",
            l,
            "--cpu",
        ],
    );
    assert!(text.contains("has no weights for final"), "{text}");
    assert!(text.contains("iteration 2: test loss"), "{text}");
    assert!(text.contains("mIoU"), "{text}");
    let trained = read_safetensors(&out).unwrap();
    assert_eq!(trained.len(), 16, "13 convolutions, fc6, fc7 and final");
    // fc6 came from the inner-product weights, in the convolution's shape, and moved a little.
    let fc6 = trained.get("fc6").unwrap();
    let flat = &start_set.get("fc6").unwrap().weight;
    assert_eq!(fc6.weight.len(), flat.len());
    assert_ne!(fc6.weight.dim().2, 1);
    let diff = fc6
        .weight
        .iter()
        .zip(flat.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 0.0 && diff < 0.1, "fc6 moved by {diff}");
}

#[test]
fn a_resumed_frontend_run_ends_where_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let start = dir.path().join("start.safetensors");
    start_weights(&start);
    let w = start.to_str().unwrap();
    let whole = dir.path().join("whole.safetensors");
    train(
        "frontend",
        &lists,
        &whole,
        &["--iters", "3", "--weights", w, "--seed", "4", "--cpu"],
    );
    let part = dir.path().join("part.safetensors");
    train(
        "frontend",
        &lists,
        &part,
        &[
            "--iters",
            "2",
            "--weights",
            w,
            "--seed",
            "4",
            "--snapshot-every",
            "2",
            "--cpu",
        ],
    );
    let state = format!("{}.solverstate", part.display());
    train(
        "frontend",
        &lists,
        &part,
        &["--iters", "3", "--resume", &state, "--seed", "4", "--cpu"],
    );
    let (a, b) = (
        read_safetensors(&part).unwrap(),
        read_safetensors(&whole).unwrap(),
    );
    for (name, wa) in a.iter() {
        let wb = b.get(name).unwrap();
        assert!(
            wa.weight == wb.weight && wa.bias == wb.bias,
            "{name} differs after resuming"
        );
    }
    // Another seed draws other crops and dropout masks, so other weights.
    let other = dir.path().join("other.safetensors");
    train(
        "frontend",
        &lists,
        &other,
        &["--iters", "3", "--weights", w, "--seed", "5", "--cpu"],
    );
    let c = read_safetensors(&other).unwrap();
    assert!(
        c.iter()
            .any(|(name, wc)| wc.weight != b.get(name).unwrap().weight)
    );
}

#[test]
fn joint_trains_the_front_end_and_the_context_module() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let start = dir.path().join("start.safetensors");
    start_weights(&start);
    let out = dir.path().join("joint.safetensors");
    let text = train(
        "joint",
        &lists,
        &out,
        &[
            "--iters",
            "1",
            "--weights",
            start.to_str().unwrap(),
            "--cpu",
        ],
    );
    assert!(
        text.contains("ctx_conv1_1"),
        "the context layers start from identity: {text}"
    );
    let trained = read_safetensors(&out).unwrap();
    assert_eq!(
        trained.len(),
        16 + 7,
        "front-end and the KITTI context module"
    );
}

#[test]
fn bad_crop_sizes_and_missing_weights_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let (i, l) = (lists.0.to_str().unwrap(), lists.1.to_str().unwrap());
    let out = dir.path().join("x.safetensors");
    let base = [
        "train",
        "frontend",
        "--model",
        "dilation7_kitti",
        "--train-images",
        i,
        "--train-labels",
        l,
        "--output",
        out.to_str().unwrap(),
        "--cpu",
    ];
    let no_weights = run_cli(&base, &[]);
    assert!(!no_weights.status.success());
    assert!(String::from_utf8_lossy(&no_weights.stderr).contains("--weights"));
    let start = dir.path().join("start.safetensors");
    start_weights(&start);
    let mut args = base.to_vec();
    args.extend([
        "--weights",
        start.to_str().unwrap(),
        "--width-divisor",
        "32",
        "--crop-size",
        "400",
    ]);
    let bad = run_cli(&args, &[]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--crop-size") && err.contains("372"),
        "{err}"
    );
    assert!(!out.exists(), "no output after an error");
}

#[test]
fn gpu_and_cpu_train_the_front_end_with_dropout_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let start = dir.path().join("start.safetensors");
    start_weights(&start);
    let w = start.to_str().unwrap();
    let mut sets = Vec::new();
    for device in ["--gpu", "--cpu"] {
        let out = dir.path().join(format!("fe{device}.safetensors"));
        let text = train(
            "frontend",
            &lists,
            &out,
            &["--iters", "2", "--weights", w, "--seed", "8", device],
        );
        if device == "--gpu" {
            assert!(
                text.contains("on the GPU") && text.contains("GPU memory of the training plan"),
                "{text}"
            );
        }
        sets.push(read_safetensors(&out).unwrap());
    }
    let (mut diff, mut scale) = (0f64, 0f64);
    for (name, g) in sets[0].iter() {
        let c = sets[1].get(name).unwrap();
        for (a, b) in g.weight.iter().zip(c.weight.iter()) {
            diff = diff.max((a - b).abs() as f64);
            scale = scale.max(b.abs() as f64);
        }
    }
    assert!(
        diff / scale < 1e-4,
        "GPU vs CPU front-end weights: {:e}",
        diff / scale
    );
}

#[test]
fn a_training_plan_over_the_budget_is_refused_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let start = dir.path().join("start.safetensors");
    start_weights(&start);
    let out = dir.path().join("fe.safetensors");
    let o = run_train(
        "frontend",
        &lists,
        &out,
        &[
            "--iters",
            "1",
            "--weights",
            start.to_str().unwrap(),
            "--gpu",
            "--max-memory",
            "1M",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("budget"), "{err}");
    assert!(!out.exists());
}
