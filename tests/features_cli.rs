//! `dilated features`: the cached front-end scores equal the f64 reference run on the whole
//! reflect-padded image, on the GPU and the CPU, tile size notwithstanding; the labels are
//! those under each output pixel's centre; an interrupted run continues.

mod common;

use std::path::Path;

use common::{mirror_index as fold, reference_forward, rel_error, run_cli};
use dilated::io::{load_label_png, read_list, read_npy3};
use dilated::net::{FrontEnd, Model};
use dilated::weights::write_safetensors;
use ndarray::{Array4, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn features_are_the_front_end_on_the_padded_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let info = Model::Kitti.info();
    let net = FrontEnd {
        classes: info.classes,
        width_divisor: 32,
        final_layer: info.final_layer,
    }
    .build("fe", 9)
    .unwrap();
    let weights = d.join("fe.safetensors");
    write_safetensors(&weights, &net.weight_set().unwrap()).unwrap();
    let mut r = StdRng::seed_from_u64(81);
    let sizes = [(40u32, 32u32), (27, 45)];
    let (mut images, mut labels) = (String::new(), String::new());
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |_, _| {
            image::Rgb([r.random(), r.random(), r.random()])
        });
        let lab =
            image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 3) % 11) as u8]));
        img.save(d.join(format!("img{i}.png"))).unwrap();
        lab.save(d.join(format!("lab{i}.png"))).unwrap();
        images += &format!("{}\n", d.join(format!("img{i}.png")).display());
        labels += &format!("{}\n", d.join(format!("lab{i}.png")).display());
    }
    std::fs::write(d.join("images.txt"), images).unwrap();
    std::fs::write(d.join("labels.txt"), labels).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out_dir = d.join(out);
        let mut args = vec![
            "features",
            "--model",
            "dilation7_kitti",
            "--width-divisor",
            "32",
            "--weights",
            weights.to_str().unwrap(),
            "--images",
            d.join("images.txt").to_str().unwrap().to_string().leak(),
            "--labels",
            d.join("labels.txt").to_str().unwrap().to_string().leak(),
            "--output-dir",
            out_dir.to_str().unwrap().to_string().leak(),
            "--tile",
            "396x396",
        ];
        args.extend_from_slice(extra);
        let o = run_cli(&args, &[]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{text}");
        (out_dir, text)
    };
    for device in ["--cpu", "--gpu"] {
        let (out_dir, _) = run(&format!("out{device}"), &[device]);
        let features = read_list(out_dir.join("features.txt")).unwrap();
        let small_labels = read_list(out_dir.join("labels.txt")).unwrap();
        assert_eq!(features.len(), 2);
        for (i, &(w, h)) in sizes.iter().enumerate() {
            let (w, h) = (w as usize, h as usize);
            let img = image::open(d.join(format!("img{i}.png")))
                .unwrap()
                .to_rgb8();
            // The whole image reflect-padded by the margin, mean subtracted, at once.
            let m = info.margin as isize;
            let padded = Array4::from_shape_fn((1, 3, h + 372, w + 372), |(_, c, y, x)| {
                let p = img.get_pixel(
                    fold(x as isize - m, w) as u32,
                    fold(y as isize - m, h) as u32,
                );
                p[2 - c] as f32 - info.mean_bgr[c]
            });
            let want = reference_forward(&net, padded.view());
            let got = read_npy3(&features[i]).unwrap();
            let (sh, sw) = (h.div_ceil(8), w.div_ceil(8));
            assert_eq!(got.dim(), (info.classes, sh, sw), "{device} image {i}");
            // Outputs whose receptive field lies inside the padded image, where the reference
            // needs no second reflection at the bottom and right: floor(size / 8) per side.
            let (rh, rw) = (h / 8, w / 8);
            let got4 = got
                .slice(ndarray::s![.., ..rh, ..rw])
                .to_owned()
                .insert_axis(Axis(0));
            let want4 = want.slice(ndarray::s![.., .., ..rh, ..rw]).to_owned();
            let err = rel_error(got4.view(), want4.view());
            assert!(err < 1e-4, "{device} image {i}: relative error {err:e}");
            let small = load_label_png(&small_labels[i]).unwrap();
            assert_eq!(small.dim(), (sh, sw));
            for ((y, x), &v) in small.indexed_iter() {
                assert_eq!(v as usize, (8 * x * 7 + 8 * y * 3) % 11, "label at {y},{x}");
            }
        }
    }
    // The GPU's features are the CPU's, last row and column included.
    for i in 0..2 {
        let a = read_npy3(d.join(format!("out--cpu/img{i}.npy")))
            .unwrap()
            .insert_axis(Axis(0));
        let b = read_npy3(d.join(format!("out--gpu/img{i}.npy")))
            .unwrap()
            .insert_axis(Axis(0));
        let err = rel_error(b.view(), a.view());
        assert!(err < 1e-4, "GPU vs CPU image {i}: {err:e}");
    }
    // Resuming: with --skip-existing, files already there are kept and nothing is recomputed.
    let (out_dir, text) = run("out--cpu", &["--cpu", "--skip-existing"]);
    assert!(text.contains("(0 computed)"), "{text}");
    std::fs::remove_file(out_dir.join("img1.npy")).unwrap();
    let (_, text) = run("out--cpu", &["--cpu", "--skip-existing"]);
    assert!(text.contains("(1 computed)"), "{text}");
    assert!(Path::new(&out_dir.join("img1.npy")).exists());
}
