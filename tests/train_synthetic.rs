//! The context module learns what the synthetic context task asks: from the identity
//! initialisation, whose mean IoU is that of the front-end's scores, training lowers the test
//! loss and raises the test mean IoU far above it (the README's curve is a longer run of this).

mod common;

use common::run_cli;
use dilated::io::{save_label_png, write_npy};
use dilated::train::synthetic::context_item;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[test]
fn training_the_context_module_beats_the_identity_initialisation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = StdRng::seed_from_u64(0);
    let mut lists = [String::new(), String::new(), String::new(), String::new()];
    for i in 0..40 {
        let (scores, labels) = context_item(&mut rng, 11, 48, 48);
        let (f, l) = (d.join(format!("{i}.npy")), d.join(format!("{i}.png")));
        write_npy(&f, &scores).unwrap();
        save_label_png(&l, &labels).unwrap();
        let k = if i < 30 { 0 } else { 2 };
        lists[k] += &format!("{}\n", f.display());
        lists[k + 1] += &format!("{}\n", l.display());
    }
    let names = ["tf.txt", "tl.txt", "vf.txt", "vl.txt"];
    for (name, text) in names.iter().zip(&lists) {
        std::fs::write(d.join(name), text).unwrap();
    }
    let path = |n: &str| d.join(n).to_str().unwrap().to_string();
    let (tf, tl, vf, vl, log, out) = (
        path("tf.txt"),
        path("tl.txt"),
        path("vf.txt"),
        path("vl.txt"),
        path("curve.csv"),
        path("ctx.safetensors"),
    );
    let o = run_cli(
        &[
            "train",
            "context",
            "--model",
            "dilation7_kitti",
            "--train-features",
            &tf,
            "--train-labels",
            &tl,
            "--test-features",
            &vf,
            "--test-labels",
            &vl,
            "--test-interval",
            "150",
            "--batch",
            "8",
            "--iters",
            "300",
            "--lr",
            "0.01",
            "--output",
            &out,
            "--log",
            &log,
            "--cpu",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Test rows: iteration,,,test_loss,miou,pixel_accuracy.
    let text = std::fs::read_to_string(&log).unwrap();
    let tests: Vec<(u64, f64, f64)> = text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(1) == Some(""))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(tests.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 150, 300]);
    let (start, end) = (tests[0], tests[2]);
    assert!(end.1 < 0.25 * start.1, "test loss {} -> {}", start.1, end.1);
    assert!(end.2 > start.2 + 0.4, "test mIoU {} -> {}", start.2, end.2);
    // 300 training rows, one per iteration.
    assert_eq!(
        text.lines()
            .filter(|l| l.split(',').nth(1) != Some(""))
            .count(),
        1 + 300
    );
}
