//! `dilated train context` end to end on a small generated dataset: the GPU and the CPU train
//! to the same weights, and a run stopped at a snapshot and resumed gives the weights of an
//! uninterrupted one.

mod common;

use std::path::{Path, PathBuf};

use common::{random4, rng, run_cli};
use dilated::io::write_npy;
use dilated::weights::{WeightSet, read_safetensors};
use ndarray::Array3;
use rand::Rng;

/// Six items of 11-class scores at 20 x 20 with random labels (a tenth ignored), and the two
/// list files; returns (features list, labels list).
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let mut r = rng(40);
    let (mut features, mut labels) = (String::new(), String::new());
    for i in 0..6 {
        let x = random4(&mut r, [1, 11, 20, 20])
            .into_shape_with_order((11, 20, 20))
            .unwrap();
        let f = dir.join(format!("f{i}.npy"));
        write_npy(&f, &x).unwrap();
        let y = Array3::from_shape_simple_fn((1, 20, 20), || {
            if r.random_bool(0.1) {
                255u8
            } else {
                r.random_range(0..11)
            }
        });
        let l = dir.join(format!("l{i}.png"));
        image::GrayImage::from_fn(20, 20, |x, yy| {
            image::Luma([y[[0, yy as usize, x as usize]]])
        })
        .save(&l)
        .unwrap();
        features += &format!("{}\n", f.display());
        labels += &format!("{}\n", l.display());
    }
    let (fl, ll) = (dir.join("features.txt"), dir.join("labels.txt"));
    std::fs::write(&fl, features).unwrap();
    std::fs::write(&ll, labels).unwrap();
    (fl, ll)
}

/// Runs `dilated train context` on the dataset with `extra` flags; panics with the tool's
/// output unless it succeeds.
fn train(lists: &(PathBuf, PathBuf), output: &Path, extra: &[&str]) {
    let (f, l) = (lists.0.to_str().unwrap(), lists.1.to_str().unwrap());
    let mut args = vec![
        "train",
        "context",
        "--model",
        "dilation7_kitti",
        "--train-features",
        f,
        "--train-labels",
        l,
        "--batch",
        "2",
        "--lr",
        "0.01",
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run_cli(&args, &[]);
    assert!(
        out.status.success(),
        "{args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Largest difference between two weight sets over their largest magnitude.
fn rel_diff(a: &WeightSet, b: &WeightSet) -> f64 {
    let (mut diff, mut scale) = (0f64, 0f64);
    for (name, wa) in a.iter() {
        let wb = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(wa.weight.dim(), wb.weight.dim(), "{name}");
        for (x, y) in wa.weight.iter().zip(wb.weight.iter()) {
            diff = diff.max((*x as f64 - *y as f64).abs());
            scale = scale.max((*y as f64).abs());
        }
        for (x, y) in wa.bias.iter().flatten().zip(wb.bias.iter().flatten()) {
            diff = diff.max((*x as f64 - *y as f64).abs());
        }
    }
    diff / scale.max(f64::MIN_POSITIVE)
}

#[test]
fn gpu_and_cpu_train_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    let (gpu, cpu) = (
        dir.path().join("gpu.safetensors"),
        dir.path().join("cpu.safetensors"),
    );
    train(&lists, &gpu, &["--iters", "5", "--no-shuffle", "--gpu"]);
    train(&lists, &cpu, &["--iters", "5", "--no-shuffle", "--cpu"]);
    let (g, c) = (
        read_safetensors(&gpu).unwrap(),
        read_safetensors(&cpu).unwrap(),
    );
    assert_eq!(g.len(), 7, "the seven context layers");
    let diff = rel_diff(&g, &c);
    assert!(diff <= 1e-4, "GPU vs CPU weights after 5 steps: {diff:e}");
    // And training changed them: the identity initialisation is not what came out.
    let start = dir.path().join("start.safetensors");
    train(&lists, &start, &["--iters", "0", "--cpu"]);
    assert!(rel_diff(&read_safetensors(&start).unwrap(), &c) > 1e-3);
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dataset(dir.path());
    for device in ["--cpu", "--gpu"] {
        let whole = dir.path().join(format!("whole{device}.safetensors"));
        train(&lists, &whole, &["--iters", "6", "--seed", "3", device]);
        // Stopped after a snapshot at 4, then resumed to 6 (shuffled batches, momentum on).
        let part = dir.path().join(format!("part{device}.safetensors"));
        train(
            &lists,
            &part,
            &[
                "--iters",
                "4",
                "--snapshot-every",
                "2",
                "--seed",
                "3",
                device,
            ],
        );
        let state = format!("{}.solverstate", part.display());
        assert!(Path::new(&state).exists(), "the snapshot's state");
        train(
            &lists,
            &part,
            &["--iters", "6", "--resume", &state, "--seed", "3", device],
        );
        let diff = rel_diff(
            &read_safetensors(&part).unwrap(),
            &read_safetensors(&whole).unwrap(),
        );
        assert_eq!(diff, 0.0, "{device}: resumed vs uninterrupted");
    }
}
