//! The front-end stage's crops against a reference that builds every intermediate image the
//! way `ImageLabelData` does (OpenCV borders materialised one after the other), and the
//! image-list dataset's batches.

mod common;

use common::mirror_index;
use dilated::io::save_png;
use dilated::train::data::BatchOrder;
use dilated::train::images::{Crops, ImageDataset};
use ndarray::{Array2, Array3, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// OpenCV's `copyMakeBorder` with `BORDER_REFLECT_101`, applied to a 2-D plane, written as
/// repeated mirror steps until the index falls inside.
fn border_reflect(
    plane: &Array2<f32>,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
) -> Array2<f32> {
    let (h, w) = plane.dim();
    Array2::from_shape_fn((h + top + bottom, w + left + right), |(y, x)| {
        plane[[
            mirror_index(y as isize - top as isize, h),
            mirror_index(x as isize - left as isize, w),
        ]]
    })
}

/// `copyMakeBorder` with a constant.
fn border_constant(
    plane: &Array2<f32>,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
    v: f32,
) -> Array2<f32> {
    let (h, w) = plane.dim();
    let mut out = Array2::from_elem((h + top + bottom, w + left + right), v);
    out.slice_mut(s![top..top + h, left..left + w])
        .assign(plane);
    out
}

/// The layer's steps: extend by the margin, pad to the crop (the layer passes its left and
/// right amounts to OpenCV swapped, so the larger half lands on the left), then every
/// `crop x crop` window; returns the padded image planes and the padded labels.
fn padded(image: &Array3<f32>, labels: &Array2<u8>, c: &Crops) -> (Vec<Array2<f32>>, Array2<f32>) {
    let m = c.margin;
    let pad = |v: usize| {
        let d = c.crop.saturating_sub(v + 2 * m);
        (d / 2, d - d / 2)
    };
    let (top, bottom) = pad(image.dim().0);
    let (small, large) = pad(image.dim().1);
    let planes = (0..3)
        .map(|ch| {
            let plane = image.slice(s![.., .., ch]).to_owned();
            let e = border_reflect(&plane, m, m, m, m);
            border_reflect(&e, top, bottom, large, small)
        })
        .collect();
    let l = labels.mapv(f32::from);
    let e = border_constant(&l, m, m, m, m, 255.0);
    (
        planes,
        border_constant(&e, top, bottom, large, small, 255.0),
    )
}

/// Whether `(x, y)` is the window at `(y0, x0)` (mirrored or not) of the padded item.
fn is_window(
    planes: &[Array2<f32>],
    labels: &Array2<f32>,
    c: &Crops,
    (x, y): (&Array3<f32>, &Array2<u8>),
    (y0, x0, mirror): (usize, usize, bool),
) -> bool {
    let col = |j: usize| x0 + if mirror { c.crop - 1 - j } else { j };
    let image_ok = (0..3).all(|ch| {
        (0..c.crop).all(|i| {
            (0..c.crop).all(|j| x[[ch, i, j]] == planes[ch][[y0 + i, col(j)]] - c.mean_bgr[ch])
        })
    });
    let n = y.dim().0;
    let labels_ok = (0..n).all(|i| {
        (0..n).all(|j| {
            f32::from(y[[i, j]])
                == labels[[y0 + c.margin + c.stride * i, col(c.margin + c.stride * j)]]
        })
    });
    image_ok && labels_ok
}

fn item(rng: &mut StdRng, h: usize, w: usize) -> (Array3<f32>, Array2<u8>) {
    let image = Array3::from_shape_fn((h, w, 3), |_| rng.random_range(0..256) as f32);
    let labels = Array2::from_shape_fn((h, w), |_| rng.random_range(0..21u8));
    (image, labels)
}

fn small_crops(crop: usize) -> Crops {
    Crops {
        crop,
        margin: 3,
        stride: 2,
        mean_bgr: [10.5, 20.25, 30.0],
        mirror: true,
    }
}

#[test]
fn random_crops_are_windows_of_the_extended_and_padded_item() {
    let mut rng = StdRng::seed_from_u64(11);
    // Images larger than the crop, smaller in one or both directions (odd and even padding).
    for (h, w, crop) in [
        (20, 17, 12),
        (5, 9, 14),
        (4, 3, 16),
        (1, 2, 10),
        (12, 6, 16),
    ] {
        let c = small_crops(crop);
        let (image, labels) = item(&mut rng, h, w);
        let (planes, padded_labels) = padded(&image, &labels, &c);
        let (ph, pw) = padded_labels.dim();
        let mut mirrored = [false, false];
        for _ in 0..12 {
            let (x, y) = c.sample(image.view(), labels.view(), &mut rng).unwrap();
            assert_eq!(x.dim(), (3, crop, crop));
            let n = (crop - 6) / 2;
            assert_eq!(y.dim(), (n, n));
            let found: Vec<(usize, usize, bool)> = (0..=ph - crop)
                .flat_map(|y0| {
                    (0..=pw - crop).flat_map(move |x0| [(y0, x0, false), (y0, x0, true)])
                })
                .filter(|&at| is_window(&planes, &padded_labels, &c, (&x, &y), at))
                .collect();
            assert!(
                !found.is_empty(),
                "{h}x{w} crop {crop}: the crop is no window of the padded item"
            );
            for (_, _, m) in &found {
                mirrored[usize::from(*m)] = true;
            }
        }
        assert!(
            mirrored[0] && mirrored[1],
            "{h}x{w}: 12 crops were never (or always) mirrored"
        );
    }
}

#[test]
fn centre_crops_are_the_middle_window_unmirrored() {
    let mut rng = StdRng::seed_from_u64(12);
    for (h, w, crop) in [(20, 17, 12), (5, 9, 14), (2, 2, 10)] {
        let c = small_crops(crop);
        let (image, labels) = item(&mut rng, h, w);
        let (planes, padded_labels) = padded(&image, &labels, &c);
        let (ph, pw) = padded_labels.dim();
        let (x, y) = c.centre(image.view(), labels.view()).unwrap();
        assert!(is_window(
            &planes,
            &padded_labels,
            &c,
            (&x, &y),
            ((ph - crop) / 2, (pw - crop) / 2, false)
        ));
    }
}

#[test]
fn labels_in_the_margin_are_ignored_and_the_voc_crop_gives_16() {
    let c = Crops::new(500, [0.0; 3]).unwrap();
    assert_eq!(c.label_size().unwrap(), 16);
    // A 10x10 image: every label slice position but those on the image is in the margin or
    // padding, so almost everything is 255; the labels that land on the image keep their value.
    let image = Array3::<f32>::from_elem((10, 10, 3), 7.0);
    let labels = Array2::<u8>::from_elem((10, 10), 4);
    let mut rng = StdRng::seed_from_u64(3);
    let (_, y) = c.sample(image.view(), labels.view(), &mut rng).unwrap();
    assert!(y.iter().all(|&v| v == 4 || v == 255));
    assert!(y.iter().any(|&v| v == 255));
    for bad in [372, 371, 375, 0] {
        let e = Crops::new(bad, [0.0; 3]).unwrap_err().to_string();
        assert!(e.contains("--crop-size"), "{e}");
    }
}

#[test]
fn batches_are_reproducible_and_differ_between_iterations() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let (h, w) = (9 + i, 13 - i);
        let img = image::RgbImage::from_fn(w as u32, h as u32, |_, _| {
            image::Rgb([rng.random(), rng.random(), rng.random()])
        });
        let p = dir.path().join(format!("{i}.png"));
        save_png(&p, &img).unwrap();
        images.push(p);
        let l = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([((x + y) % 5) as u8])
        });
        let p = dir.path().join(format!("{i}_labels.png"));
        l.save(&p).unwrap();
        labels.push(p);
    }
    let data = ImageDataset::new(images.clone(), labels.clone()).unwrap();
    let c = small_crops(14);
    let a = data
        .batch(4, 2, BatchOrder::Shuffled { seed: 1 }, &c, 9)
        .unwrap();
    let b = data
        .batch(4, 2, BatchOrder::Shuffled { seed: 1 }, &c, 9)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.0.dim(), (2, 3, 14, 14));
    assert_eq!(a.1.dim(), (2, 4, 4));
    let other = data
        .batch(5, 2, BatchOrder::Shuffled { seed: 1 }, &c, 9)
        .unwrap();
    assert_ne!(a.0, other.0);
    // Image pixels are the file's BGR values less the mean.
    let (x, _) = data.centred(&[0], &c).unwrap();
    let img = image::open(&images[0]).unwrap().to_rgb8();
    let min_r = img.pixels().map(|p| p[0]).min().unwrap() as f32 - c.mean_bgr[2];
    let max_r = img.pixels().map(|p| p[0]).max().unwrap() as f32 - c.mean_bgr[2];
    assert!(
        x.slice(s![0, 2, .., ..])
            .iter()
            .all(|&v| v >= min_r && v <= max_r)
    );
    // Mismatched lists and sizes are errors naming the problem.
    let e = ImageDataset::new(images.clone(), labels[..2].to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 images but 2"), "{e}");
    let swapped = ImageDataset::new(vec![images[0].clone()], vec![labels[1].clone()]).unwrap();
    let e = swapped
        .batch(0, 1, BatchOrder::InOrder, &c, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels (H, W)"), "{e}");
}
