//! The command-line tool and model weights end to end: caffemodel files written in both
//! protobuf forms load into presets and give the same output as the arrays they came from;
//! convert, run and segment work and fail cleanly; bench names each layer's kernel.

mod common;

use common::{gpu, random4, rel_error, rng};
use dilated::io::{read_npy4, write_npy};
use dilated::net::{Model, Network, PresetOptions};
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::weights::{WeightSet, write_caffemodel};
use dilated::{Error, Shape};

fn dilated(args: &[&str]) -> std::process::Output {
    common::run_cli(args, &[])
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A width-reduced preset with random (not initial) weights in every layer.
fn random_preset(model: Model, divisor: usize, seed: u64) -> Network {
    let mut net = model
        .build(&PresetOptions {
            width_divisor: divisor,
            seed,
            ..Default::default()
        })
        .unwrap();
    let mut r = rng(seed);
    for layer in net.required_weights() {
        let shape = layer.weight_shape;
        let fan_in = (shape[1] * shape[2] * shape[3]) as f32;
        let w = random4(&mut r, shape).mapv(|v| v * (3.0 / fan_in).sqrt());
        let b = layer
            .bias
            .then(|| common::random1(&mut r, shape[0]).mapv(|v| v * 0.1));
        net.set_weights(&layer.name, w, b).unwrap();
    }
    net
}

#[test]
fn caffemodels_in_both_forms_load_into_presets() {
    let dir = tempfile::tempdir().unwrap();
    for (i, model) in [Model::CamVid, Model::Cityscapes].into_iter().enumerate() {
        let source = random_preset(model, 32, 70 + i as u64);
        let set = source.weight_set().unwrap();
        let shape = Shape::new(1, 3, 389, 381);
        let x = random4(&mut rng(80 + i as u64), shape.dims()).mapv(|v| v * 80.0);
        let want = CpuPlan::new(&source).unwrap().forward(x.view()).unwrap();
        for legacy in [false, true] {
            let path = dir
                .path()
                .join(format!("{}-{legacy}.caffemodel", model.name()));
            write_caffemodel(&path, &set, legacy).unwrap();
            let mut loaded = model
                .build(&PresetOptions {
                    width_divisor: 32,
                    seed: 999,
                    ..Default::default()
                })
                .unwrap();
            loaded
                .load_weights(&WeightSet::load(&path).unwrap())
                .unwrap();
            assert_eq!(
                loaded.weight_set().unwrap(),
                set,
                "{} legacy={legacy}: weights differ",
                model.name()
            );
            let got = GpuPlan::new(gpu(), &loaded, shape)
                .unwrap()
                .forward(x.view())
                .unwrap();
            let err = rel_error(got.view(), want.view());
            assert!(err <= 1e-4, "{} legacy={legacy}: {err:e}", model.name());
        }
    }
}

#[test]
fn convert_then_run_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let net = random_preset(Model::Kitti, 32, 5);
    let caffe = dir.path().join("kitti.caffemodel");
    let st = dir.path().join("kitti.safetensors");
    write_caffemodel(&caffe, &net.weight_set().unwrap(), true).unwrap();
    let out = dilated(&[
        "convert",
        caffe.to_str().unwrap(),
        st.to_str().unwrap(),
        "--model",
        "dilation7_kitti",
        "--width-divisor",
        "32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        WeightSet::load(&st).unwrap(),
        net.weight_set().unwrap(),
        "caffemodel -> safetensors changed the weights"
    );

    let x = random4(&mut rng(6), [1, 3, 381, 397]).mapv(|v| v * 60.0);
    let input = dir.path().join("x.npy");
    write_npy(&input, &x).unwrap();
    let want = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
    for cpu in [false, true] {
        let output = dir.path().join(format!("y-{cpu}.npy"));
        let mut args = vec![
            "run",
            "--model",
            "kitti",
            "--width-divisor",
            "32",
            "--weights",
            st.to_str().unwrap(),
        ];
        args.extend([
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        // The GPU run must not fall back to the CPU unnoticed.
        args.push(if cpu { "--cpu" } else { "--gpu" });
        let out = dilated(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let got = read_npy4(&output).unwrap();
        assert!(rel_error(got.view(), want.view()) <= 1e-4, "cpu={cpu}");
    }
    // The CPU in bf16: close to f32's scores, not equal to them; refused without AVX-512 BF16.
    let output = dir.path().join("y-bf16.npy");
    let out = dilated(&[
        "run",
        "--model",
        "kitti",
        "--width-divisor",
        "32",
        "--weights",
        st.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--cpu",
        "--cpu-precision",
        "bf16",
    ]);
    if dilated::cpu::fast::CpuPrecision::Bf16.is_available() {
        assert!(out.status.success(), "{}", stderr(&out));
        // The output is the softmax, which can turn bf16's ~1e-2 change of the class scores
        // into large changes of near-one-hot probabilities: the labels must agree, and the
        // values differ (they went through bf16).
        let got = read_npy4(&output).unwrap();
        let e = rel_error(got.view(), want.view());
        let (a, b) = (
            dilated::cpu::reference::argmax(got.view()),
            dilated::cpu::reference::argmax(want.view()),
        );
        let same = a.iter().zip(&b).filter(|(p, q)| p == q).count();
        eprintln!(
            "bf16 run: probabilities {e:.2e} from f32's, labels {same}/{}",
            a.len()
        );
        assert!(e > 1e-6, "bf16 error {e:e}");
        assert!(
            same as f64 >= 0.9 * a.len() as f64,
            "{same} of {} labels",
            a.len()
        );
    } else {
        assert!(!out.status.success() && stderr(&out).contains("BF16"));
        assert!(!output.exists());
    }
}

#[test]
fn bench_compares_the_cpu_precisions() {
    let out = dilated(&[
        "bench",
        "--model",
        "dilation8_pascal_voc",
        "--width-divisor",
        "16",
        "--size",
        "452x436",
        "--cpu",
        "--runs",
        "1",
        "--compare-precision",
    ]);
    if !dilated::cpu::fast::CpuPrecision::Bf16.is_available() {
        assert!(!out.status.success() && stderr(&out).contains("BF16"));
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // model, input, max rel err, labels agree, f32 MiB, bf16 MiB, f32 ms, bf16 ms, speed
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("dilation8_pascal_voc"))
        .unwrap_or_else(|| panic!("no row in:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!((row.len(), row[1]), (9, "452x436"), "{row:?}");
    let number = |i: usize| -> f64 { row[i].trim_end_matches(['%', 'x']).parse().unwrap() };
    assert!(number(2) > 1e-6 && number(2) < 5e-2, "{row:?}");
    assert!(number(3) > 50.0 && number(3) <= 100.0, "{row:?}");
    // bf16 weights are smaller, and both passes were timed.
    assert!(
        number(5) < number(4) && number(6) > 0.0 && number(7) > 0.0,
        "{row:?}"
    );
}

#[test]
fn weights_not_fitting_the_model_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let net = random_preset(Model::CamVid, 32, 7);
    let mut set = net.weight_set().unwrap();
    // Wrong width: a divisor-32 file against the divisor-16 model.
    let path = dir.path().join("w.safetensors");
    dilated::weights::write_safetensors(&path, &set).unwrap();
    let mut other = Model::CamVid
        .build(&PresetOptions {
            width_divisor: 16,
            ..Default::default()
        })
        .unwrap();
    let err = other
        .load_weights(&WeightSet::load(&path).unwrap())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("conv1_1") && msg.contains("[2, 3, 3, 3]") && msg.contains("[4, 3, 3, 3]"),
        "{msg}"
    );
    // A missing layer.
    set.remove("ctx_conv3_1");
    dilated::weights::write_safetensors(&path, &set).unwrap();
    let mut same = Model::CamVid
        .build(&PresetOptions {
            width_divisor: 32,
            ..Default::default()
        })
        .unwrap();
    let err = same
        .load_weights(&WeightSet::load(&path).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("ctx_conv3_1"), "{err}");
    assert!(!matches!(err, Error::Io { .. }));
}

#[test]
fn segment_writes_a_palette_png_and_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("in.png");
    image::RgbImage::from_fn(90, 70, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 3) as u8, ((x + y) * 2) as u8])
    })
    .save(&img)
    .unwrap();
    let weights = dir.path().join("w.safetensors");
    dilated::weights::write_safetensors(
        &weights,
        &random_preset(Model::CamVid, 32, 9).weight_set().unwrap(),
    )
    .unwrap();
    let png = dir.path().join("labels.png");
    let probs = dir.path().join("p.npy");
    let base = [
        "segment",
        img.to_str().unwrap(),
        "--model",
        "dilation8_camvid",
        "--width-divisor",
        "32",
        "--tile",
        "500x500",
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "--weights",
        weights.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--probs",
        probs.to_str().unwrap(),
        "--gpu",
    ]);
    let out = dilated(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let labels = image::open(&png).unwrap().to_rgb8();
    assert_eq!(labels.dimensions(), (90, 70));
    let palette = dilated::segment::palette(Model::CamVid);
    assert!(
        labels.pixels().all(|p| palette.contains(&p.0)),
        "colours outside the CamVid palette"
    );
    let p: ndarray::Array3<f32> = ndarray_npy::read_npy(&probs).unwrap();
    assert_eq!(p.dim(), (11, 70, 90));
    for y in 0..70 {
        for x in 0..90 {
            let column: Vec<f32> = (0..11).map(|c| p[[c, y, x]]).collect();
            assert!(
                (column.iter().sum::<f32>() - 1.0).abs() < 1e-4,
                "probabilities at ({y}, {x}) do not sum to 1"
            );
            let best = (0..11)
                .max_by(|&a, &b| column[a].total_cmp(&column[b]))
                .unwrap();
            assert_eq!(
                labels.get_pixel(x as u32, y as u32).0,
                palette[best],
                "label colour at ({y}, {x})"
            );
        }
    }

    // Errors: no output file appears, the message says what is wrong, no panic.
    let missing = dir.path().join("missing.png");
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let truncated = dir.path().join("cut.caffemodel");
    let full = dir.path().join("full.caffemodel");
    write_caffemodel(
        &full,
        &random_preset(Model::CamVid, 32, 9).weight_set().unwrap(),
        false,
    )
    .unwrap();
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out_png = dir.path().join("out.png");
    let o = out_png.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["segment", missing.to_str().unwrap(), "-o", o],
            "missing.png",
        ),
        (
            vec!["segment", text.to_str().unwrap(), "-o", o],
            "not a readable image",
        ),
        (
            vec![
                "segment",
                img.to_str().unwrap(),
                "-o",
                o,
                "--model",
                "dilation99_mars",
            ],
            "unknown model",
        ),
        (
            vec![
                "segment",
                img.to_str().unwrap(),
                "-o",
                o,
                "--model",
                "camvid",
                "--width-divisor",
                "32",
                "--weights",
                truncated.to_str().unwrap(),
            ],
            "cut.caffemodel",
        ),
        (
            vec![
                "segment",
                img.to_str().unwrap(),
                "-o",
                "/nonexistent-dir/x.png",
                "--model",
                "camvid",
                "--width-divisor",
                "32",
                "--tile",
                "500x500",
                "--gpu",
            ],
            "/nonexistent-dir/x.png",
        ),
    ];
    let before = common::files_in(dir.path());
    for (args, needle) in cases {
        let out = dilated(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            common::files_in(dir.path()),
            before,
            "{args:?} left files behind"
        );
    }
}

#[test]
fn bench_names_the_kernel_of_every_layer() {
    // Every convolution forced to the tiled kernel: fc6 of this small input has one tile and a
    // reduction of 784, so it runs split.
    let out = dilated(&[
        "bench",
        "--model",
        "dilation8_pascal_voc",
        "--width-divisor",
        "32",
        "--size",
        "380x390",
        "--runs",
        "1",
        "--no-cpu",
        "--algorithm",
        "tiled",
        "--gpu",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{stdout}"))
            .to_string()
    };
    assert!(row("conv1_1").contains("| tiled "), "{}", row("conv1_1"));
    assert!(row("fc6").contains("tiled +split"), "{}", row("fc6"));
    assert!(row("fc7").contains("tiled-1x1"), "{}", row("fc7"));
    assert!(row("pool1").contains("max_pool"), "{}", row("pool1"));
    let out = dilated(&["bench", "--plan-only", "--algorithm", "fastest"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fastest"), "{}", stderr(&out));
}

/// `--precision f16` reaches the plan: `run` gives scores close to the f32 run's but not equal
/// to them (they went through f16), a bad precision is refused by the parser, and `bench
/// --compare-precision` prints a row per model with half the memory.
#[test]
fn precision_flag_runs_f16_plans() {
    let dir = tempfile::tempdir().unwrap();
    let net = random_preset(Model::Kitti, 32, 7);
    let st = dir.path().join("kitti.safetensors");
    dilated::weights::write_safetensors(&st, &net.weight_set().unwrap()).unwrap();
    let x = random4(&mut rng(8), [1, 3, 381, 397]).mapv(|v| v * 60.0);
    let input = dir.path().join("x.npy");
    write_npy(&input, &x).unwrap();
    let run = |precision: &str| {
        let output = dir.path().join(format!("y-{precision}.npy"));
        let out = dilated(&[
            "run",
            "--model",
            "dilation7_kitti",
            "--width-divisor",
            "32",
            "--weights",
            st.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--gpu",
            "--precision",
            precision,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        read_npy4(&output).unwrap()
    };
    let full = run("f32");
    let half = run("f16");
    let err = rel_error(half.view(), full.view());
    assert!(err > 0.0 && err < 0.1, "f16 against f32: {err:e}");

    let out = dilated(&["run", "--model", "dilation7_kitti", "--precision", "f64"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expected f32 or f16"),
        "{}",
        stderr(&out)
    );

    let out = dilated(&[
        "bench",
        "--compare-precision",
        "--model",
        "dilation8_camvid",
        "--width-divisor",
        "32",
        "--size",
        "404x404",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("dilation8_camvid"))
        .unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.trim_end().ends_with("0.500"), "{row}");
}
