//! Convolution throughput, GPU and CPU side by side, in GFLOP/s (a multiply-add counts 2).
//!
//! `cargo bench --bench ops` runs: conv3x3 256->256 on 64x64 with dilation 1, 2, 4, 8 and 16
//! (padding = dilation, so the output stays 64x64); a conv5-like conv3x3 512->512 with dilation
//! 2 on 64x64; conv1x1 1024->1024 on 64x64; an fc6-like
//! 7x7 dilation-4 512->1024 layer with a 32x32 output; and, as the baseline, the GPU direct and
//! workgroup-tiled kernels on conv3x3 256->256 with dilation 1. The GPU side times forward
//! passes with the input, weights and output already on the GPU (dispatches recorded once);
//! `gpu` is the kernel `ConvAlgorithm::Auto` picks on this adapter. The CPU side is
//! `dilated::cpu::fast::CpuConv2d`. Then whole context modules as compiled plans (one
//! submission per pass on the GPU, `CpuPlan` on the CPU): basic and large for 21 classes at
//! 66x66 and Cityscapes' basic module (19 classes, dilations to 64) at 128x128. Set
//! `DILATED_BENCH_ALL_KERNELS=1` to time every GPU kernel on every shape (slow on software
//! adapters), or `DILATED_BENCH_KERNELS=tiled` (a comma-separated list of `blocked`,
//! `blocked64`, `packed`, `tiled`, `direct`) for those kernels on every shape. A GFLOP/s summary is printed at the end.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use dilated::cpu::fast::CpuConv2d;
use dilated::gpu::Kernel;
use dilated::gpu::{GpuLayer, Io};
use dilated::net::ContextModule;
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::{Conv2d, ConvAlgorithm, Gpu, GpuConv2d, Shape};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// (benchmark id, flops per run, total time, runs) of every timed benchmark.
static RESULTS: Mutex<Vec<(String, u64, Duration, u64)>> = Mutex::new(Vec::new());

fn record(id: &str, flops: u64, elapsed: Duration, runs: u64) {
    if let Ok(mut r) = RESULTS.lock() {
        match r.iter_mut().find(|e| e.0 == id) {
            Some(e) => {
                e.2 += elapsed;
                e.3 += runs;
            }
            None => r.push((id.to_string(), flops, elapsed, runs)),
        }
    }
}

struct Layer {
    name: &'static str,
    spec: Conv2d,
    input: Shape,
}

fn layers() -> Vec<Layer> {
    let mut v: Vec<Layer> = [1, 2, 4, 8, 16]
        .into_iter()
        .map(|d| Layer {
            name: match d {
                1 => "conv3x3_256_d1",
                2 => "conv3x3_256_d2",
                4 => "conv3x3_256_d4",
                8 => "conv3x3_256_d8",
                _ => "conv3x3_256_d16",
            },
            spec: Conv2d::new(256, 256, 3).dilation(d).pad(d),
            input: Shape::new(1, 256, 64, 64),
        })
        .collect();
    // conv5-like: 512 -> 512 with dilation 2 (the front-end's conv5 layers).
    v.push(Layer {
        name: "conv3x3_512_d2",
        spec: Conv2d::new(512, 512, 3).dilation(2).pad(2),
        input: Shape::new(1, 512, 64, 64),
    });
    v.push(Layer {
        name: "conv1x1_1024",
        spec: Conv2d::new(1024, 1024, 1),
        input: Shape::new(1, 1024, 64, 64),
    });
    v.push(Layer {
        name: "fc6_7x7_d4_512_1024",
        spec: Conv2d::new(512, 1024, 7).dilation(4),
        input: Shape::new(1, 512, 56, 56),
    });
    v
}

fn random(rng: &mut StdRng, shape: [usize; 4]) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Times `run` as the benchmark `label` of `group`, recording its GFLOP/s under `id`.
fn timed(
    group: &mut BenchmarkGroup<'_, WallTime>,
    label: impl Into<String>,
    id: &str,
    flops: u64,
    mut run: impl FnMut(),
) {
    group.bench_function(label.into(), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                run();
            }
            let elapsed = start.elapsed();
            record(id, flops, elapsed, iters);
            elapsed
        })
    });
}

fn bench_gpu(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    layer: &Layer,
    data: &(Array4<f32>, Array4<f32>, Array1<f32>),
    label: &str,
    algorithm: ConvAlgorithm,
    skip: Option<Kernel>,
) -> Kernel {
    let flops = layer.spec.flops(
        layer
            .spec
            .output_shape(layer.input, "bench")
            .expect("shape"),
    );
    let conv = GpuConv2d::new(gpu, layer.spec, data.1.view(), Some(data.2.view()))
        .expect("upload weights")
        .with_algorithm(algorithm);
    let input = gpu.upload(data.0.view()).expect("upload input");
    let output = gpu
        .empty(conv.output_shape(layer.input).expect("shape"))
        .expect("output");
    let dispatches = conv
        .prepare(gpu, &Io::tensors(&input, &output))
        .expect("prepare");
    let kernel = conv.kernel_for(output.shape());
    if skip == Some(kernel) {
        return kernel;
    }
    gpu.run(&dispatches).expect("warm-up run");
    let id = format!("{}/{label} ({kernel:?})", layer.name);
    timed(group, format!("{label} ({kernel:?})"), &id, flops, || {
        gpu.run(&dispatches).expect("run");
    });
    kernel
}

fn bench_cpu(
    group: &mut BenchmarkGroup<'_, WallTime>,
    layer: &Layer,
    data: &(Array4<f32>, Array4<f32>, Array1<f32>),
) {
    let flops = layer.spec.flops(
        layer
            .spec
            .output_shape(layer.input, "bench")
            .expect("shape"),
    );
    let conv = CpuConv2d::new(layer.spec, data.1.view(), Some(data.2.view())).expect("weights");
    let id = format!("{}/cpu_fast", layer.name);
    timed(group, "cpu_fast", &id, flops, || {
        std::hint::black_box(conv.forward(data.0.view()).expect("forward"));
    });
}

fn convolutions(c: &mut Criterion) {
    let gpu = match Gpu::new() {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("no GPU, CPU benchmarks only: {e}");
            None
        }
    };
    if let Some(g) = &gpu {
        eprintln!("adapter: {} ({:?})", g.name(), g.adapter().info.backend);
    }
    let all = std::env::var_os("DILATED_BENCH_ALL_KERNELS").is_some();
    // Extra kernels on every shape, e.g. `DILATED_BENCH_KERNELS=tiled` or `blocked,tiled`.
    let extra = std::env::var("DILATED_BENCH_KERNELS").unwrap_or_default();
    let wanted = |label: &str| {
        extra
            .split(',')
            .any(|k| !k.is_empty() && label == format!("gpu_{}", k.trim()))
    };
    let mut rng = StdRng::seed_from_u64(7);
    for layer in layers() {
        let data = (
            random(&mut rng, layer.input.dims()),
            random(&mut rng, layer.spec.weight_shape()),
            Array1::from_shape_simple_fn(layer.spec.out_channels, || rng.random_range(-1.0..1.0)),
        );
        let flops = layer.spec.flops(
            layer
                .spec
                .output_shape(layer.input, "bench")
                .expect("shape"),
        );
        let mut group = c.benchmark_group(layer.name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(flops));
        if let Some(gpu) = &gpu {
            let auto = bench_gpu(
                &mut group,
                gpu,
                &layer,
                &data,
                "gpu",
                ConvAlgorithm::Auto,
                None,
            );
            for (label, algorithm) in [
                ("gpu_blocked", ConvAlgorithm::Blocked),
                ("gpu_blocked64", ConvAlgorithm::BlockedWide),
                ("gpu_packed", ConvAlgorithm::BlockedPacked),
                ("gpu_tiled", ConvAlgorithm::Tiled),
                ("gpu_direct", ConvAlgorithm::Direct),
            ] {
                if all || wanted(label) || layer.name == "conv3x3_256_d1" {
                    bench_gpu(&mut group, gpu, &layer, &data, label, algorithm, Some(auto));
                }
            }
        }
        bench_cpu(&mut group, &layer, &data);
        group.finish();
    }
}

fn context_modules(c: &mut Criterion) {
    let gpu = Gpu::new().ok();
    let modules = [
        ("context_basic_c21_66", ContextModule::basic(21), 66),
        ("context_large_c21_66", ContextModule::large(21), 66),
        (
            "context_cityscapes_c19_128",
            ContextModule::basic(19).dilations(&[1, 1, 2, 4, 8, 16, 32, 64, 1]),
            128,
        ),
    ];
    let mut rng = StdRng::seed_from_u64(11);
    for (name, module, size) in modules {
        let net = module.build().expect("context module");
        let shape = Shape::new(1, module.classes, size, size);
        let flops: u64 = net
            .report(shape)
            .expect("report")
            .iter()
            .map(|r| r.flops)
            .sum();
        let x = random(&mut rng, shape.dims());
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(flops));
        if let Some(gpu) = &gpu {
            let plan = GpuPlan::new(gpu, &net, shape).expect("plan");
            plan.forward(x.view()).expect("warm-up");
            let id = format!("{name}/gpu");
            timed(&mut group, "gpu", &id, flops, || {
                std::hint::black_box(plan.forward(x.view()).expect("forward"));
            });
        }
        let plan = CpuPlan::new(&net).expect("cpu plan");
        let id = format!("{name}/cpu_fast");
        timed(&mut group, "cpu_fast", &id, flops, || {
            std::hint::black_box(plan.forward(x.view()).expect("forward"));
        });
        group.finish();
    }
}

fn summary() {
    let Ok(results) = RESULTS.lock() else {
        return;
    };
    println!("\n{:<52} {:>10} {:>12}", "benchmark", "ms/run", "GFLOP/s");
    for (id, flops, elapsed, runs) in results.iter() {
        let secs = elapsed.as_secs_f64() / (*runs).max(1) as f64;
        println!(
            "{id:<52} {:>10.1} {:>12.2}",
            secs * 1e3,
            *flops as f64 / secs / 1e9
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    convolutions(&mut c);
    context_modules(&mut c);
    c.final_summary();
    summary();
}
