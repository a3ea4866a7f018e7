//! Shared code of the integration tests: one GPU per test binary, seeded random data, the
//! relative-error check, whole networks on the f64 reference, and checks of forced kernels.
#![allow(dead_code)]

pub mod conv_configs;

use std::sync::OnceLock;

use dilated::cpu::reference;
use dilated::gpu::Kernel;
use dilated::gpu::{GpuLayer, GpuTensor};
use dilated::net::{Network, Op};
use dilated::weights::{ExpectedLayer, LayerWeights, WeightSet};
use dilated::{Conv2d, ConvAlgorithm, Gpu, GpuConv2d, Precision, Shape};
use ndarray::{Array1, Array4, ArrayView4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The GPU shared by every test of a binary (the handle is `Send + Sync`), keeping no files
/// between runs (no pipeline cache, no recorded kernel choices).
///
/// A GPU test must not pass without a GPU: without an adapter this panics, and it asserts the
/// adapter is the one the environment asks for: the backend named by `WGPU_BACKEND` (CI pins
/// `vulkan`) and, when `DILATED_TEST_ADAPTER` is set (CI: `llvmpipe`, Mesa's lavapipe), an
/// adapter whose name contains it.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        // No cache directory: kernel choices recorded on this machine must not change what the
        // tests run.
        let options = dilated::GpuOptions {
            cache_dir: None,
            ..dilated::GpuOptions::from_env()
        };
        let g = Gpu::with_options(&options)
            .unwrap_or_else(|e| panic!("the GPU tests need an adapter: {e}"));
        check_adapter(&g);
        g
    })
}

/// Asserts that `gpu` runs on the adapter the environment asks for (see [`gpu`]).
pub fn check_adapter(gpu: &Gpu) {
    let info = &gpu.adapter().info;
    eprintln!("adapter: {} ({:?})", info.name, info.backend);
    if let Some(backends) = wgpu::Backends::from_env() {
        assert!(
            backends.contains(wgpu::Backends::from(info.backend)),
            "WGPU_BACKEND asks for {backends:?} but the adapter {} is on {:?}",
            info.name,
            info.backend
        );
    }
    if let Ok(want) = std::env::var("DILATED_TEST_ADAPTER") {
        assert!(
            info.name.to_lowercase().contains(&want.to_lowercase()),
            "DILATED_TEST_ADAPTER={want} but the adapter is {}",
            info.name
        );
    }
}

/// A seeded generator.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform values in [-1, 1).
pub fn random4(rng: &mut StdRng, shape: [usize; 4]) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Uniform values in [-1, 1).
pub fn random1(rng: &mut StdRng, n: usize) -> Array1<f32> {
    Array1::from_shape_simple_fn(n, || rng.random_range(-1.0f32..1.0))
}

/// `a` rounded to f16 and back (what an f16 kernel reads).
pub fn round4(a: &Array4<f32>) -> Array4<f32> {
    a.mapv(|v| half::f16::from_f32(v).to_f32())
}

/// [`round4`] for vectors.
pub fn round1(a: &Array1<f32>) -> Array1<f32> {
    a.mapv(|v| half::f16::from_f32(v).to_f32())
}

/// `max |a - b| / max |b|`, with NaN anywhere in `a` (an unwritten poisoned element) counted as
/// infinite error.
pub fn rel_error(a: ArrayView4<f32>, reference: ArrayView4<f32>) -> f64 {
    assert_eq!(a.dim(), reference.dim(), "shapes differ");
    let mut max_diff = 0.0f64;
    let mut max_ref = 0.0f64;
    for (&x, &r) in a.iter().zip(reference.iter()) {
        if x.is_nan() != r.is_nan() {
            return f64::INFINITY;
        }
        if x.is_nan() {
            continue;
        }
        max_diff = max_diff.max((x as f64 - r as f64).abs());
        max_ref = max_ref.max((r as f64).abs());
    }
    if max_ref == 0.0 {
        if max_diff == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        max_diff / max_ref
    }
}

/// One f16 convolution case on the GPU: seeded inputs, weights and bias (when `spec` has one)
/// already rounded to f16 (what the kernels read, so the f64 reference on them sees the same
/// values), the layer with f16 weights, the input uploaded as f16 and an f16 output poisoned
/// with NaN.
pub struct F16Case {
    pub x: Array4<f32>,
    pub w: Array4<f32>,
    pub b: Option<Array1<f32>>,
    pub conv: GpuConv2d,
    pub input: GpuTensor,
    pub output: GpuTensor,
}

/// Draws an [`F16Case`] of `spec` on inputs of `shape` from `r` (input, weights, bias, in
/// that order).
pub fn f16_conv_case(gpu: &Gpu, r: &mut StdRng, spec: Conv2d, shape: Shape) -> F16Case {
    let x = round4(&random4(r, shape.dims()));
    let w = round4(&random4(r, spec.weight_shape()));
    let b = spec.bias.then(|| round1(&random1(r, spec.out_channels)));
    let conv = GpuConv2d::new_as(
        gpu,
        spec,
        w.view(),
        b.as_ref().map(|b| b.view()),
        Precision::F16,
    )
    .expect("conv");
    let input = gpu.upload_as(x.view(), Precision::F16).expect("upload");
    let out_shape = conv.output_shape(shape).expect("output shape");
    let output = gpu
        .filled_as(out_shape, f32::NAN, Precision::F16)
        .expect("output");
    F16Case {
        x,
        w,
        b,
        conv,
        input,
        output,
    }
}

/// Prints every failure, then fails the test if there was one, out of `total` cases.
pub fn assert_no_failures(failures: &[String], total: usize) {
    for f in failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {total} configurations failed",
        failures.len()
    );
}

/// Runs the `dilated` command-line tool with arguments and extra environment variables.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dilated"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// The names of the entries of `dir`, sorted.
pub fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `net` run layer by layer on the f64 reference, [`dilated::cpu::reference::apply`]: the oracle
/// for whole networks.
pub fn reference_forward(net: &Network, x: ArrayView4<f32>) -> Array4<f32> {
    let mut y = x.to_owned();
    for l in net.layers() {
        y = reference::apply(&l.op, y.view())
            .unwrap_or_else(|e| panic!("reference, layer {}: {e}", l.name));
    }
    y
}

/// `net` without its final softmax (the network itself when it does not end in one): the
/// class scores, which a softmax would squash so that score errors no longer show.
pub fn scores_network(net: &Network) -> Network {
    let n = net.layers().len();
    let keep = match net.layers().last().map(|l| &l.op) {
        Some(Op::Softmax) => n - 1,
        _ => n,
    };
    net.sub_network(0..keep).unwrap()
}

/// Panics unless the convolution kernels in `kernels` (the dispatches of one layer or one
/// [`dilated::GpuConv2d`]) are those `algorithm` forces: a forced kernel that fell back to
/// another fails here rather than passing as a test of the kernel it names. The blocked
/// kernel needs subgroups of at least 8 (lavapipe has them); the tiled one 256 invocations
/// and 8.25 KiB of workgroup memory per workgroup.
pub fn assert_forced_kernels(algorithm: ConvAlgorithm, kernels: &[Kernel], what: &str) {
    let allowed: &[Kernel] = match algorithm {
        ConvAlgorithm::Auto => return,
        ConvAlgorithm::Direct => &[Kernel::ConvDirect],
        ConvAlgorithm::Blocked => &[Kernel::ConvBlocked],
        ConvAlgorithm::BlockedWide => &[Kernel::ConvBlocked64],
        ConvAlgorithm::BlockedPacked => &[Kernel::ConvBlockedPacked, Kernel::ConvPackBlocked],
        ConvAlgorithm::Tiled => &[
            Kernel::ConvTiled,
            Kernel::ConvPointwise,
            Kernel::ConvSplitReduce,
        ],
        ConvAlgorithm::TiledVariant(v) => &[v.kernel(), Kernel::ConvSplitReduce],
        ConvAlgorithm::Coop => &[
            Kernel::ConvCoop8,
            Kernel::ConvCoop16,
            Kernel::ConvSplitReduce,
        ],
    };
    let main = kernels
        .iter()
        .any(|k| *k != Kernel::ConvSplitReduce && allowed.contains(k));
    assert!(
        main && kernels.iter().all(|k| allowed.contains(k)),
        "{what}: {algorithm:?} forced, but {kernels:?} ran (adapter: {})",
        gpu().name()
    );
}

// Weight sets.

/// A few layers of seeded random weights: convolutions with and without bias, a 1x1 layer.
pub fn sample_set(seed: u64) -> WeightSet {
    let mut r = rng(seed);
    let mut set = WeightSet::new();
    let layers: [(&str, [usize; 4], bool); 4] = [
        ("conv1_1", [8, 3, 3, 3], true),
        ("ctx_conv2", [16, 8, 3, 3], true),
        ("fc-final", [5, 16, 1, 1], true),
        ("no_bias", [4, 5, 1, 1], false),
    ];
    for (name, shape, bias) in layers {
        let w = random4(&mut r, shape);
        let b = bias.then(|| random1(&mut r, shape[0]));
        set.insert(name, LayerWeights::new(name, w, b).unwrap());
    }
    set
}

pub fn expected_of(set: &WeightSet) -> Vec<ExpectedLayer> {
    set.iter()
        .map(|(n, w)| ExpectedLayer::new(n, w.weight_shape(), w.bias.is_some()))
        .collect()
}

/// Bit-exact equality of two layers (NaN-safe, distinguishes -0.0).
pub fn same_layer(a: &LayerWeights, b: &LayerWeights) -> bool {
    let bits4 = |x: &Array4<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let bits1 = |x: &Option<Array1<f32>>| {
        x.as_ref()
            .map(|x| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    };
    a.weight.dim() == b.weight.dim()
        && bits4(&a.weight) == bits4(&b.weight)
        && bits1(&a.bias) == bits1(&b.bias)
}

pub fn assert_same_set(got: &WeightSet, want: &WeightSet) {
    let mut gn: Vec<&str> = got.names().collect();
    let mut wn: Vec<&str> = want.names().collect();
    gn.sort_unstable();
    wn.sort_unstable();
    assert_eq!(gn, wn, "layer names differ");
    for (name, w) in want.iter() {
        let g = got.get(name).unwrap();
        assert!(same_layer(g, w), "layer {name} differs");
    }
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Index `i` reflected into `0..n` without repeating the edge pixel (OpenCV's
/// `BORDER_REFLECT_101`), written as repeated mirror steps: an implementation independent of
/// the library's, for checking it.
pub fn mirror_index(mut i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * (n - 1) - i;
        } else {
            return i as usize;
        }
    }
}
