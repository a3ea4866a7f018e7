//! How the ops cut their work into dispatches, asserted: every kernel runs past 65,535
//! workgroups (the per-dimension limit, so the grid folds into a second row) with the count
//! asserted, and bindings capped with `Gpu::set_max_binding_bytes` split convolutions into the
//! number of chunks worked out by hand in each case. Every run is checked against the f64
//! reference on seeded random inputs, with outputs poisoned first.

mod common;

use common::{gpu, random1, random4, rel_error, rng};
use dilated::cpu::reference;
use dilated::gpu::{
    GpuArgmax, GpuDeconv2d, GpuLayer, GpuMaxPool2d, GpuRelu, GpuSoftmax, GpuZoom, Io, Kernel,
};
use dilated::{Conv2d, ConvAlgorithm, Deconv2d, Gpu, GpuConv2d, MaxPool2d, Shape, Zoom};
use ndarray::{Array1, Array4};
use rand::Rng;

const TOLERANCE: f64 = 1e-5;
const LIMIT: u64 = 65_535;

/// Runs `layer` on `x` into a poisoned output, asserting that its dispatches are exactly
/// `kernels` and that the first one folds `workgroups` workgroups into a grid of two rows or
/// more; returns the output.
fn run_counted(
    gpu: &Gpu,
    layer: &dyn GpuLayer,
    x: &Array4<f32>,
    kernels: &[Kernel],
    workgroups: u64,
) -> Array4<f32> {
    let input = gpu.upload(x.view()).unwrap();
    let out_shape = layer.output_shape(input.shape()).unwrap();
    let output = gpu.filled(out_shape, f32::NAN).unwrap();
    let dispatches = layer.prepare(gpu, &Io::tensors(&input, &output)).unwrap();
    let got: Vec<Kernel> = dispatches.iter().map(|d| d.kernel()).collect();
    assert_eq!(got, kernels, "{}", layer.name());
    let (gx, gy) = dispatches[0].workgroups();
    assert!(workgroups > LIMIT, "the case must pass the limit");
    assert_eq!(gx as u64, LIMIT, "{}: first row full", layer.name());
    assert_eq!(
        gy as u64,
        workgroups.div_ceil(LIMIT),
        "{}: rows",
        layer.name()
    );
    gpu.run(&dispatches).unwrap();
    gpu.download(&output).unwrap()
}

/// One output of a convolution, by the definition (f64).
fn conv_at(
    x: &Array4<f32>,
    spec: &Conv2d,
    w: &Array4<f32>,
    b: Option<&Array1<f32>>,
    (n, co, oy, ox): (usize, usize, usize, usize),
) -> f64 {
    let (_, ci_n, h, wd) = x.dim();
    let mut acc = b.map_or(0.0, |b| b[co] as f64);
    for ci in 0..ci_n {
        for ky in 0..spec.kernel.0 {
            for kx in 0..spec.kernel.1 {
                let iy = (oy * spec.stride.0 + ky * spec.dilation.0) as isize
                    - spec.padding.top as isize;
                let ix = (ox * spec.stride.1 + kx * spec.dilation.1) as isize
                    - spec.padding.left as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                    acc += x[[n, ci, iy as usize, ix as usize]] as f64 * w[[co, ci, ky, kx]] as f64;
                }
            }
        }
    }
    if spec.relu { acc.max(0.0) } else { acc }
}

#[test]
fn direct_convolution_past_the_limit() {
    let gpu = gpu();
    let spec = Conv2d::new(1, 1, 3).pad(1).with_relu(true);
    let mut r = rng(1);
    let x = random4(&mut r, [1, 1, 2100, 2100]);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, 1);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
        .unwrap()
        .with_algorithm(ConvAlgorithm::Direct);
    // One invocation per output: 4,410,000 / 64 = 68,906.25.
    let got = run_counted(gpu, &conv, &x, &[Kernel::ConvDirect], 68_907);
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
    assert!(rel_error(got.view(), want.view()) <= TOLERANCE);
}

#[test]
fn tiled_convolution_past_the_limit() {
    let gpu = gpu();
    let spec = Conv2d::new(2, 2, 1);
    let mut r = rng(2);
    let x = random4(&mut r, [4, 2, 1450, 1450]);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, 2);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
        .unwrap()
        .with_algorithm(ConvAlgorithm::Tiled);
    // 4 images x ceil(2,102,500 / 128) = 16,426 pixel tiles x 1 channel tile.
    let got = run_counted(gpu, &conv, &x, &[Kernel::ConvPointwise], 4 * 16_426);
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
    assert!(rel_error(got.view(), want.view()) <= TOLERANCE);
}

#[test]
fn blocked_convolution_past_the_limit() {
    let gpu = gpu();
    let spec = Conv2d::new(1, 1, 3).pad(1);
    let mut r = rng(3);
    let x = random4(&mut r, [17, 1, 1000, 1000]);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, 1);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
        .unwrap()
        .with_algorithm(ConvAlgorithm::Blocked);
    assert_eq!(
        conv.kernel_for(Shape::new(17, 1, 1000, 1000)),
        Kernel::ConvBlocked,
        "lavapipe has subgroups of 8: the blocked kernel must run, not a fallback"
    );
    // All 17 images in one window (17 M floats each way) x 1 block of 32 channels x
    // ceil(1,000,000 / (64 x 4)) = 3,907 pixel blocks.
    let got = run_counted(gpu, &conv, &x, &[Kernel::ConvBlocked], 17 * 3_907);
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
    assert!(rel_error(got.view(), want.view()) <= TOLERANCE);
}

#[test]
fn split_reduction_sum_past_the_limit() {
    let gpu = gpu();
    // 128 channels x 200 x 200 pixels = 1 x 313 tiles, below the 512 that fill a GPU, and a
    // reduction of 64 x 9 = 576: split in two slices (576 / 256 = 2), whose sum runs one
    // invocation per output, 5,120,000 / 64 = 80,000 workgroups.
    let spec = Conv2d::new(64, 128, 3).pad(1).with_relu(true);
    let mut r = rng(4);
    let x = random4(&mut r, [1, 64, 200, 200]);
    let w = random4(&mut r, spec.weight_shape());
    let b = random1(&mut r, 128);
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))
        .unwrap()
        .with_algorithm(ConvAlgorithm::Tiled);
    let input = gpu.upload(x.view()).unwrap();
    let output = gpu.filled(Shape::new(1, 128, 200, 200), f32::NAN).unwrap();
    let dispatches = conv.prepare(gpu, &Io::tensors(&input, &output)).unwrap();
    let kernels: Vec<Kernel> = dispatches.iter().map(|d| d.kernel()).collect();
    assert_eq!(kernels, [Kernel::ConvTiled, Kernel::ConvSplitReduce]);
    assert_eq!(dispatches[0].workgroups(), (2 * 313, 1));
    assert_eq!(dispatches[1].workgroups(), (LIMIT as u32, 2));
    gpu.run(&dispatches).unwrap();
    let got = gpu.download(&output).unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "every output written");
    // The whole output against the definition would take billions of f64 multiply-adds:
    // check 3,000 outputs drawn at random, and the corners.
    let mut positions: Vec<_> = (0..3000)
        .map(|_| {
            (
                0,
                r.random_range(0..128),
                r.random_range(0..200),
                r.random_range(0..200),
            )
        })
        .collect();
    positions.extend([(0, 0, 0, 0), (0, 127, 199, 199), (0, 64, 0, 199)]);
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for at in positions {
        let want = conv_at(&x, &spec, &w, Some(&b), at);
        diff = diff.max((got[[at.0, at.1, at.2, at.3]] as f64 - want).abs());
        scale = scale.max(want.abs());
    }
    assert!(diff / scale <= TOLERANCE, "{:e}", diff / scale);
}

#[test]
fn relu_past_the_limit() {
    let gpu = gpu();
    let x = random4(&mut rng(5), [1, 1, 2100, 2100]);
    let got = run_counted(gpu, &GpuRelu, &x, &[Kernel::Relu], 68_907);
    assert!(rel_error(got.view(), reference::relu(x.view()).view()) <= TOLERANCE);
}

#[test]
fn max_pool_past_the_limit() {
    let gpu = gpu();
    let spec = MaxPool2d::caffe(2, 2);
    let x = random4(&mut rng(6), [1, 1, 4200, 4200]);
    let got = run_counted(
        gpu,
        &GpuMaxPool2d::new(spec),
        &x,
        &[Kernel::MaxPool],
        68_907,
    );
    let want = reference::max_pool2d(x.view(), &spec).unwrap();
    assert!(rel_error(got.view(), want.view()) <= TOLERANCE);
}

#[test]
fn softmax_past_the_limit() {
    let gpu = gpu();
    let x = random4(&mut rng(7), [1, 2, 2100, 2100]);
    // One invocation per pixel.
    let got = run_counted(gpu, &GpuSoftmax, &x, &[Kernel::Softmax], 68_907);
    assert!(rel_error(got.view(), reference::softmax(x.view()).view()) <= TOLERANCE);
}

#[test]
fn argmax_past_the_limit() {
    let gpu = gpu();
    let x = random4(&mut rng(8), [1, 3, 2100, 2100]);
    let got = run_counted(gpu, &GpuArgmax, &x, &[Kernel::Argmax], 68_907);
    let want = reference::argmax(x.view());
    let labels = got.mapv(f32::to_bits);
    assert_eq!(labels.dim(), (1, 1, 2100, 2100));
    let wrong = labels
        .iter()
        .zip(want.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(wrong, 0, "labels differing from the reference");
}

#[test]
fn zoom_past_the_limit() {
    let gpu = gpu();
    let spec = Zoom { factor: 8 };
    let x = random4(&mut rng(9), [1, 1, 263, 263]);
    // 2,104 x 2,104 outputs: 4,426,816 / 64 = 69,169.
    let got = run_counted(gpu, &GpuZoom::new(spec), &x, &[Kernel::Zoom], 69_169);
    let want = reference::zoom(x.view(), &spec).unwrap();
    assert!(rel_error(got.view(), want.view()) <= TOLERANCE);
}

#[test]
fn deconvolution_past_the_limit() {
    let gpu = gpu();
    let spec = Deconv2d::bilinear(1, 8);
    let mut r = rng(10);
    let x = random4(&mut r, [1, 1, 263, 263]);
    let w = random4(&mut r, spec.weight_shape());
    let deconv = GpuDeconv2d::new(gpu, spec, w.view()).unwrap();
    // (263 - 1) x 8 - 2 x 4 + 16 = 2,104 per side, as for the zoom.
    let got = run_counted(gpu, &deconv, &x, &[Kernel::Deconv], 69_169);
    let want = reference::deconv2d(x.view(), &spec, w.view()).unwrap();
    assert!(rel_error(got.view(), want.view()) <= TOLERANCE);
}

/// A convolution on a GPU whose bindings are capped at 64 KiB: (65,536 - offset alignment) / 4
/// floats per window.
fn capped_gpu() -> Gpu {
    let mut capped = Gpu::new().unwrap();
    common::check_adapter(&capped);
    capped.set_max_binding_bytes(Some(64 << 10)).unwrap();
    capped
}

/// Runs a convolution on `gpu` with `algorithm`, asserting the kernels of its dispatches in
/// order, and returns its error against the reference.
fn capped_conv(
    gpu: &Gpu,
    seed: u64,
    spec: Conv2d,
    shape: [usize; 4],
    algorithm: ConvAlgorithm,
    kernels: &[Kernel],
) -> f64 {
    let mut r = rng(seed);
    let x = random4(&mut r, shape);
    let w = random4(&mut r, spec.weight_shape());
    let b = spec.bias.then(|| random1(&mut r, spec.out_channels));
    let conv = GpuConv2d::new(gpu, spec, w.view(), b.as_ref().map(|b| b.view()))
        .unwrap()
        .with_algorithm(algorithm);
    let input = gpu.upload(x.view()).unwrap();
    let output = gpu
        .filled(conv.output_shape(input.shape()).unwrap(), f32::NAN)
        .unwrap();
    let dispatches = conv.prepare(gpu, &Io::tensors(&input, &output)).unwrap();
    let got: Vec<Kernel> = dispatches.iter().map(|d| d.kernel()).collect();
    assert_eq!(got, kernels, "{algorithm:?} {spec:?}");
    gpu.run(&dispatches).unwrap();
    let want = reference::conv2d(x.view(), &spec, w.view(), b.as_ref().map(|b| b.view())).unwrap();
    rel_error(gpu.download(&output).unwrap().view(), want.view())
}

#[test]
fn capped_bindings_split_convolutions_into_the_expected_chunks() {
    let gpu = capped_gpu();
    let align = gpu.limits().min_storage_buffer_offset_alignment as usize;
    let max = ((64 << 10) - align) / 4;
    assert!((16_000..=16_383).contains(&max), "window of {max} floats");

    // 20 -> 150 channels, 3x3 dilation 2, 2 images of 30 x 31: output planes of 930 floats,
    // so 17 output channels and 17 input channels per window (16,320 / 930 = 17.5); weight
    // rows of 180 floats allow 90. Chunks: 2 images x ceil(150 / 17) = 9 x ceil(20 / 17) = 2.
    let spec = Conv2d::new(20, 150, 3).dilation(2).pad(2).with_relu(true);
    for (alg, kernel) in [
        (ConvAlgorithm::Direct, Kernel::ConvDirect),
        (ConvAlgorithm::Tiled, Kernel::ConvTiled),
        (ConvAlgorithm::Blocked, Kernel::ConvBlocked),
    ] {
        let err = capped_conv(&gpu, 20, spec, [2, 20, 30, 31], alg, &[kernel; 36]);
        assert!(err <= TOLERANCE, "{alg:?}: {err:e}");
    }

    // 80 -> 40 channels, 5x5, 20 x 20: output planes of 256, weight rows of 2,000 floats, so
    // 8 output channels per window (16,320 / 2,000), 40 input channels (16,320 / 400): 5 x 2
    // chunks. The tiled kernel has 2 tiles per chunk, so it splits each chunk's reduction of
    // 40 x 25 = 1,000 into 1,000 / 256 = 3 slices and adds them in a second pass.
    let spec = Conv2d::new(80, 40, 5).with_relu(true);
    let tiled: Vec<Kernel> = [Kernel::ConvTiled, Kernel::ConvSplitReduce].repeat(10);
    let err = capped_conv(
        &gpu,
        21,
        spec,
        [1, 80, 20, 20],
        ConvAlgorithm::Tiled,
        &tiled,
    );
    assert!(err <= TOLERANCE, "tiled, split: {err:e}");
    for (alg, kernel) in [
        (ConvAlgorithm::Direct, Kernel::ConvDirect),
        (ConvAlgorithm::Blocked, Kernel::ConvBlocked),
    ] {
        let err = capped_conv(&gpu, 21, spec, [1, 80, 20, 20], alg, &[kernel; 10]);
        assert!(err <= TOLERANCE, "{alg:?}: {err:e}");
    }

    // Without a cap the same layer is one chunk.
    let err = capped_conv(
        common::gpu(),
        21,
        spec,
        [1, 80, 20, 20],
        ConvAlgorithm::Direct,
        &[Kernel::ConvDirect],
    );
    assert!(err <= TOLERANCE, "uncapped: {err:e}");
}

#[test]
fn capped_bindings_split_plane_ops_into_the_expected_chunks() {
    let gpu = capped_gpu();
    // Planes of 60 x 70 = 4,200 floats: 3 planes per window, 2 x 5 = 10 planes in 4 chunks.
    let x = random4(&mut rng(30), [2, 5, 60, 70]);
    let spec = MaxPool2d::caffe(3, 2);
    let pool = GpuMaxPool2d::new(spec);
    let input = gpu.upload(x.view()).unwrap();
    let output = gpu
        .filled(pool.output_shape(input.shape()).unwrap(), f32::NAN)
        .unwrap();
    let dispatches = pool.prepare(&gpu, &Io::tensors(&input, &output)).unwrap();
    assert_eq!(dispatches.len(), 4);
    gpu.run(&dispatches).unwrap();
    let want = reference::max_pool2d(x.view(), &spec).unwrap();
    assert!(rel_error(gpu.download(&output).unwrap().view(), want.view()) <= TOLERANCE);

    // Images of 5 x 4,200 = 21,000 floats exceed a window: softmax refuses, naming the limit.
    let soft = GpuSoftmax.forward(&gpu, &input);
    assert!(
        matches!(soft, Err(dilated::Error::ExceedsDeviceLimits { .. })),
        "{:?}",
        soft.err()
    );
    // Images of 3 x 40 x 40 = 4,800 floats: 3 per window, 7 images in 3 chunks.
    let x = random4(&mut rng(31), [7, 3, 40, 40]);
    let input = gpu.upload(x.view()).unwrap();
    let output = gpu.filled(input.shape(), f32::NAN).unwrap();
    let dispatches = GpuSoftmax
        .prepare(&gpu, &Io::tensors(&input, &output))
        .unwrap();
    assert_eq!(dispatches.len(), 3);
    gpu.run(&dispatches).unwrap();
    let want = reference::softmax(x.view());
    assert!(rel_error(gpu.download(&output).unwrap().view(), want.view()) <= TOLERANCE);
}
