//! Shared code of the integration tests: one GPU per test binary, seeded random data, the
//! relative-error check, whole networks on the f64 reference, and checks of forced kernels.
#![allow(dead_code)]

use std::sync::OnceLock;

use dilated::cpu::reference;
use dilated::gpu::Kernel;
use dilated::net::{Network, Op};
use dilated::{ConvAlgorithm, Gpu};
use ndarray::{Array1, Array4, ArrayView4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The GPU shared by every test of a binary (the handle is `Send + Sync`).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(g) => {
            eprintln!("adapter: {} ({:?})", g.name(), g.adapter().info.backend);
            g
        }
        Err(e) => panic!("{e}"),
    })
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
    dilated::banded::sub_network(net, 0..keep).unwrap()
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
        ConvAlgorithm::Tiled => &[
            Kernel::ConvTiled,
            Kernel::ConvPointwise,
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
