//! Receptive fields: the effective field of the library against direct computations (the
//! weights of a single dilated convolution, central finite differences of a small stack), its
//! support inside the theoretical field, the theoretical fields of the presets against the
//! specification, and `dilated receptive-field` end to end.

mod common;

use common::{random4, rng, run_cli, tmpdir};
use dilated::cpu::reference;
use dilated::net::{ContextModule, Model, Network, PresetOptions};
use dilated::spec::{Conv2d, MaxPool2d};
use dilated::train::receptive::{
    Field, FieldOptions, effective_field, model_fields, random_weights, theoretical_field, unpadded,
};
use dilated::weights::write_safetensors;
use ndarray::{Array2, Array4, ArrayView4, s};
use rand::Rng;

/// The sum of the centre output pixel's channels, on the f64 reference (f32 activations).
fn centre_sum(net: &Network, x: ArrayView4<f32>) -> f64 {
    let mut y = x.to_owned();
    for l in net.layers() {
        y = reference::apply(&l.op, y.view()).unwrap();
    }
    let (_, c, h, w) = y.dim();
    (0..c).map(|ci| y[[0, ci, h / 2, w / 2]] as f64).sum()
}

#[test]
fn a_dilated_convolution_with_positive_weights_sees_exactly_its_nine_taps() {
    let mut r = rng(1);
    let (cin, cout, d) = (2, 3, 4);
    let spec = Conv2d::new(cin, cout, 3)
        .dilation(d)
        .with_bias(false)
        .with_relu(true);
    let w = Array4::from_shape_simple_fn(spec.weight_shape(), || r.random_range(0.1f32..1.0));
    let net = Network::builder("one conv", cin)
        .conv("c", spec, w.clone(), None)
        .build()
        .unwrap();
    // Positive input and weights: the ReLU passes, and d out / d x[ci, tap] = sum over the
    // output channels of w[co, ci, tap].
    let x = Array4::from_shape_simple_fn((1, cin, 15, 15), || r.random_range(0.5f32..1.0));
    let erf = effective_field(&net, x.view()).unwrap();
    // Output 7x7, centre (3, 3): taps at rows and columns 3 + {0, 4, 8}.
    assert_eq!(erf.pixel, (3, 3));
    let mut want = Array2::<f64>::zeros((15, 15));
    for ky in 0..3 {
        for kx in 0..3 {
            let v: f64 = (0..cin)
                .map(|ci| (0..cout).map(|co| w[[co, ci, ky, kx]] as f64).sum::<f64>())
                .sum();
            want[[3 + ky * d, 3 + kx * d]] = v;
        }
    }
    for ((y, x), &v) in erf.map.indexed_iter() {
        assert!(
            (v - want[[y, x]]).abs() <= 1e-6 * want[[y, x]].max(1.0),
            "({y}, {x}): {v} vs {}",
            want[[y, x]]
        );
    }
    assert_eq!(erf.map.iter().filter(|&&v| v != 0.0).count(), 9);
    let t = Field {
        top: 3,
        left: 3,
        height: 9,
        width: 9,
    };
    assert_eq!(erf.theoretical, t);
    assert_eq!(erf.support(), Some(t));
    // The 9 taps hold everything; a 1x1 square at the centre holds the centre tap only.
    assert_eq!(erf.centred_square(1.0).map(|f| f.height), Some(9));
    assert_eq!(erf.centred_square(1e-9).map(|f| f.height), Some(1));
}

/// A small stack of every op the networks use: convolutions with and without ReLU, dilation,
/// padding, max pooling with Caffe's rounding, a 1x1 layer.
fn small_stack(seed: u64) -> Network {
    Network::builder("stack", 2)
        .conv_he("c1", Conv2d::new(2, 4, 3).with_relu(true), seed)
        .max_pool("p1", MaxPool2d::caffe(2, 2))
        .conv_he(
            "c2",
            Conv2d::new(4, 4, 3).dilation(2).pad(1).with_relu(true),
            seed + 1,
        )
        .conv_he("c3", Conv2d::new(4, 3, 1), seed + 2)
        .build()
        .unwrap()
}

#[test]
fn the_effective_field_matches_central_finite_differences() {
    let net = small_stack(5);
    let mut r = rng(2);
    let x = random4(&mut r, [1, 2, 17, 17]);
    let erf = effective_field(&net, x.view()).unwrap();
    let eps = 1e-3f32;
    let mut fd = Array2::<f64>::zeros((17, 17));
    for y in 0..17 {
        for xx in 0..17 {
            for c in 0..2 {
                let mut plus = x.clone();
                plus[[0, c, y, xx]] += eps;
                let mut minus = x.clone();
                minus[[0, c, y, xx]] -= eps;
                let g = (centre_sum(&net, plus.view()) - centre_sum(&net, minus.view()))
                    / (2.0 * eps as f64);
                fd[[y, xx]] += g.abs();
            }
        }
    }
    let max = fd.iter().copied().fold(0.0, f64::max);
    assert!(max > 0.0);
    for ((y, xx), &v) in erf.map.indexed_iter() {
        assert!(
            (v - fd[[y, xx]]).abs() <= 2e-3 * max,
            "({y}, {xx}): backward {v}, finite differences {}",
            fd[[y, xx]]
        );
    }
    // Where the finite differences see nothing, the backward pass gives exactly 0.
    for ((y, xx), &v) in fd.indexed_iter() {
        if v == 0.0 {
            assert_eq!(erf.map[[y, xx]], 0.0, "({y}, {xx})");
        }
    }
}

#[test]
fn the_support_never_leaves_the_theoretical_field() {
    let mut r = rng(3);
    let nets = [
        small_stack(12),
        random_weights(
            &ContextModule::basic(3)
                .dilations(&[1, 2, 4, 1])
                .build()
                .unwrap(),
            4,
        )
        .unwrap(),
        Network::builder("strided", 1)
            .conv_he(
                "a",
                Conv2d::new(1, 3, 3).stride(2).pad(1).with_relu(true),
                1,
            )
            .conv_he("b", Conv2d::new(3, 3, 5).dilation(3).with_relu(true), 2)
            .max_pool("p", MaxPool2d::caffe(3, 2))
            .conv_he("c", Conv2d::new(3, 2, 3), 3)
            .build()
            .unwrap(),
    ];
    for net in &nets {
        let mut seen = 0;
        for size in [40, 47, 54, 61] {
            let x = random4(&mut r, [1, net.in_channels(), size, size]);
            let erf = effective_field(net, x.view()).unwrap();
            let t = erf.theoretical;
            let rf = net.receptive_fields().last().unwrap().0;
            assert_eq!((t.height, t.width), (rf, rf), "{}", net.name());
            // Every ReLU at the centre may be off (then nothing reaches the input).
            let Some(support) = erf.support() else {
                continue;
            };
            seen += 1;
            assert!(
                t.contains_field(&support),
                "{} at {size}: support {support:?} outside {t:?}",
                net.name()
            );
            assert!((erf.fraction_inside(&t) - 1.0).abs() < 1e-12);
        }
        assert!(seen >= 2, "{}: {seen} inputs with a gradient", net.name());
    }
}

#[test]
fn removing_the_padding_changes_nothing_inside_the_field() {
    // The release's "same"-padded context module on an input holding the centre's field,
    // against the unpadded copy on the same input.
    let net = random_weights(
        &ContextModule::basic(2)
            .dilations(&[1, 2, 4, 1])
            .build()
            .unwrap(),
        9,
    )
    .unwrap();
    let x = random4(&mut rng(4), [1, 2, 21, 21]);
    let padded = effective_field(&net, x.view()).unwrap();
    let bare = effective_field(&unpadded(&net).unwrap(), x.view()).unwrap();
    assert_eq!(padded.pixel, (10, 10));
    assert_eq!(bare.pixel, (2, 2));
    assert_eq!(padded.theoretical, bare.theoretical);
    assert_eq!(padded.map, bare.map);
}

#[test]
fn preset_fields_follow_the_specification() {
    for model in Model::ALL {
        let info = model.info();
        let net = model
            .build(&PresetOptions {
                width_divisor: 64,
                ..Default::default()
            })
            .unwrap();
        let fe_end = net
            .layers()
            .iter()
            .position(|l| l.name == info.final_layer)
            .unwrap()
            + 1;
        let fe = net.sub_network(0..fe_end).unwrap();
        assert_eq!(theoretical_field(&fe, (0, 0)).unwrap().height, 380);
        let ctx = model
            .context_module(&PresetOptions::default())
            .build()
            .unwrap();
        let rf_ctx = 1 + 2 * info.dilations.iter().sum::<usize>();
        let t = theoretical_field(&ctx, (0, 0)).unwrap();
        assert_eq!((t.height, t.width), (rf_ctx, rf_ctx), "{}", info.name);
        // Output pixel (0, 0) of a padded module reaches past the top-left corner.
        assert!(t.top < 0);
        let whole = net.sub_network(0..fe_end + ctx.layers().len()).unwrap();
        assert_eq!(
            theoretical_field(&whole, (0, 0)).unwrap().height,
            380 + 8 * (rf_ctx - 1),
            "{}",
            info.name
        );
    }
    // Upsampling has no single field.
    let city = Model::Cityscapes
        .build(&PresetOptions {
            width_divisor: 64,
            ..Default::default()
        })
        .unwrap();
    let e = theoretical_field(&city, (0, 0)).unwrap_err().to_string();
    assert!(e.contains("ctx_upsample"), "{e}");
}

#[test]
fn a_presets_fields_are_centred_and_inside_their_theoretical_squares() {
    let model = Model::Kitti;
    let net = random_weights(
        &model
            .build(&PresetOptions {
                width_divisor: 64,
                ..Default::default()
            })
            .unwrap(),
        1,
    )
    .unwrap();
    let fields = model_fields(model, &net, &FieldOptions { margin: 1, seed: 2 }).unwrap();
    // KITTI's context module: dilations 1, 1, 2, 4, 8, 1 -> 35; whole: 380 + 8 * 34 = 652.
    let expect = [(380, 380 + 16), (35, 35 + 2), (652, 652 + 16)];
    for (f, (rf, side)) in [&fields.front_end, &fields.context, &fields.whole]
        .into_iter()
        .zip(expect)
    {
        assert_eq!(f.map.dim(), (side, side));
        let m = ((side - rf) / 2) as isize;
        assert_eq!(
            f.theoretical,
            Field {
                top: m,
                left: m,
                height: rf,
                width: rf
            }
        );
        let support = f.support().unwrap();
        assert!(f.theoretical.contains_field(&support), "{support:?}");
        // Nothing at all in the margin.
        assert!(f.map.slice(s![..m as usize, ..]).iter().all(|&v| v == 0.0));
        let e90 = f.centred_square(0.9).unwrap();
        assert!(e90.height <= rf && f.theoretical.contains_field(&e90));
    }
    assert_eq!(fields.stride, 8);
    assert_eq!(
        fields.front_end_in_whole,
        Field {
            top: 8 + 8 * 17,
            left: 8 + 8 * 17,
            height: 380,
            width: 380
        }
    );
}

fn cli_ok(args: &[&str]) -> String {
    let out = run_cli(args, &[]);
    assert!(
        out.status.success(),
        "{args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_command_writes_a_figure_and_json() {
    let dir = tmpdir();
    let (png, json) = (dir.path().join("rf.png"), dir.path().join("rf.json"));
    let stdout = cli_ok(&[
        "receptive-field",
        "--model",
        "dilation7_kitti",
        "--width-divisor",
        "64",
        "--margin",
        "1",
        "--output",
        png.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("random weights"), "{stdout}");
    let img = image::open(&png).unwrap();
    // Three 360-pixel panels with 24-pixel gaps; titles, captions and the colour bar.
    assert_eq!((img.width(), img.height()), (3 * 360 + 4 * 24, 561));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["model"], "dilation7_kitti");
    assert_eq!(v["random_weights"], true);
    let parts = v["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    let sides: Vec<u64> = parts
        .iter()
        .map(|p| p["theoretical"]["height"].as_u64().unwrap())
        .collect();
    assert_eq!(sides, [380, 35, 652]);
    for p in parts {
        assert!((p["gradient_inside_theoretical"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        assert!(
            p["erf_90_square"].as_u64().unwrap() <= p["theoretical"]["height"].as_u64().unwrap()
        );
    }
    assert_eq!(parts[1]["unit"], "feature pixels");
}

#[test]
fn the_command_takes_weights_and_names_bad_ones() {
    let dir = tmpdir();
    let net = Model::Kitti
        .build(&PresetOptions {
            width_divisor: 64,
            ..Default::default()
        })
        .unwrap();
    let weights = dir.path().join("kitti64.safetensors");
    write_safetensors(
        &weights,
        &random_weights(&net, 3).unwrap().weight_set().unwrap(),
    )
    .unwrap();
    let (png, json) = (dir.path().join("w.png"), dir.path().join("w.json"));
    cli_ok(&[
        "receptive-field",
        "--model",
        "kitti",
        "--weights",
        weights.to_str().unwrap(),
        "--width-divisor",
        "64",
        "--margin",
        "0",
        "--output",
        png.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["random_weights"], false);
    assert!(
        v["weights"]
            .as_str()
            .unwrap()
            .ends_with("kitti64.safetensors")
    );
    // Weights of another width: an error naming the layer, and no figure.
    let other = dir.path().join("other.png");
    let out = run_cli(
        &[
            "receptive-field",
            "--model",
            "kitti",
            "--weights",
            weights.to_str().unwrap(),
            "--width-divisor",
            "32",
            "--output",
            other.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("conv1_1"), "{stderr}");
    assert!(!other.exists());
}
