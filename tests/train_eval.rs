//! Confusion matrix, per-class IoU, mean IoU and pixel accuracy on a hand-computed example.

use dilated::Error;
use dilated::cpu::reference;
use dilated::train::{ConfusionMatrix, percent};
use ndarray::{Array1, Array3, Array4};

/// Labels and predictions of eight pixels, four classes (class 3 occurs nowhere that counts):
///
/// | pixel      | 0 | 1 | 2 | 3 | 4 | 5   | 6 | 7 |
/// |------------|---|---|---|---|---|-----|---|---|
/// | label      | 0 | 0 | 1 | 1 | 2 | 255 | 2 | 0 |
/// | prediction | 0 | 1 | 1 | 1 | 0 | 3   | 2 | 0 |
///
/// Pixel 5 is ignored (its prediction 3 does not count). Counts (row label, column prediction):
/// row 0: [2, 1, 0, 0], row 1: [0, 2, 0, 0], row 2: [1, 0, 1, 0], row 3: zeros. 7 pixels.
///
/// * IoU 0 = TP 2 / (row 3 + column 3 - 2) = 2/4 = 50.00%
/// * IoU 1 = 2 / (row 2 + column 3 - 2) = 2/3 = 66.67%
/// * IoU 2 = 1 / (row 2 + column 1 - 1) = 1/2 = 50.00%
/// * IoU 3: no pixel in row or column, left out
/// * mIoU = (1/2 + 2/3 + 1/2) / 3 = 5/9 = 55.56%; pixel accuracy = 5/7 = 71.43%
fn example() -> (Array1<u8>, Array1<u32>) {
    (
        Array1::from(vec![0u8, 0, 1, 1, 2, 255, 2, 0]),
        Array1::from(vec![0u32, 1, 1, 1, 0, 3, 2, 0]),
    )
}

#[test]
fn hand_computed_ious() {
    let (labels, preds) = example();
    let mut m = ConfusionMatrix::new(4);
    m.add(labels.view(), preds.view()).unwrap();
    assert_eq!(m.total(), 7);
    let rows: Vec<Vec<u64>> = (0..4)
        .map(|l| (0..4).map(|p| m.count(l, p)).collect())
        .collect();
    assert_eq!(
        rows,
        [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    );
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
    assert!(close(m.iou(0), 0.5));
    assert!(close(m.iou(1), 2.0 / 3.0));
    assert!(close(m.iou(2), 0.5));
    assert_eq!(m.iou(3), None);
    assert!(close(m.mean_iou(), 5.0 / 9.0));
    assert!(close(m.pixel_accuracy(), 5.0 / 7.0));
    let metrics = m.metrics();
    assert_eq!(metrics.to_string(), "mIoU 55.56%, pixel accuracy 71.43%");
    assert_eq!(
        format!("{metrics:#}"),
        "mIoU 55.56%, pixel accuracy 71.43%\nclass 0: IoU 50.00%\nclass 1: IoU 66.67%\n\
         class 2: IoU 50.00%\nclass 3: IoU n/a"
    );
    assert_eq!(percent(Some(0.63414)), "63.41%");
    assert_eq!(percent(None), "n/a");
}

#[test]
fn a_class_only_predicted_counts_with_iou_zero() {
    // Labels all 0; predictions 0, 0, 1: IoU 0 = 2/3, IoU 1 = 0/1, mean 1/3.
    let mut m = ConfusionMatrix::new(3);
    m.add(
        Array1::from(vec![0u8, 0, 0]).view(),
        Array1::from(vec![0u8, 0, 1]).view(),
    )
    .unwrap();
    assert_eq!(m.iou(1), Some(0.0));
    assert_eq!(m.iou(2), None);
    assert!((m.mean_iou().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(ConfusionMatrix::new(3).mean_iou(), None);
    assert_eq!(
        ConfusionMatrix::new(3).metrics().to_string(),
        "mIoU n/a, pixel accuracy n/a"
    );
}

#[test]
fn batches_of_label_images_against_argmax_maps_and_merging() {
    // Scores [2, 3, 2, 2] whose argmax is the channel holding 1.0; u8 label images.
    let winners = [[0u32, 1, 2, 2], [1, 1, 0, 2]];
    let scores = Array4::from_shape_fn((2, 3, 2, 2), |(n, c, y, x)| {
        if winners[n][y * 2 + x] == c as u32 {
            1.0f32
        } else {
            0.0
        }
    });
    let preds = reference::argmax(scores.view());
    let labels = Array3::from_shape_vec((2, 2, 2), vec![0u8, 1, 2, 0, 255, 1, 0, 2]).unwrap();
    let mut m = ConfusionMatrix::new(3);
    m.add(labels.view(), preds.view()).unwrap();
    // 7 counted, wrong only at (0, 1, 1): label 0, prediction 2.
    assert_eq!((m.total(), m.count(0, 2)), (7, 1));
    assert!((m.pixel_accuracy().unwrap() - 6.0 / 7.0).abs() < 1e-12);
    let mut twice = m.clone();
    twice.merge(&m).unwrap();
    assert_eq!(twice.total(), 14);
    assert_eq!(twice.iou(0), m.iou(0));
    assert!(twice.merge(&ConfusionMatrix::new(4)).is_err());
}

#[test]
fn bad_labels_predictions_and_shapes_are_errors_and_count_nothing() {
    let mut m = ConfusionMatrix::new(3);
    let ok = Array1::from(vec![0u8, 1, 2]);
    assert!(matches!(
        m.add(Array1::from(vec![0u8, 7, 1]).view(), ok.view()),
        Err(Error::InvalidSpec { .. })
    ));
    assert!(
        m.add(ok.view(), Array1::from(vec![0u8, 3, 1]).view())
            .is_err()
    );
    assert!(matches!(
        m.add(ok.view(), Array1::from(vec![0u8, 1]).view()),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(m.total(), 0);
}
