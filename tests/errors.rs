//! Bad input gets a typed error naming what is wrong, never a panic.

mod common;

use common::gpu;
use dilated::cpu::reference;
use dilated::gpu::GpuLayer;
use dilated::{Conv2d, Error, GpuConv2d, MaxPool2d, Shape};
use ndarray::{Array1, Array4};

fn zeros(shape: [usize; 4]) -> Array4<f32> {
    Array4::zeros(shape)
}

#[test]
fn input_channels_not_matching_the_weight_name_both_shapes() {
    let gpu = gpu();
    let spec = Conv2d::new(3, 8, 3);
    let conv = GpuConv2d::new(
        gpu,
        spec,
        zeros(spec.weight_shape()).view(),
        Some(Array1::zeros(8).view()),
    )
    .unwrap();
    let x = gpu.upload(zeros([1, 4, 10, 10]).view()).unwrap();
    let err = conv.forward(gpu, &x).err().expect("channel mismatch");
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("[1, 4, 10, 10]") && msg.contains("[8, 3, 3, 3]"),
        "{msg}"
    );
    // The CPU paths say the same.
    let err = reference::conv2d(
        zeros([1, 4, 10, 10]).view(),
        &spec,
        zeros([8, 3, 3, 3]).view(),
        Some(Array1::zeros(8).view()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
}

#[test]
fn weight_array_of_the_wrong_shape() {
    let spec = Conv2d::new(3, 8, 3);
    let err = GpuConv2d::new(
        gpu(),
        spec,
        zeros([8, 3, 5, 5]).view(),
        Some(Array1::zeros(8).view()),
    )
    .err()
    .expect("wrong weight shape");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ShapeMismatch { .. })
            && msg.contains("[8, 3, 5, 5]")
            && msg.contains("[8, 3, 3, 3]"),
        "{msg}"
    );
}

#[test]
fn bias_of_the_wrong_length() {
    let spec = Conv2d::new(3, 8, 3);
    let err = GpuConv2d::new(
        gpu(),
        spec,
        zeros(spec.weight_shape()).view(),
        Some(Array1::zeros(7).view()),
    )
    .err()
    .expect("bias length");
    assert!(
        matches!(
            err,
            Error::BiasLength {
                expected: 8,
                actual: 7,
                ..
            }
        ),
        "{err:?}"
    );
    let err = dilated::cpu::fast::conv2d(
        zeros([1, 3, 5, 5]).view(),
        &spec,
        zeros(spec.weight_shape()).view(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidSpec { .. }),
        "missing bias: {err:?}"
    );
}

#[test]
fn kernel_larger_than_the_padded_input() {
    let gpu = gpu();
    // 7x7 dilated by 4 covers 25 pixels; the input is 20 + 2 padding.
    let spec = Conv2d::new(2, 2, 7).dilation(4).pad(1).with_bias(false);
    let conv = GpuConv2d::new(gpu, spec, zeros(spec.weight_shape()).view(), None).unwrap();
    let x = gpu.upload(zeros([1, 2, 20, 30]).view()).unwrap();
    let err = conv.forward(gpu, &x).err().expect("kernel too large");
    match err {
        Error::KernelLargerThanInput {
            kernel,
            padded_input,
            ..
        } => {
            assert_eq!(kernel, (25, 25));
            assert_eq!(padded_input, (22, 32));
        }
        other => panic!("{other:?}"),
    }
    let err = MaxPool2d::caffe(3, 2)
        .output_shape(Shape::new(1, 1, 2, 9), "pool")
        .unwrap_err();
    assert!(
        matches!(err, Error::KernelLargerThanInput { .. }),
        "{err:?}"
    );
}

#[test]
fn zero_dimensions_strides_and_dilations() {
    let gpu = gpu();
    let err = gpu
        .upload(zeros([1, 3, 0, 4]).view())
        .err()
        .expect("zero height");
    assert!(
        matches!(err, Error::ZeroDimension { what: "height", .. }),
        "{err:?}"
    );
    let err = gpu.empty(Shape::new(0, 1, 1, 1)).err().expect("zero batch");
    assert!(
        matches!(
            err,
            Error::ZeroDimension {
                what: "batch size",
                ..
            }
        ),
        "{err:?}"
    );
    for (spec, what) in [
        (Conv2d::new(1, 1, 3).stride_hw(0, 1), "vertical stride"),
        (Conv2d::new(1, 1, 3).stride_hw(1, 0), "horizontal stride"),
        (Conv2d::new(1, 1, 3).dilation_hw(0, 1), "vertical dilation"),
        (
            Conv2d::new(1, 1, 3).dilation_hw(1, 0),
            "horizontal dilation",
        ),
        (Conv2d::new(0, 1, 3), "input channel count"),
        (Conv2d::new(1, 0, 3), "output channel count"),
        (Conv2d::new(1, 1, 0), "kernel height"),
    ] {
        let err = spec
            .output_shape(Shape::new(1, spec.in_channels.max(1), 8, 8), "conv")
            .unwrap_err();
        match &err {
            Error::ZeroDimension { what: w, .. } => assert_eq!(*w, what),
            other => panic!("{spec:?}: {other:?}"),
        }
        let w = zeros(spec.weight_shape());
        let b = Array1::zeros(spec.out_channels);
        assert!(
            GpuConv2d::new(gpu, spec, w.view(), Some(b.view())).is_err(),
            "{spec:?}"
        );
    }
    let err = MaxPool2d {
        stride: (0, 2),
        ..MaxPool2d::caffe(2, 2)
    }
    .output_shape(Shape::new(1, 1, 4, 4), "p")
    .unwrap_err();
    assert!(matches!(err, Error::ZeroDimension { .. }), "{err:?}");
}

#[test]
fn tensors_larger_than_the_device_allows() {
    let gpu = gpu();
    // 64 GiB: beyond any adapter's max_buffer_size here.
    let err = gpu
        .empty(Shape::new(1, 16, 1 << 15, 1 << 15))
        .err()
        .expect("too large");
    match &err {
        Error::ExceedsDeviceLimits { bytes, limit, .. } => assert!(bytes > limit),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
    // The device is still usable afterwards.
    let x = gpu
        .upload(Array4::from_elem((1, 1, 2, 2), 1.0f32).view())
        .unwrap();
    assert_eq!(gpu.download(&x).unwrap().sum(), 4.0);
}

#[test]
fn output_tensor_of_the_wrong_shape() {
    let gpu = gpu();
    let spec = Conv2d::new(1, 1, 3).with_bias(false);
    let conv = GpuConv2d::new(gpu, spec, zeros(spec.weight_shape()).view(), None).unwrap();
    let x = gpu.upload(zeros([1, 1, 8, 8]).view()).unwrap();
    let mut out = gpu.empty(Shape::new(1, 1, 8, 8)).unwrap();
    let err = conv.forward_into(gpu, &x, &mut out).unwrap_err();
    assert!(err.to_string().contains("[1, 1, 6, 6]"), "{err}");
}

#[test]
fn no_matching_adapter_says_how_to_get_one() {
    let options = dilated::GpuOptions {
        adapter_name: Some("no adapter is called this".into()),
        ..Default::default()
    };
    let err = dilated::Gpu::with_options(&options)
        .err()
        .expect("no such adapter");
    assert!(matches!(err, Error::NoAdapter { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("no adapter is called this"),
        "{msg}"
    );
}
