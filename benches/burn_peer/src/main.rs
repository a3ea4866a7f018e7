//! dilated's GPU convolution against burn's (wgpu backend, autotune on) on the shapes of
//! `benches/ops.rs`, alternating the two shape by shape in one process on the same adapter.
//!
//! Both sides time what a user of either library waits for: the convolution of an input
//! already on the GPU, with the output read back to the host (`GpuConv2d` dispatch plus
//! `Gpu::download`; burn's `module::conv2d` plus `into_data`). Weights are uploaded once. Each
//! side gets warm-up runs first (burn's autotune measures its candidates then), then timed
//! runs, the two sides alternating call by call so that the machine's slow spells fall on both;
//! the median time gives GFLOP/s (a multiply-add counts 2).
//!
//! `BURN_PEER_RUNS` (default 5) sets the timed runs; `BURN_PEER_FILTER` keeps shapes whose
//! name contains it. The adapter is wgpu's default on both sides (`WGPU_BACKEND=vulkan` picks
//! Vulkan, e.g. lavapipe).

use std::time::{Duration, Instant};

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use dilated::gpu::{GpuLayer, Io};
use dilated::{Conv2d, Gpu, GpuConv2d, Shape};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One shape of `benches/ops.rs`: name, spec, input.
fn shapes() -> Vec<(&'static str, Conv2d, Shape)> {
    vec![
        (
            "conv3x3_256_d1",
            Conv2d::new(256, 256, 3).dilation(1).pad(1),
            Shape::new(1, 256, 64, 64),
        ),
        (
            "conv3x3_256_d4",
            Conv2d::new(256, 256, 3).dilation(4).pad(4),
            Shape::new(1, 256, 64, 64),
        ),
        (
            "conv3x3_256_d16",
            Conv2d::new(256, 256, 3).dilation(16).pad(16),
            Shape::new(1, 256, 64, 64),
        ),
        (
            "conv1x1_1024",
            Conv2d::new(1024, 1024, 1),
            Shape::new(1, 1024, 64, 64),
        ),
        (
            "fc6_7x7_d4_512_1024",
            Conv2d::new(512, 1024, 7).dilation(4),
            Shape::new(1, 512, 56, 56),
        ),
    ]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The time of one call of `f`.
fn once(f: &mut impl FnMut()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// `runs` timed calls of `a` and of `b`, alternating (a, b, a, b, ...) so that a slow spell of
/// the machine falls on both sides alike, after `warm` untimed calls of each: the medians.
fn time_alternating(
    warm: usize,
    runs: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (Duration, Duration) {
    for _ in 0..warm {
        a();
        b();
    }
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        ta.push(once(&mut a));
        tb.push(once(&mut b));
    }
    (median(ta), median(tb))
}

fn main() {
    let runs: usize = std::env::var("BURN_PEER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let filter = std::env::var("BURN_PEER_FILTER").unwrap_or_default();
    let gpu = Gpu::new().expect("dilated: no GPU adapter");
    println!(
        "dilated on {}; burn 0.20.1 (wgpu backend, autotune) on wgpu's default adapter",
        gpu.name()
    );
    let device = WgpuDevice::default();
    let mut rng = StdRng::seed_from_u64(7);
    println!(
        "{:<22} {:>8} {:>14} {:>14} {:>8}",
        "shape", "GFLOP", "dilated GFLOP/s", "burn GFLOP/s", "ratio"
    );
    for (name, spec, input) in shapes() {
        if !name.contains(&filter) {
            continue;
        }
        let out = spec.output_shape(input, name).expect("shape");
        let gflop = spec.flops(out) as f64 / 1e9;
        let x = Array4::from_shape_simple_fn(input.dims(), || rng.random_range(-1.0f32..1.0));
        let w =
            Array4::from_shape_simple_fn(spec.weight_shape(), || rng.random_range(-1.0f32..1.0));
        let b = Array1::from_shape_simple_fn(spec.out_channels, || rng.random_range(-1.0f32..1.0));

        // dilated: input, weights and output on the GPU, dispatches recorded once.
        let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view())).expect("weights");
        let xg = gpu.upload(x.view()).expect("upload");
        let yg = gpu.empty(out).expect("output");
        let dispatches = conv.prepare(&gpu, &Io::tensors(&xg, &yg)).expect("prepare");
        // burn: the same data, uploaded once.
        let tensor = |a: &Array4<f32>| {
            let shape = a.shape().to_vec();
            Tensor::<Wgpu, 4>::from_data(
                TensorData::new(a.iter().copied().collect::<Vec<_>>(), shape),
                &device,
            )
        };
        let (xb, wb) = (tensor(&x), tensor(&w));
        let bb =
            Tensor::<Wgpu, 1>::from_data(TensorData::new(b.to_vec(), [spec.out_channels]), &device);
        let p = spec.padding;
        let options = ConvOptions::new(
            [spec.stride.0, spec.stride.1],
            [p.top, p.left],
            [spec.dilation.0, spec.dilation.1],
            1,
        );
        // Three warm-up calls of each: burn's autotune measures its candidates then.
        let (ours, theirs) = time_alternating(
            3,
            runs,
            || {
                gpu.run(&dispatches).expect("run");
                std::hint::black_box(gpu.download(&yg).expect("download"));
            },
            || {
                let y = conv2d(xb.clone(), wb.clone(), Some(bb.clone()), options.clone());
                std::hint::black_box(y.into_data());
            },
        );
        let (g_ours, g_theirs) = (gflop / ours.as_secs_f64(), gflop / theirs.as_secs_f64());
        println!(
            "{name:<22} {gflop:>8.2} {g_ours:>14.1} {g_theirs:>14.1} {:>8.2}",
            g_ours / g_theirs
        );
    }
}
