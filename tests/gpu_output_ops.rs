//! Softmax, argmax, bilinear zoom and the per-channel transposed convolution: GPU against the
//! CPU reference, outputs poisoned first.

mod common;

use common::{gpu, random4, rel_error, rng};
use dilated::cpu::reference;
use dilated::gpu::GpuDeconv2d;
use dilated::gpu::{GpuLayer, GpuSoftmax, GpuZoom};
use dilated::{Deconv2d, Zoom};
use ndarray::Array4;

#[test]
fn softmax_matches_reference() {
    let gpu = gpu();
    for (i, shape) in [[1, 1, 1, 1], [2, 21, 9, 7], [1, 19, 33, 40], [3, 2, 1, 5]]
        .into_iter()
        .enumerate()
    {
        // Scores of the size real networks produce (tens), where a naive exp would overflow.
        let x = random4(&mut rng(600 + i as u64), shape).mapv(|v| v * 60.0);
        let input = gpu.upload(x.view()).unwrap();
        let mut out = gpu.filled(input.shape(), f32::NAN).unwrap();
        GpuSoftmax.forward_into(gpu, &input, &mut out).unwrap();
        let got = gpu.download(&out).unwrap();
        let err = rel_error(got.view(), reference::softmax(x.view()).view());
        assert!(err <= 1e-5, "softmax {shape:?}: {err:e}");
    }
}

#[test]
fn argmax_matches_reference() {
    let gpu = gpu();
    for (i, shape) in [[1, 1, 1, 1], [2, 21, 9, 7], [1, 11, 65, 3]]
        .into_iter()
        .enumerate()
    {
        let x = random4(&mut rng(700 + i as u64), shape);
        let got = gpu.argmax(&gpu.upload(x.view()).unwrap()).unwrap();
        assert_eq!(got, reference::argmax(x.view()), "argmax {shape:?}");
    }
}

#[test]
fn zoom_matches_reference() {
    let gpu = gpu();
    for (i, (shape, f)) in [
        ([1, 1, 1, 1], 8),
        ([1, 21, 9, 7], 8),
        ([2, 3, 5, 4], 3),
        ([1, 2, 6, 1], 1),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = Zoom { factor: f };
        let x = random4(&mut rng(800 + i as u64), shape);
        let input = gpu.upload(x.view()).unwrap();
        let mut out = gpu
            .filled(spec.output_shape(input.shape(), "zoom").unwrap(), f32::NAN)
            .unwrap();
        GpuZoom::new(spec)
            .forward_into(gpu, &input, &mut out)
            .unwrap();
        let got = gpu.download(&out).unwrap();
        let err = rel_error(got.view(), reference::zoom(x.view(), &spec).unwrap().view());
        assert!(err <= 1e-6, "zoom x{f} {shape:?}: {err:e}");
    }
}

#[test]
fn zoom_samples_without_half_pixel_offset() {
    // Independent of the code under test: output (8k, 8j) is input (k, j) exactly, and
    // output (8k + 4, 8j) is the mean of rows k and k + 1.
    let x = random4(&mut rng(850), [1, 1, 4, 5]);
    let y = reference::zoom(x.view(), &Zoom { factor: 8 }).unwrap();
    for k in 0..4 {
        for j in 0..5 {
            assert_eq!(y[[0, 0, 8 * k, 8 * j]], x[[0, 0, k, j]]);
        }
    }
    let mid = (x[[0, 0, 1, 2]] + x[[0, 0, 2, 2]]) / 2.0;
    assert!((y[[0, 0, 12, 16]] - mid).abs() < 1e-6);
}

#[test]
fn deconvolution_matches_reference() {
    let gpu = gpu();
    for (i, (spec, shape)) in [
        (Deconv2d::bilinear(19, 8), [1, 19, 9, 7]),
        (Deconv2d::bilinear(3, 8), [2, 3, 1, 1]),
        (
            Deconv2d {
                channels: 4,
                kernel: 5,
                stride: 3,
                pad: 1,
            },
            [1, 4, 6, 11],
        ),
        (
            Deconv2d {
                channels: 2,
                kernel: 3,
                stride: 1,
                pad: 0,
            },
            [3, 2, 4, 4],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let x = random4(&mut rng(900 + i as u64), shape);
        let w = random4(&mut rng(950 + i as u64), spec.weight_shape());
        let layer = GpuDeconv2d::new(gpu, spec, w.view()).unwrap();
        let input = gpu.upload(x.view()).unwrap();
        let mut out = gpu
            .filled(spec.output_shape(input.shape(), "d").unwrap(), f32::NAN)
            .unwrap();
        layer.forward_into(gpu, &input, &mut out).unwrap();
        let got = gpu.download(&out).unwrap();
        let err = rel_error(
            got.view(),
            reference::deconv2d(x.view(), &spec, w.view())
                .unwrap()
                .view(),
        );
        assert!(err <= 1e-5, "deconv {spec:?} on {shape:?}: {err:e}");
    }
}

#[test]
fn bilinear_deconvolution_interpolates_a_constant_exactly_inside() {
    // A constant map upsampled with the bilinear kernel stays constant away from the border.
    let spec = Deconv2d::bilinear(1, 8);
    let w = Array4::from_shape_vec(spec.weight_shape(), spec.bilinear_weights()).unwrap();
    let x = Array4::from_elem((1, 1, 6, 6), 2.5f32);
    let y = reference::deconv2d(x.view(), &spec, w.view()).unwrap();
    for yy in 8..40 {
        for xx in 8..40 {
            assert!(
                (y[[0, 0, yy, xx]] - 2.5).abs() < 1e-5,
                "({yy}, {xx}) = {}",
                y[[0, 0, yy, xx]]
            );
        }
    }
}
