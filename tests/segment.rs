//! Segmenting generated images: GPU and CPU agree, tiling matches a single tile where the
//! network allows it, any image size works.

mod common;

use common::{gpu, rng};
use dilated::net::{FrontEnd, Model, PresetOptions};
use dilated::segment::{Backend, Segmenter, reflect101};
use ndarray::Array3;
use rand::Rng;

/// A smooth image with noise, BGR 0..255.
fn image(h: usize, w: usize, seed: u64) -> Array3<f32> {
    let mut r = rng(seed);
    Array3::from_shape_fn((h, w, 3), |(y, x, c)| {
        let v = 127.0 + 100.0 * ((y as f32 / 9.0 + c as f32).sin() * (x as f32 / 13.0).cos());
        (v + r.random_range(-25.0..25.0)).clamp(0.0, 255.0)
    })
}

fn options(seed: u64) -> PresetOptions {
    PresetOptions {
        width_divisor: 32,
        seed,
        ..Default::default()
    }
}

#[test]
fn gpu_and_cpu_label_maps_agree() {
    for (i, model) in [Model::CamVid, Model::Cityscapes].into_iter().enumerate() {
        let net = model.build(&options(20 + i as u64)).unwrap();
        let img = image(150, 230, 30 + i as u64);
        let tile = Some((500, 500));
        let on_gpu = Segmenter::new(model, &net, Backend::Gpu(gpu()), tile).unwrap();
        let on_cpu = Segmenter::new(model, &net, Backend::Cpu, tile).unwrap();
        let mut tiles_seen = 0;
        let g = on_gpu.segment(img.view(), true, &mut |done, total| {
            tiles_seen = done;
            assert!(done <= total);
        });
        let g = g.unwrap();
        assert_eq!(tiles_seen, 4, "150x230 needs 2x2 tiles of 128 pixels");
        let c = on_cpu.segment(img.view(), true, &mut |_, _| {}).unwrap();
        assert_eq!(g.labels.dim(), (150, 230));
        let same = g
            .labels
            .iter()
            .zip(&c.labels)
            .filter(|(a, b)| a == b)
            .count();
        let share = same as f64 / g.labels.len() as f64;
        assert!(
            share >= 0.999,
            "{}: labels agree on {:.4}%",
            model.name(),
            100.0 * share
        );
        let (gp, cp) = (g.probabilities.unwrap(), c.probabilities.unwrap());
        assert_eq!(gp.dim(), (model.info().classes, 150, 230));
        let diff = gp
            .iter()
            .zip(&cp)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // f32 sums through ~30 randomly initialised layers: scores agree to about 1e-4.
        assert!(
            diff <= 1e-3,
            "{}: probabilities differ by {diff}",
            model.name()
        );
        // A randomly initialised network still has to produce more than one label here.
        let first = g.labels[[0, 0]];
        assert!(
            g.labels.iter().any(|&l| l != first),
            "{}: constant label map",
            model.name()
        );
    }
}

#[test]
fn tiling_is_exact_for_the_front_end() {
    // With no padding anywhere, every output depends only on its 373-pixel window of the
    // reflect-padded image, so stitched tiles equal one tile covering the whole image.
    // (The context module pads at tile borders, as the reference predictor's tiles do.)
    let model = Model::CamVid;
    let net = FrontEnd {
        classes: 11,
        width_divisor: 32,
        final_layer: "final",
    }
    .builder("front-end", 5)
    .unwrap()
    .softmax("prob")
    .build()
    .unwrap();
    let img = image(200, 300, 40);
    let tiled = Segmenter::new(model, &net, Backend::Cpu, Some((500, 500))).unwrap();
    assert_eq!(tiled.tiles(200, 300), (2, 3));
    // One tile with an output row and column to spare: the zoom's last pixels interpolate
    // towards the output after the image's end, which the tiled run has too.
    let whole = Segmenter::new(model, &net, Backend::Cpu, Some((372 + 312, 372 + 312))).unwrap();
    assert_eq!(whole.tiles(200, 300), (1, 1));
    let a = tiled.segment(img.view(), true, &mut |_, _| {}).unwrap();
    let b = whole.segment(img.view(), true, &mut |_, _| {}).unwrap();
    let diff = a
        .probabilities
        .unwrap()
        .iter()
        .zip(b.probabilities.as_ref().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "probabilities differ by {diff}");
    let same = a
        .labels
        .iter()
        .zip(&b.labels)
        .filter(|(x, y)| x == y)
        .count();
    assert!(
        same as f64 >= 0.999 * a.labels.len() as f64,
        "{same} of {}",
        a.labels.len()
    );
}

#[test]
fn any_image_size_works() {
    let model = Model::Kitti;
    let net = model.build(&options(50)).unwrap();
    let seg = Segmenter::new(model, &net, Backend::Gpu(gpu()), Some((500, 500))).unwrap();
    for (h, w) in [(1, 1), (1, 700), (3, 2), (129, 1)] {
        let out = seg
            .segment(image(h, w, 60).view(), false, &mut |_, _| {})
            .unwrap();
        assert_eq!(out.labels.dim(), (h, w));
        assert!(out.labels.iter().all(|&l| l < 11));
        assert!(out.probabilities.is_none());
    }
    // Very wide: 17 tiles in a row, on the CPU path to keep it quick.
    let seg = Segmenter::new(model, &net, Backend::Cpu, Some((500, 500))).unwrap();
    assert_eq!(seg.tiles(2, 2100), (1, 17));
    let mut calls = 0;
    let out = seg
        .segment(image(2, 2100, 61).view(), false, &mut |_, _| calls += 1)
        .unwrap();
    assert_eq!((out.labels.dim(), calls), ((2, 2100), 17));
}

#[test]
fn bad_tiles_and_images_are_errors() {
    let model = Model::CamVid;
    let net = model.build(&options(1)).unwrap();
    for tile in [(372, 500), (501, 500), (100, 100)] {
        let err = Segmenter::new(model, &net, Backend::Cpu, Some(tile))
            .err()
            .expect("bad tile");
        assert!(err.to_string().contains("tile"), "{err}");
    }
    let seg = Segmenter::new(model, &net, Backend::Cpu, Some((500, 500))).unwrap();
    assert!(
        seg.segment(Array3::zeros((0, 5, 3)).view(), false, &mut |_, _| {})
            .is_err()
    );
    assert!(
        seg.segment(Array3::zeros((5, 5, 4)).view(), false, &mut |_, _| {})
            .is_err()
    );
}

#[test]
fn reflect101_matches_opencv_border_reflect_101() {
    // cv2.copyMakeBorder(..., BORDER_REFLECT_101) on "abcd" with 5 on each side:
    //   "bcdcb | abcd | cbabc" continued periodically.
    let want: Vec<usize> = vec![1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1];
    let got: Vec<usize> = (-5..8).map(|i| reflect101(i, 4)).collect();
    assert_eq!(got, want);
}
