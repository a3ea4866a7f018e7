//! Throughput of the fast CPU path (`dilated::cpu::fast`) on the shapes of the networks:
//! dilated 3x3 convolutions, a 1x1, fc6, and whole context modules. Criterion reports the
//! throughput in "elem/s", where one element is one FLOP (multiply-add = 2), so `Gelem/s` reads
//! as GFLOP/s. `benches/onnxruntime_reference.py` times the same shapes on ONNX Runtime.
//!
//!     cargo bench --bench cpu [-- FILTER]
//!
//! With `CPU_BENCH_TABLE=1` it prints instead one line per shape: best and median wall-clock
//! GFLOP/s over `CPU_BENCH_SECS` seconds (default 3) and GFLOP per second of process CPU time
//! (Linux; less sensitive to other load on the machine, and with `RAYON_NUM_THREADS=1` the
//! per-core efficiency):
//!
//!     CPU_BENCH_TABLE=1 cargo bench --bench cpu [-- FILTER]
//!
//! `CPU_BENCH_METHOD=direct|gemm|winograd-f2|winograd-f4` runs every layer that method can
//! compute on it (the others on the automatic choice); unset, each layer takes
//! [`CpuConv2d::auto`]'s choice, as the library does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use dilated::cpu::fast::{self, ConvMethod, CpuConv2d};
use dilated::{Conv2d, MaxPool2d, Shape};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The method `CPU_BENCH_METHOD` asks for, if any.
fn method() -> Option<ConvMethod> {
    let v = std::env::var("CPU_BENCH_METHOD").ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("CPU_BENCH_METHOD: {e}")),
    )
}

/// A chain of prepared layers with their preallocated outputs.
struct Chain {
    layers: Vec<CpuConv2d>,
    input: Array4<f32>,
    outputs: Vec<Array4<f32>>,
    flops: u64,
}

impl Chain {
    fn new(input: Shape, specs: &[Conv2d], rng: &mut StdRng) -> Self {
        let mut shape = input;
        let mut flops = 0;
        let mut layers = Vec::new();
        let mut outputs = Vec::new();
        for spec in specs {
            let out = spec
                .output_shape(shape, "bench")
                .expect("valid bench shape");
            flops += spec.flops(out);
            let fan_in = (spec.in_channels * spec.kernel.0 * spec.kernel.1) as f32;
            let scale = 1.0 / fan_in.sqrt();
            let w = Array4::from_shape_simple_fn(spec.weight_shape(), || {
                rng.random_range(-scale..scale)
            });
            let b = Array1::from_shape_simple_fn(spec.out_channels, || rng.random_range(-0.1..0.1));
            let bias = spec.bias.then(|| b.view());
            let layer = match method() {
                Some(m) => CpuConv2d::with_method(*spec, w.view(), bias, m)
                    .or_else(|_| CpuConv2d::new(*spec, w.view(), bias)),
                None => CpuConv2d::new(*spec, w.view(), bias),
            }
            .expect("valid bench layer");
            layers.push(layer);
            outputs.push(Array4::zeros(out.dims()));
            shape = out;
        }
        let x = Array4::from_shape_simple_fn(input.dims(), || rng.random_range(-1.0..1.0));
        Self {
            layers,
            input: x,
            outputs,
            flops,
        }
    }

    fn run(&mut self) {
        for i in 0..self.layers.len() {
            let (done, rest) = self.outputs.split_at_mut(i);
            let x = if i == 0 {
                self.input.view()
            } else {
                done[i - 1].view()
            };
            self.layers[i]
                .forward_into(x, &mut rest[0])
                .expect("bench layer runs");
        }
        black_box(&self.outputs);
    }
}

/// 3x3 layers with the given output channels and dilations (pad = dilation, ReLU), then a 1x1
/// to `last` channels.
fn context(c_in: usize, channels: &[usize], dilations: &[usize], last: usize) -> Vec<Conv2d> {
    let mut specs = Vec::new();
    let mut c = c_in;
    for (&co, &d) in channels.iter().zip(dilations) {
        specs.push(Conv2d::new(c, co, 3).dilation(d).pad(d).with_relu(true));
        c = co;
    }
    specs.push(Conv2d::new(c, last, 1));
    specs
}

/// `(name, input shape, layers)` of every benchmark.
fn cases() -> Vec<(String, Shape, Vec<Conv2d>)> {
    let mut v = Vec::new();
    for d in [1, 2, 4, 8, 16] {
        v.push((
            format!("conv3x3_256_64x64_d{d}"),
            Shape::new(1, 256, 64, 64),
            vec![Conv2d::new(256, 256, 3).dilation(d).pad(d)],
        ));
    }
    // Horizontal stride 2 takes the im2col + SGEMM fallback.
    v.push((
        "conv3x3_256_stride2_64x64".into(),
        Shape::new(1, 256, 128, 128),
        vec![Conv2d::new(256, 256, 3).stride(2).pad(1)],
    ));
    v.push((
        "conv1x1_1024_64x64".into(),
        Shape::new(1, 1024, 64, 64),
        vec![Conv2d::new(1024, 1024, 1)],
    ));
    v.push((
        "fc6_7x7_d4_512to1024_32x32".into(),
        Shape::new(1, 512, 56, 56),
        vec![Conv2d::new(512, 1024, 7).dilation(4)],
    ));
    let c = 21;
    let large = [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c, 32 * c];
    v.push((
        "context_large_c21_66x66".into(),
        Shape::new(1, c, 66, 66),
        context(c, &large, &[1, 1, 2, 4, 8, 16, 1], c),
    ));
    v.push((
        "context_basic_c21_66x66".into(),
        Shape::new(1, c, 66, 66),
        context(c, &[c; 7], &[1, 1, 2, 4, 8, 16, 1], c),
    ));
    let c = 19;
    v.push((
        "context_basic_c19_128x128".into(),
        Shape::new(1, c, 128, 128),
        context(c, &[c; 9], &[1, 1, 2, 4, 8, 16, 32, 64, 1], c),
    ));
    v
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("cpu_fast");
    for (name, input, specs) in cases() {
        let mut chain = Chain::new(input, &specs, &mut rng);
        group.throughput(Throughput::Elements(chain.flops));
        group.bench_function(name, |b| b.iter(|| chain.run()));
    }
    group.finish();

    // Memory-bound ops: throughput in bytes of input read.
    let mut group = c.benchmark_group("cpu_fast_mem");
    let x = Array4::from_shape_simple_fn(POOL_INPUT, || rng.random_range(-1.0f32..1.0));
    group.throughput(Throughput::Bytes((x.len() * 4) as u64));
    let pool = MaxPool2d::caffe(2, 2);
    group.bench_function("max_pool_2x2s2_128x224x224", |b| {
        b.iter(|| black_box(fast::max_pool2d(x.view(), &pool).expect("valid pool")))
    });
    let mut y = x.clone();
    group.bench_function("relu_inplace_128x224x224", |b| {
        b.iter(|| fast::relu_inplace(black_box(&mut y)))
    });
    group.finish();
}

/// Input of the pooling and ReLU benchmarks (a VGG pool2-sized activation).
const POOL_INPUT: [usize; 4] = [1, 128, 224, 224];

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
/// Process CPU time (user + system) in seconds, from `/proc/self/stat`; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel reports in USER_HZ, 100 on every Linux platform Rust targets.
    Some(ticks / 100.0)
}

/// The table mode: best and median wall-clock rate, and rate per CPU-second.
fn table(filter: &str) {
    let secs: f64 = std::env::var("CPU_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    println!(
        "threads {}; GFLOP/s (multiply-add = 2)",
        rayon::current_num_threads()
    );
    println!(
        "{:32} {:>8} {:>9} {:>9} {:>11} {:>5}",
        "shape", "GFLOP", "best", "median", "per CPU-s", "runs"
    );
    let mut rng = StdRng::seed_from_u64(0);
    for (name, input, specs) in cases() {
        if !name.contains(filter) {
            continue;
        }
        let mut chain = Chain::new(input, &specs, &mut rng);
        chain.run();
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let mut times = Vec::new();
        while start.elapsed().as_secs_f64() < secs || times.len() < 3 {
            let t = Instant::now();
            chain.run();
            times.push(t.elapsed().as_secs_f64());
        }
        let per_cpu = match (cpu0, cpu_seconds()) {
            (Some(a), Some(b)) if b > a => {
                format!(
                    "{:11.1}",
                    chain.flops as f64 * times.len() as f64 / (b - a) / 1e9
                )
            }
            _ => format!("{:>11}", "-"),
        };
        times.sort_by(f64::total_cmp);
        let g = chain.flops as f64 / 1e9;
        let mut methods: Vec<String> = chain
            .layers
            .iter()
            .map(|l| l.method().to_string())
            .collect();
        methods.dedup();
        println!(
            "{name:32} {g:8.3} {:9.1} {:9.1} {per_cpu} {:5}  {}",
            g / times[0],
            g / times[times.len() / 2],
            times.len(),
            methods.join(",")
        );
    }
}

fn main() {
    if std::env::var_os("CPU_BENCH_TABLE").is_some() {
        let filter = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with("--"))
            .unwrap_or_default();
        table(&filter);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
