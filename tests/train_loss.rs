//! Softmax cross-entropy with `ignore_label 255` and `VALID` normalisation: a hand-computed
//! example, the normalisation over a batch, the empty case, Caffe's cap, label types and
//! errors, and the gradient against central differences.

mod train_support;

use dilated::Error;
use dilated::train::{IGNORE_LABEL, softmax_cross_entropy};
use ndarray::{Array3, Array4};
use rand::Rng;
use train_support::{check_gradient, rng, uniform};

/// Two classes, a batch of two 1x2 images:
///
/// | pixel | scores (class 0, class 1) | label | p            | -ln p[label] | p - onehot     |
/// |-------|---------------------------|-------|--------------|--------------|----------------|
/// | a     | (0, 0)                    | 0     | (1/2, 1/2)   | ln 2         | (-1/2, 1/2)    |
/// | b     | (ln 3, 0)                 | 1     | (3/4, 1/4)   | ln 4         | (3/4, -3/4)    |
/// | c     | (ln 3, 0)                 | 0     | (3/4, 1/4)   | ln (4/3)     | (-1/4, 1/4)    |
/// | d     | (7, -7)                   | 255   | (ignored)    | -            | (0, 0)         |
///
/// Image 0 holds a, b; image 1 holds c, d. Three valid pixels in the batch, so
/// loss = (ln 2 + ln 4 + ln 4/3) / 3 = ln(32/3) / 3 = 0.789041204710539 and the gradient is
/// the last column divided by 3: a (-1/6, 1/6), b (1/4, -1/4), c (-1/12, 1/12), d (0, 0).
/// (The mean of the per-image means would be ((ln 2 + ln 4) / 2 + ln 4/3) / 2 = 0.663720...,
/// which `VALID` is not.)
fn hand_example() -> (Array4<f32>, Array3<u8>) {
    let ln3 = 3.0f32.ln();
    let mut s = Array4::<f32>::zeros((2, 2, 1, 2));
    // [n, class, y, x]
    s[[0, 0, 0, 1]] = ln3; // b
    s[[1, 0, 0, 0]] = ln3; // c
    s[[1, 0, 0, 1]] = 7.0; // d
    s[[1, 1, 0, 1]] = -7.0;
    let labels = Array3::from_shape_vec((2, 1, 2), vec![0u8, 1, 0, 255]).unwrap();
    (s, labels)
}

#[test]
fn hand_computed_two_class_example() {
    let (s, labels) = hand_example();
    let l = softmax_cross_entropy(s.view(), labels.view()).unwrap();
    assert_eq!(l.valid, 3);
    let want = (32.0f64 / 3.0).ln() / 3.0;
    assert!((want - 0.789041204710539).abs() < 1e-12);
    assert!((l.loss - want).abs() < 1e-7, "loss {} want {want}", l.loss);
    let per_image_means = ((2.0f64.ln() + 4.0f64.ln()) / 2.0 + (4.0f64 / 3.0).ln()) / 2.0;
    assert!((l.loss - per_image_means).abs() > 0.1);
    // [n, class, y, x]
    let want_grad = [
        ([0, 0, 0, 0], -1.0 / 6.0),
        ([0, 1, 0, 0], 1.0 / 6.0),
        ([0, 0, 0, 1], 1.0 / 4.0),
        ([0, 1, 0, 1], -1.0 / 4.0),
        ([1, 0, 0, 0], -1.0 / 12.0),
        ([1, 1, 0, 0], 1.0 / 12.0),
        ([1, 0, 0, 1], 0.0),
        ([1, 1, 0, 1], 0.0),
    ];
    for (idx, g) in want_grad {
        assert!(
            (l.grad[idx] as f64 - g).abs() < 1e-7,
            "{idx:?}: {} want {g}",
            l.grad[idx]
        );
    }
}

#[test]
fn normalises_by_the_valid_pixels_of_the_whole_batch() {
    // The same pixels, split differently over the batch, give the same loss: (a, b, c) in one
    // image with d, or spread over three images with ignored fillers.
    let (s, labels) = hand_example();
    let l2 = softmax_cross_entropy(s.view(), labels.view()).unwrap();
    let ln3 = 3.0f32.ln();
    let mut s3 = Array4::<f32>::zeros((3, 2, 1, 2));
    s3[[1, 0, 0, 0]] = ln3; // b
    s3[[2, 0, 0, 1]] = ln3; // c
    let labels3 = Array3::from_shape_vec((3, 1, 2), vec![0u8, 255, 1, 255, 255, 0]).unwrap();
    let l3 = softmax_cross_entropy(s3.view(), labels3.view()).unwrap();
    assert_eq!(l3.valid, 3);
    assert!((l3.loss - l2.loss).abs() < 1e-12);
    assert!((l3.grad[[0, 0, 0, 0]] as f64 + 1.0 / 6.0).abs() < 1e-7);
    assert_eq!(l3.grad[[0, 0, 0, 1]], 0.0);
    // Labels as u32 (an argmax map) give the same.
    let labels32 = labels.mapv(u32::from);
    assert_eq!(
        softmax_cross_entropy(s.view(), labels32.view()).unwrap(),
        l2
    );
}

#[test]
fn no_valid_pixel_gives_zero_loss_and_zero_gradient() {
    let s = Array4::<f32>::from_elem((2, 3, 2, 2), 1.5);
    let labels = Array3::<u8>::from_elem((2, 2, 2), IGNORE_LABEL as u8);
    let l = softmax_cross_entropy(s.view(), labels.view()).unwrap();
    assert_eq!((l.loss, l.valid), (0.0, 0));
    assert!(l.grad.iter().all(|&g| g == 0.0));
}

#[test]
fn a_hopeless_pixel_costs_what_caffe_caps_it_at() {
    // p[label] = e^-200 underflows f32; Caffe takes -log(FLT_MIN) = 87.3365447505531.
    let mut s = Array4::<f32>::zeros((1, 2, 1, 1));
    s[[0, 1, 0, 0]] = 200.0;
    let labels = Array3::<u8>::zeros((1, 1, 1));
    let l = softmax_cross_entropy(s.view(), labels.view()).unwrap();
    assert!((l.loss - 87.3365447505531).abs() < 1e-9, "{}", l.loss);
    assert!((l.grad[[0, 0, 0, 0]] + 1.0).abs() < 1e-7);
    assert!((l.grad[[0, 1, 0, 0]] - 1.0).abs() < 1e-7);
}

#[test]
fn gradient_matches_finite_differences() {
    let mut r = rng(800);
    let s = uniform(&mut r, [2, 4, 3, 5], -3.0, 3.0);
    let labels = Array3::<u8>::from_shape_simple_fn((2, 3, 5), || {
        if r.random_bool(0.25) {
            255
        } else {
            r.random_range(0..4)
        }
    });
    let l = softmax_cross_entropy(s.view(), labels.view()).unwrap();
    assert!(l.valid > 0 && l.valid < 30);
    // Smooth: truncation error ~ eps^2 |L'''| / 6 < 1e-7; the loss itself is f64.
    check_gradient("softmax CE", &s, l.grad.view(), 1e-3, (1e-6, 1e-5), |s| {
        softmax_cross_entropy(s.view(), labels.view()).unwrap().loss
    });
}

#[test]
fn bad_labels_and_shapes_are_errors() {
    let s = Array4::<f32>::zeros((1, 3, 2, 2));
    let labels = Array3::<u8>::from_shape_vec((1, 2, 2), vec![0, 1, 3, 255]).unwrap();
    let e = softmax_cross_entropy(s.view(), labels.view()).unwrap_err();
    assert!(
        matches!(e, Error::InvalidSpec { .. }) && e.to_string().contains("label 3"),
        "{e}"
    );
    let labels = Array3::<u8>::zeros((1, 2, 3));
    assert!(matches!(
        softmax_cross_entropy(s.view(), labels.view()),
        Err(Error::ShapeMismatch { .. })
    ));
    let empty = Array4::<f32>::zeros((1, 0, 2, 2));
    assert!(softmax_cross_entropy(empty.view(), Array3::<u8>::zeros((1, 2, 2)).view()).is_err());
}
