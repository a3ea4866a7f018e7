//! Several threads sharing one GPU handle: compiled plans (shared and per thread) and one-shot
//! ops give bitwise the results of the same calls made serially, and one thread's errors are
//! reported to that thread only.

mod common;

use std::sync::Arc;

use common::{gpu, random4, reference_forward, rel_error, rng};
use dilated::cpu::reference;
use dilated::gpu::GpuDeconv2d;
use dilated::gpu::{GpuLayer, GpuMaxPool2d, GpuRelu, GpuSoftmax, GpuZoom};
use dilated::net::Network;
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::plan::executor::Executor;
use dilated::{Conv2d, Error, Gpu, GpuConv2d, GpuTensor, MaxPool2d, Shape, Zoom};
use ndarray::{Array3, Array4};

const THREADS: usize = 4;
const ITERATIONS: usize = 3;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn handles_plans_and_layers_are_send_and_sync() {
    assert_send_sync::<Gpu>();
    assert_send_sync::<GpuPlan<'static>>();
    assert_send_sync::<GpuConv2d>();
    assert_send_sync::<GpuDeconv2d>();
    assert_send_sync::<GpuTensor>();
    assert_send_sync::<CpuPlan>();
    assert_send_sync::<Network>();
    assert_send_sync::<Executor<'static>>();
    assert_send_sync::<Error>();
}

/// A small network with every kind of layer a plan compiles.
fn network_a() -> Network {
    Network::builder("a", 3)
        .conv_he(
            "conv1",
            Conv2d::new(3, 8, 3).dilation(2).pad(2).with_relu(true),
            1,
        )
        .max_pool("pool1", MaxPool2d::caffe(2, 2))
        .conv_he("conv2", Conv2d::new(8, 6, 1), 2)
        .softmax("prob")
        .build()
        .unwrap()
}

fn network_b() -> Network {
    Network::builder("b", 3)
        .conv_he("conv1", Conv2d::new(3, 5, 3).pad(1), 3)
        .relu("relu1")
        .zoom("zoom", 2)
        .conv_he("conv2", Conv2d::new(5, 4, 3).stride(2), 4)
        .build()
        .unwrap()
}

const SHAPE_A: Shape = Shape::new(1, 3, 20, 22);
const SHAPE_B: Shape = Shape::new(1, 3, 11, 9);

fn input(shape: Shape, thread: usize, iteration: usize) -> Array4<f32> {
    random4(
        &mut rng(1000 + 10 * thread as u64 + iteration as u64),
        shape.dims(),
    )
}

fn bits(a: &Array4<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn concurrent_forward_passes_match_serial_runs_bitwise() {
    let gpu = gpu();
    let (net_a, net_b) = (network_a(), network_b());
    let shared = GpuPlan::new(gpu, &net_a, SHAPE_A).unwrap();

    // Serial runs: the shared plan on every thread's inputs, and a plan of the second network.
    let serial_b = GpuPlan::new(gpu, &net_b, SHAPE_B).unwrap();
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for t in 0..THREADS {
        for i in 0..ITERATIONS {
            want_a.push(shared.forward(input(SHAPE_A, t, i).view()).unwrap());
            want_b.push(serial_b.forward(input(SHAPE_B, t, i).view()).unwrap());
        }
    }
    // The serial results are right, not merely repeatable: against the f64 reference, within
    // a few f32 roundings of these small networks' short sums (at most 45 terms; observed
    // 2e-7), the single-op tolerance of `tests/gpu_ops.rs`.
    let x = input(SHAPE_A, 0, 0);
    let e = rel_error(want_a[0].view(), reference_forward(&net_a, x.view()).view());
    assert!(e < 1e-5, "network a: GPU vs reference error {e:.2e}");
    let x = input(SHAPE_B, 0, 0);
    let e = rel_error(want_b[0].view(), reference_forward(&net_b, x.view()).view());
    assert!(e < 1e-5, "network b: GPU vs reference error {e:.2e}");
    drop(serial_b);

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (shared, net_a, net_b) = (&shared, &net_a, &net_b);
                s.spawn(move || {
                    // Half the threads compile their own plan of the second network, the other
                    // half their own plan of the first; every thread also uses the shared one.
                    let own = if t % 2 == 0 {
                        GpuPlan::new(gpu, net_b, SHAPE_B).unwrap()
                    } else {
                        GpuPlan::new(gpu, net_a, SHAPE_A).unwrap()
                    };
                    let mut got = Vec::new();
                    for i in 0..ITERATIONS {
                        let a = shared.forward(input(SHAPE_A, t, i).view()).unwrap();
                        let x = input(own.input_shape(), t, i);
                        got.push((i, a, own.forward(x.view()).unwrap()));
                    }
                    (t, got)
                })
            })
            .collect();
        for h in handles {
            let (t, got) = h.join().expect("thread panicked");
            for (i, a, own) in got {
                let k = t * ITERATIONS + i;
                assert_eq!(
                    bits(&a),
                    bits(&want_a[k]),
                    "shared plan, thread {t} pass {i}"
                );
                let want = if t % 2 == 0 { &want_b[k] } else { &want_a[k] };
                assert_eq!(bits(&own), bits(want), "own plan, thread {t} pass {i}");
            }
        }
    });
}

/// The one-shot ops of one thread's inputs: conv, deconv, ReLU, max pool, softmax, zoom,
/// argmax.
struct OneShot {
    conv: Array4<f32>,
    deconv: Array4<f32>,
    relu: Array4<f32>,
    pool: Array4<f32>,
    softmax: Array4<f32>,
    zoom: Array4<f32>,
    argmax: Array3<u32>,
}

struct Layers {
    conv: GpuConv2d,
    deconv: GpuDeconv2d,
}

fn layers(gpu: &Gpu) -> Layers {
    let spec = Conv2d::new(4, 6, 3).dilation_hw(1, 2).pad(2);
    let mut r = rng(77);
    let w = random4(&mut r, spec.weight_shape());
    let b = common::random1(&mut r, 6);
    let d = dilated::Deconv2d::bilinear(4, 2);
    let dw = random4(&mut r, d.weight_shape());
    Layers {
        conv: GpuConv2d::new(gpu, spec, w.view(), Some(b.view())).unwrap(),
        deconv: GpuDeconv2d::new(gpu, d, dw.view()).unwrap(),
    }
}

fn one_shot(gpu: &Gpu, layers: &Layers, seed: u64) -> Result<OneShot, Error> {
    let x = random4(&mut rng(seed), [2, 4, 9, 13]);
    let t = gpu.upload(x.view())?;
    let pool = MaxPool2d::caffe(3, 2);
    Ok(OneShot {
        conv: gpu.download(&layers.conv.forward(gpu, &t)?)?,
        deconv: gpu.download(&layers.deconv.forward(gpu, &t)?)?,
        relu: gpu.download(&GpuRelu.forward(gpu, &t)?)?,
        pool: gpu.download(&GpuMaxPool2d::new(pool).forward(gpu, &t)?)?,
        softmax: gpu.download(&GpuSoftmax.forward(gpu, &t)?)?,
        zoom: gpu.download(&GpuZoom::new(Zoom { factor: 3 }).forward(gpu, &t)?)?,
        argmax: gpu.argmax(&t)?,
    })
}

fn same(a: &OneShot, b: &OneShot, what: &str) {
    assert_eq!(bits(&a.conv), bits(&b.conv), "conv, {what}");
    assert_eq!(bits(&a.deconv), bits(&b.deconv), "deconv, {what}");
    assert_eq!(bits(&a.relu), bits(&b.relu), "relu, {what}");
    assert_eq!(bits(&a.pool), bits(&b.pool), "max pool, {what}");
    assert_eq!(bits(&a.softmax), bits(&b.softmax), "softmax, {what}");
    assert_eq!(bits(&a.zoom), bits(&b.zoom), "zoom, {what}");
    assert_eq!(a.argmax, b.argmax, "argmax, {what}");
}

#[test]
fn concurrent_one_shot_ops_match_serial_runs_bitwise() {
    let gpu = gpu();
    let layers = layers(gpu);
    let seeds: Vec<Vec<u64>> = (0..THREADS)
        .map(|t| (0..ITERATIONS).map(|i| 500 + (t * 10 + i) as u64).collect())
        .collect();
    let serial: Vec<Vec<OneShot>> = seeds
        .iter()
        .map(|s| {
            s.iter()
                .map(|&seed| one_shot(gpu, &layers, seed).unwrap())
                .collect()
        })
        .collect();
    // Checked against the CPU once, so agreement is agreement on right answers.
    let x = random4(&mut rng(seeds[0][0]), [2, 4, 9, 13]);
    let first = &serial[0][0];
    let spec = *layers.conv.spec();
    let mut r = rng(77);
    let w = random4(&mut r, spec.weight_shape());
    let b = common::random1(&mut r, 6);
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view())).unwrap();
    assert!(rel_error(first.conv.view(), want.view()) < 1e-4);
    assert!(rel_error(first.relu.view(), reference::relu(x.view()).view()) == 0.0);
    assert!(rel_error(first.softmax.view(), reference::softmax(x.view()).view()) < 1e-5);
    assert_eq!(first.argmax, reference::argmax(x.view()));

    std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .iter()
            .enumerate()
            .map(|(t, seeds)| {
                let layers = &layers;
                s.spawn(move || {
                    let got: Vec<OneShot> = seeds
                        .iter()
                        .map(|&seed| one_shot(gpu, layers, seed).unwrap())
                        .collect();
                    (t, got)
                })
            })
            .collect();
        for h in handles {
            let (t, got) = h.join().expect("thread panicked");
            for (i, g) in got.iter().enumerate() {
                same(g, &serial[t][i], &format!("thread {t} pass {i}"));
            }
        }
    });
}

#[test]
fn one_threads_errors_are_not_reported_to_another() {
    let gpu = gpu();
    // A tensor whose buffer was destroyed: every use of it is a wgpu validation error, found
    // when the commands are submitted.
    let foreign = Arc::new(
        gpu.upload(random4(&mut rng(3), [1, 4, 9, 13]).view())
            .unwrap(),
    );
    foreign.buffer().destroy();
    let layers = layers(gpu);
    let serial = one_shot(gpu, &layers, 42).unwrap();
    std::thread::scope(|s| {
        let failing = {
            let foreign = foreign.clone();
            s.spawn(move || {
                let mut errors = 0;
                for _ in 0..3 * ITERATIONS {
                    errors += usize::from(gpu.download(&foreign).is_err());
                    errors += usize::from(GpuRelu.forward(gpu, &foreign).is_err());
                    errors += usize::from(GpuSoftmax.forward(gpu, &foreign).is_err());
                }
                errors
            })
        };
        let working: Vec<_> = (0..THREADS - 1)
            .map(|t| {
                let layers = &layers;
                s.spawn(move || {
                    (0..ITERATIONS)
                        .map(|i| {
                            one_shot(gpu, layers, 42)
                                .unwrap_or_else(|e| panic!("thread {t} pass {i}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        assert_eq!(
            failing.join().expect("thread panicked"),
            9 * ITERATIONS,
            "every use of a foreign tensor fails"
        );
        for (t, h) in working.into_iter().enumerate() {
            for (i, g) in h.join().expect("thread panicked").iter().enumerate() {
                same(g, &serial, &format!("thread {t} pass {i}"));
            }
        }
    });
    // The device is still healthy.
    assert!(!gpu.is_lost());
    same(&one_shot(gpu, &layers, 42).unwrap(), &serial, "after");
}

/// The CPU plan reuses its activation buffers between passes: passes on inputs of changing
/// sizes, from several threads at once, give what a fresh plan gives for each input (bitwise),
/// and that is the f64 reference's result.
#[test]
fn cpu_plan_passes_reuse_buffers_without_mixing_them() {
    let net = network_b();
    let plan = CpuPlan::new(&net).unwrap();
    let shapes = [SHAPE_B, Shape::new(2, 3, 17, 13), Shape::new(1, 3, 6, 7)];
    let want: Vec<Vec<_>> = (0..THREADS)
        .map(|t| {
            shapes
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let fresh = CpuPlan::new(&net).unwrap();
                    bits(&fresh.forward(input(s, t, i).view()).unwrap())
                })
                .collect()
        })
        .collect();
    let x = input(shapes[1], 0, 1);
    let e = rel_error(
        plan.forward(x.view()).unwrap().view(),
        reference_forward(&net, x.view()).view(),
    );
    assert!(e < 1e-5, "CPU plan vs reference error {e:.2e}");
    assert!(plan.buffer_bytes() > 0);
    plan.release_buffers();
    assert_eq!(plan.buffer_bytes(), 0);
    std::thread::scope(|s| {
        for (t, want) in want.iter().enumerate() {
            let (plan, shapes) = (&plan, &shapes);
            s.spawn(move || {
                for round in 0..3 {
                    for (i, &shape) in shapes.iter().enumerate() {
                        let got = plan.forward(input(shape, t, i).view()).unwrap();
                        assert_eq!(
                            bits(&got),
                            want[i],
                            "thread {t} round {round} shape {shape}"
                        );
                    }
                }
            });
        }
    });
}
