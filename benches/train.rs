//! Training iterations per second: forward, loss, backward and SGD update of whole networks,
//! on the CPU's fast path (`dilated::train::CpuTrainer`) and on the GPU
//! (`dilated::plan::GpuTrainer`).
//! `benches/pytorch_train_reference.py` runs the same steps in PyTorch on the CPU.
//!
//! Cases:
//!
//! * `context_large_voc`: the context module of `dilation8_pascal_voc` as the preset builds it
//!   (large, 21 classes, channels 42 ... 672, the first layer padded by 33), on 66 x 66 cached
//!   scores, batch `TRAIN_BENCH_BATCH` (default 2; the authors train it at 60), CPU and GPU;
//! * `context_basic_c21`: the basic module (21 channels throughout) on 66 x 66, batch 60 (the
//!   authors' batch), CPU and GPU;
//! * `frontend_w8`: the front-end with widths divided by 8 on 500 x 500 crops (16 x 16 scores,
//!   as the authors' front-end training), dropout 0.5 after fc6 and fc7, batch
//!   `TRAIN_BENCH_FE_BATCH` (default 2), CPU and GPU (the same dropout masks on both).
//!
//! Criterion reports the throughput in "elem/s" where one element is one FLOP of the
//! iteration (multiply-add = 2; forward, weight and input gradients of every convolution), so
//! `Gelem/s` reads as GFLOP/s:
//!
//!     cargo bench --bench train [-- FILTER]
//!
//! With `TRAIN_BENCH_TABLE=1` it prints instead one line per case, after
//! `TRAIN_BENCH_WARMUP` untimed iterations (default 1; with 0 the first timed iteration
//! includes building the GPU's pipelines): iterations per second (best
//! and median wall clock over `TRAIN_BENCH_SECS`, default 10, at least `TRAIN_BENCH_RUNS`
//! iterations, default 3), seconds per iteration and GFLOP/s at the median,
//! and GFLOP per second of process CPU time (Linux):
//!
//!     TRAIN_BENCH_TABLE=1 RAYON_NUM_THREADS=2 cargo bench --bench train [-- FILTER]
//!
//! With `TRAIN_BENCH_PROFILE=N` it prints the CPU trainer's time per layer and phase
//! (forward, weight gradient, input gradient, loss, update), each the shortest over N
//! iterations, with the convolutions' GFLOP/s.
//!
//! The GPU cases run when wgpu finds an adapter (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME` choose
//! it) that is not a software one (lavapipe takes about 7 s per iteration of the basic module
//! at batch 60 on 2 cores, and about 13 minutes for the large one; `TRAIN_BENCH_GPU=1` times
//! it anyway); `TRAIN_BENCH_NO_GPU=1` skips them.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dilated::gpu::SgdHyper;
use dilated::net::{FrontEnd, Model, Network, Op, PresetOptions};
use dilated::plan::GpuTrainer;
use dilated::train::{CpuTrainer, Dropout, SgdConfig};
use dilated::{Gpu, Shape};
use ndarray::{Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One benchmark: a network, its batch, and dropout layers.
struct Case {
    name: String,
    net: Network,
    input: Shape,
    dropout: Vec<(&'static str, f32)>,
    gpu: bool,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn cases() -> Vec<Case> {
    let batch = env_usize("TRAIN_BENCH_BATCH", 2);
    let fe_batch = env_usize("TRAIN_BENCH_FE_BATCH", 2);
    let voc = Model::PascalVoc
        .context_module(&PresetOptions::default())
        .build()
        .expect("the VOC context module builds");
    let basic = dilated::net::ContextModule::basic(21)
        .build()
        .expect("the basic module builds");
    let front = FrontEnd {
        classes: 21,
        width_divisor: 8,
        final_layer: "fc-final",
    }
    .build("frontend_w8", 0)
    .expect("the front-end builds");
    vec![
        Case {
            name: format!("context_large_voc_b{batch}"),
            net: voc,
            input: Shape::new(batch, 21, 66, 66),
            dropout: vec![],
            gpu: true,
        },
        Case {
            name: "context_basic_c21_b60".into(),
            net: basic,
            input: Shape::new(60, 21, 66, 66),
            dropout: vec![],
            gpu: true,
        },
        Case {
            name: format!("frontend_w8_500_b{fe_batch}"),
            net: front,
            input: Shape::new(fe_batch, 3, 500, 500),
            dropout: vec![("fc6", 0.5), ("fc7", 0.5)],
            gpu: true,
        },
    ]
}

/// FLOP of one training iteration: every convolution's forward pass and weight gradient, and
/// its input gradient unless it is the first convolution.
fn train_flops(net: &Network, input: Shape) -> u64 {
    let shapes = net.shapes(input).expect("valid bench input");
    let mut first = true;
    let mut total = 0;
    for (l, s) in net.layers().iter().zip(&shapes) {
        if let Op::Conv { spec, .. } = &l.op {
            let f = spec.flops(*s);
            total += if first { 2 * f } else { 3 * f };
            first = false;
        }
    }
    total
}

/// A runnable iteration on one backend.
type Step<'a> = Box<dyn FnMut() + 'a>;

/// The case's random batch: inputs, labels (a tenth ignored), dropout masks.
fn batch(case: &Case) -> (Array4<f32>, Array3<u32>, Vec<Dropout>) {
    let mut rng = StdRng::seed_from_u64(1);
    let out = case
        .net
        .output_shape(case.input)
        .expect("valid bench input");
    let classes = out.c as u32;
    let x = Array4::from_shape_simple_fn(case.input.dims(), || rng.random_range(-1.0f32..1.0));
    let y = Array3::from_shape_simple_fn((out.n, out.h, out.w), || {
        if rng.random_bool(0.1) {
            255
        } else {
            rng.random_range(0..classes)
        }
    });
    let masks = Dropout::masks(&case.net, case.input, &case.dropout, 2).expect("valid dropout");
    (x, y, masks)
}

/// The solver settings of the authors' context stage.
fn config() -> SgdConfig {
    SgdConfig::default()
}

/// The CPU step of a case.
fn cpu_step(case: &Case) -> Step<'static> {
    let mut trainer =
        CpuTrainer::new(&case.net, case.input, config()).expect("the CPU trainer builds");
    let (x, y, masks) = batch(case);
    let mut iter = 0;
    Box::new(move || {
        trainer
            .step(x.view(), y.view(), &masks, iter)
            .expect("a CPU training step");
        iter += 1;
    })
}

/// The GPU step of a case.
fn gpu_step<'g>(gpu: &'g Gpu, case: &Case) -> Step<'g> {
    let mut trainer = GpuTrainer::new(gpu, &case.net, case.input).expect("the GPU trainer builds");
    let (x, y, masks) = batch(case);
    let c = config();
    let hyper = SgdHyper {
        lr: c.base_lr as f32,
        momentum: c.momentum as f32,
        weight_decay: c.weight_decay as f32,
    };
    Box::new(move || {
        trainer
            .step_with_dropout(x.view(), y.view(), &masks, &hyper)
            .expect("a GPU training step");
    })
}

/// The GPU, unless skipped, missing or a software adapter not asked for (with a note).
fn gpu() -> Option<Gpu> {
    if std::env::var_os("TRAIN_BENCH_NO_GPU").is_some() {
        return None;
    }
    match Gpu::new() {
        Ok(mut g) => {
            // An iteration is one submission; on a software adapter the authors' batch of 60
            // takes longer than the default wait for the device, so a benchmark waits as long
            // as it takes unless DILATED_GPU_TIMEOUT says otherwise.
            if std::env::var_os("DILATED_GPU_TIMEOUT").is_none() {
                g.set_timeout(None);
            }
            let info = &g.adapter().info;
            if info.device_type == wgpu::DeviceType::Cpu
                && std::env::var_os("TRAIN_BENCH_GPU").is_none()
            {
                eprintln!(
                    "GPU: {} runs shaders on the CPU (minutes per iteration of the large \
                     module); CPU cases only, TRAIN_BENCH_GPU=1 times it anyway",
                    info.name
                );
                return None;
            }
            eprintln!("GPU: {}", info.name);
            Some(g)
        }
        Err(e) => {
            eprintln!("no GPU ({e}); CPU cases only");
            None
        }
    }
}

/// Every (id, FLOP per iteration, step) the filter selects.
fn steps<'g>(gpu: Option<&'g Gpu>, filter: &str) -> Vec<(String, u64, Step<'g>)> {
    let mut v = Vec::new();
    for case in cases() {
        let flops = train_flops(&case.net, case.input);
        let cpu_id = format!("{}_cpu", case.name);
        if cpu_id.contains(filter) {
            v.push((cpu_id, flops, cpu_step(&case)));
        }
        let gpu_id = format!("{}_gpu", case.name);
        if let Some(g) = gpu
            && case.gpu
            && gpu_id.contains(filter)
        {
            v.push((gpu_id, flops, gpu_step(g, &case)));
        }
    }
    v
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat`; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel reports in USER_HZ, 100 on every Linux platform Rust targets.
    Some(ticks / 100.0)
}

/// The table mode.
fn table(filter: &str) {
    let secs: f64 = std::env::var("TRAIN_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let min_runs = env_usize("TRAIN_BENCH_RUNS", 3);
    let gpu = gpu();
    println!("threads {}", rayon::current_num_threads());
    println!(
        "{:34} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>5}",
        "case", "GFLOP/it", "best it/s", "med it/s", "s/it", "GFLOP/s", "per CPU-s", "runs"
    );
    let warmup = env_usize("TRAIN_BENCH_WARMUP", 1);
    for (id, flops, mut step) in steps(gpu.as_ref(), filter) {
        for _ in 0..warmup {
            step();
        }
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let mut times = Vec::new();
        while start.elapsed().as_secs_f64() < secs || times.len() < min_runs {
            let t = Instant::now();
            step();
            times.push(t.elapsed().as_secs_f64());
        }
        let per_cpu = match (cpu0, cpu_seconds()) {
            (Some(a), Some(b)) if b > a => {
                format!("{:9.1}", flops as f64 * times.len() as f64 / (b - a) / 1e9)
            }
            _ => format!("{:>9}", "-"),
        };
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let g = flops as f64 / 1e9;
        println!(
            "{id:34} {g:9.2} {:9.3} {:9.3} {med:9.3} {:8.1} {per_cpu} {:5}",
            1.0 / times[0],
            1.0 / med,
            g / med,
            times.len()
        );
    }
}

/// The profile mode: the CPU trainer's phase times, each the shortest over
/// `TRAIN_BENCH_PROFILE` iterations (at least 2) after a warm-up.
fn profile(filter: &str) {
    let runs = env_usize("TRAIN_BENCH_PROFILE", 2).max(2);
    for case in cases() {
        if !format!("{}_cpu", case.name).contains(filter) {
            continue;
        }
        let mut trainer =
            CpuTrainer::new(&case.net, case.input, config()).expect("the CPU trainer builds");
        let (x, y, masks) = batch(&case);
        let flops: Vec<(String, u64)> = phase_flops(&case.net, case.input);
        trainer.set_profiling(true);
        let mut best: Vec<(String, f64)> = Vec::new();
        for iter in 0..=runs as u64 {
            trainer
                .step(x.view(), y.view(), &masks, iter)
                .expect("a CPU training step");
            if iter == 0 {
                continue;
            }
            let times = trainer.times();
            if best.is_empty() {
                best = times
                    .iter()
                    .map(|(p, t)| (p.clone(), t.as_secs_f64()))
                    .collect();
            } else {
                for (b, (_, t)) in best.iter_mut().zip(times) {
                    b.1 = b.1.min(t.as_secs_f64());
                }
            }
        }
        let total: f64 = best.iter().map(|t| t.1).sum();
        println!(
            "{}: {total:.3} s (sum of the fastest of {runs} per phase)",
            case.name
        );
        for (phase, t) in &best {
            let rate = flops
                .iter()
                .find(|(p, _)| p == phase)
                .map(|(_, f)| format!("{:7.1} GFLOP/s", *f as f64 / t / 1e9))
                .unwrap_or_default();
            println!(
                "  {phase:36} {:9.1} ms {:5.1} % {rate}",
                t * 1e3,
                100.0 * t / total
            );
        }
    }
}

/// FLOP of each convolution phase, named as the trainer's profile names them.
fn phase_flops(net: &Network, input: Shape) -> Vec<(String, u64)> {
    let shapes = net.shapes(input).expect("valid bench input");
    let mut v = Vec::new();
    for (l, s) in net.layers().iter().zip(&shapes) {
        if let Op::Conv { spec, .. } = &l.op {
            let f = spec.flops(*s);
            for phase in ["forward", "weight gradient", "input gradient"] {
                v.push((format!("{} {phase}", l.name), f));
            }
        }
    }
    v
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    if std::env::var_os("TRAIN_BENCH_PROFILE").is_some() {
        profile(&filter);
        return;
    }
    if std::env::var_os("TRAIN_BENCH_TABLE").is_some() {
        table(&filter);
        return;
    }
    let gpu = gpu();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("train");
    for (id, flops, mut step) in steps(gpu.as_ref(), &filter) {
        group.throughput(Throughput::Elements(flops));
        group.bench_function(id, |b| b.iter(&mut step));
    }
    group.finish();
    c.final_summary();
}
