//! Properties over random layer specs: the output shape the spec computes, the size written out
//! independently here, the CPU reference, the fast CPU path and the GPU agree (shapes and values);
//! invalid specs are rejected with errors, never panics, on every path.

mod common;

use common::{gpu, rel_error};
use dilated::cpu::{fast, reference};
use dilated::gpu::GpuDeconv2d;
use dilated::gpu::{GpuLayer, GpuMaxPool2d, GpuZoom};
use dilated::{Conv2d, ConvAlgorithm, Deconv2d, Error, GpuConv2d, MaxPool2d, Padding, Shape, Zoom};
use ndarray::{Array1, Array4};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn random4(seed: u64, shape: [usize; 4]) -> Array4<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    Array4::from_shape_simple_fn(shape, || r.random_range(-1.0f32..1.0))
}

fn random1(seed: u64, n: usize) -> Array1<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    Array1::from_shape_simple_fn(n, || r.random_range(-1.0f32..1.0))
}

/// Sliding-window output size along one axis, written out from the definition: the number of
/// window positions `0, s, 2s, ...` whose extent fits in the padded input.
fn window_positions(size: usize, pads: usize, extent: usize, stride: usize) -> Option<usize> {
    let padded = size + pads;
    (extent <= padded).then(|| (0..).take_while(|i| i * stride + extent <= padded).count())
}

#[derive(Clone, Debug)]
struct ConvCase {
    spec: Conv2d,
    input: Shape,
    seed: u64,
    algorithm: ConvAlgorithm,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..=4, 1usize..=5, 1usize..=4, 1usize..=4),
        (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3),
        (0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3),
        (1usize..=2, 1usize..=10, 1usize..=10),
        (any::<bool>(), any::<bool>(), any::<u64>(), 0usize..4),
    )
        .prop_map(
            |((ci, co, kh, kw), (dh, dw, sh, sw), (pt, pl, pb, pr), (n, h, w), (b, r, seed, a))| {
                ConvCase {
                    spec: Conv2d::new(ci, co, 1)
                        .kernel(kh, kw)
                        .dilation_hw(dh, dw)
                        .stride_hw(sh, sw)
                        .padding(Padding::new(pt, pl, pb, pr))
                        .with_bias(b)
                        .with_relu(r),
                    input: Shape::new(n, ci, h, w),
                    seed,
                    algorithm: [
                        ConvAlgorithm::Auto,
                        ConvAlgorithm::Direct,
                        ConvAlgorithm::Tiled,
                        ConvAlgorithm::Blocked,
                    ][a],
                }
            },
        )
}

/// Runs a convolution on every path: (reference, fast, GPU), each a result.
type Outputs = (
    Result<Array4<f32>, Error>,
    Result<Array4<f32>, Error>,
    Result<Array4<f32>, Error>,
);

fn conv_everywhere(c: &ConvCase, input: Shape) -> Outputs {
    let s = &c.spec;
    let x = random4(c.seed, input.dims());
    let w = random4(c.seed ^ 1, s.weight_shape());
    let b = s.bias.then(|| random1(c.seed ^ 2, s.out_channels));
    let bias = b.as_ref().map(|b| b.view());
    let r = reference::conv2d(x.view(), s, w.view(), bias);
    let f = fast::conv2d(x.view(), s, w.view(), bias);
    let gpu = gpu();
    let g = (|| {
        let conv = GpuConv2d::new(gpu, *s, w.view(), bias)?.with_algorithm(c.algorithm);
        let t = gpu.upload(x.view())?;
        let mut out = gpu.filled(conv.output_shape(input)?, f32::NAN)?;
        conv.forward_into(gpu, &t, &mut out)?;
        gpu.download(&out)
    })();
    (r, f, g)
}

fn all_rejected(what: &str, (r, f, g): Outputs) -> Result<(), TestCaseError> {
    prop_assert!(r.is_err(), "{what}: reference accepted it");
    prop_assert!(f.is_err(), "{what}: fast path accepted it");
    prop_assert!(g.is_err(), "{what}: GPU accepted it");
    Ok(())
}

/// Seed of every property below: each run draws the same cases, so CI is deterministic and a
/// failure reproduces with a plain `cargo test`.
const SEED: u64 = 0x5eed_d11a_7ed0;

/// 64 cases per property from [`SEED`]. To explore other cases, set `PROPTEST_RNG_SEED`
/// (proptest's own variable) to any other u64, e.g.
/// `PROPTEST_RNG_SEED=$RANDOM cargo test --release --test properties`; a failure then
/// reproduces with the same value. Failures are not persisted to files (a
/// `*.proptest-regressions` file would land next to this source): the seed is the record.
fn config() -> ProptestConfig {
    // `with_cases` starts from proptest's defaults, which read the PROPTEST_* variables.
    let base = ProptestConfig::with_cases(64);
    let rng_seed = match base.rng_seed {
        RngSeed::Random => RngSeed::Fixed(SEED),
        chosen => chosen,
    };
    ProptestConfig {
        rng_seed,
        failure_persistence: None,
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn convolution_shapes_and_values_agree(c in conv_case()) {
        let s = &c.spec;
        let (eh, ew) = s.extent();
        let want_h = window_positions(c.input.h, s.padding.top + s.padding.bottom, eh, s.stride.0);
        let want_w = window_positions(c.input.w, s.padding.left + s.padding.right, ew, s.stride.1);
        let shape = s.output_shape(c.input, "conv");
        let outputs = conv_everywhere(&c, c.input);
        match (want_h, want_w) {
            (Some(h), Some(w)) => {
                let want = Shape::new(c.input.n, s.out_channels, h, w);
                prop_assert_eq!(shape.unwrap(), want);
                let (r, f, g) = outputs;
                let r = r.unwrap();
                prop_assert_eq!(r.dim(), (want.n, want.c, want.h, want.w));
                let e = rel_error(f.unwrap().view(), r.view());
                prop_assert!(e <= 1e-5, "fast vs reference {:e}", e);
                let e = rel_error(g.unwrap().view(), r.view());
                prop_assert!(e <= 1e-5, "GPU vs reference {:e}", e);
            }
            _ => {
                prop_assert!(
                    matches!(shape, Err(Error::KernelLargerThanInput { .. })),
                    "{:?}",
                    shape
                );
                all_rejected("kernel larger than the padded input", outputs)?;
            }
        }
    }

    #[test]
    fn invalid_convolutions_are_rejected_everywhere(c in conv_case(), which in 0usize..9) {
        let s = c.spec;
        let (spec, input) = match which {
            0 => (Conv2d { in_channels: 0, ..s }, c.input),
            1 => (Conv2d { out_channels: 0, ..s }, c.input),
            2 => (Conv2d { kernel: (0, s.kernel.1), ..s }, c.input),
            3 => (Conv2d { dilation: (s.dilation.0, 0), ..s }, c.input),
            4 => (Conv2d { stride: (0, s.stride.1), ..s }, c.input),
            // Channel mismatch between the input and the weights.
            5 => (s, Shape { c: s.in_channels + 1, ..c.input }),
            // Zero-sized inputs.
            6 => (s, Shape { h: 0, ..c.input }),
            7 => (s, Shape { n: 0, ..c.input }),
            // A kernel that cannot fit.
            _ => (
                s.kernel(c.input.h + s.padding.top + s.padding.bottom + 1, s.kernel.1),
                c.input,
            ),
        };
        prop_assert!(spec.output_shape(input, "conv").is_err());
        let case = ConvCase { spec, ..c };
        all_rejected(&format!("case {which}: {spec:?} on {input}"), conv_everywhere(&case, input))?;
    }

    #[test]
    fn max_pool_shapes_and_values_agree(
        (kh, kw, sh, sw) in (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        pads in (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        (n, c, h, w) in (1usize..=2, 1usize..=3, 1usize..=9, 1usize..=9),
        ceil in any::<bool>(),
        // Now and then a side padded by the whole window (invalid).
        too_much in prop::option::weighted(0.2, 0usize..4),
        seed in any::<u64>(),
    ) {
        let (mut pt, mut pl, mut pb, mut pr) = (pads.0 % kh, pads.1 % kw, pads.2 % kh, pads.3 % kw);
        match too_much {
            Some(0) => pt = kh,
            Some(1) => pl = kw,
            Some(2) => pb = kh,
            Some(_) => pr = kw,
            None => {}
        }
        let pool = MaxPool2d {
            kernel: (kh, kw),
            stride: (sh, sw),
            padding: Padding::new(pt, pl, pb, pr),
            ceil_mode: ceil,
        };
        let input = Shape::new(n, c, h, w);
        let x = random4(seed, input.dims());
        let shape = pool.output_shape(input, "pool");
        let r = reference::max_pool2d(x.view(), &pool);
        let gpu = gpu();
        let g = gpu.upload(x.view()).and_then(|t| GpuMaxPool2d::new(pool).forward(gpu, &t)).and_then(|t| gpu.download(&t));
        // Caffe's size: rounded (up or down) window count, less a last window that would start
        // in the far padding.
        let axis = |size: usize, lo: usize, hi: usize, k: usize, s: usize| -> Option<usize> {
            let span = (size + lo + hi).checked_sub(k)?;
            let mut out = if ceil { span.div_ceil(s) } else { span / s } + 1;
            if (out - 1) * s >= size + lo {
                out -= 1;
            }
            (out > 0).then_some(out)
        };
        let valid = pt.max(pb) < kh && pl.max(pr) < kw;
        match (valid, axis(h, pt, pb, kh, sh), axis(w, pl, pr, kw, sw)) {
            (true, Some(oh), Some(ow)) => {
                prop_assert_eq!(shape.unwrap(), Shape::new(n, c, oh, ow));
                let r = r.unwrap();
                prop_assert_eq!(r.dim(), (n, c, oh, ow));
                prop_assert_eq!(g.unwrap(), r, "GPU vs reference");
            }
            _ => {
                prop_assert!(shape.is_err());
                prop_assert!(r.is_err(), "reference accepted it");
                prop_assert!(g.is_err(), "GPU accepted it");
            }
        }
    }

    #[test]
    fn deconvolution_shapes_and_values_agree(
        (channels, kernel, stride, pad) in (1usize..=3, 1usize..=5, 1usize..=3, 0usize..=3),
        (n, h, w) in (1usize..=2, 1usize..=6, 1usize..=6),
        // Now and then a zero size or an input with a channel too many (invalid).
        broken in prop::option::weighted(0.25, 0usize..4),
        seed in any::<u64>(),
    ) {
        let mut spec = Deconv2d { channels, kernel, stride, pad };
        let mut c = channels;
        match broken {
            Some(0) => spec.channels = 0,
            Some(1) => spec.kernel = 0,
            Some(2) => spec.stride = 0,
            Some(_) => c += 1,
            None => {}
        }
        let (channels, kernel, stride) = (spec.channels, spec.kernel, spec.stride);
        let input = Shape::new(n, c, h, w);
        let x = random4(seed, input.dims());
        let weights = random4(seed ^ 1, spec.weight_shape());
        let r = reference::deconv2d(x.view(), &spec, weights.view());
        let gpu = gpu();
        let g = GpuDeconv2d::new(gpu, spec, weights.view()).and_then(|d| {
            let t = gpu.upload(x.view())?;
            gpu.download(&d.forward(gpu, &t)?)
        });
        let full = |size: usize| (size - 1) * stride + kernel;
        let valid = channels > 0
            && kernel > 0
            && stride > 0
            && c == channels
            && full(h) > 2 * pad
            && full(w) > 2 * pad;
        if valid {
            let want = Shape::new(n, c, full(h) - 2 * pad, full(w) - 2 * pad);
            prop_assert_eq!(spec.output_shape(input, "d").unwrap(), want);
            let r = r.unwrap();
            prop_assert_eq!(r.dim(), (want.n, want.c, want.h, want.w));
            let e = rel_error(g.unwrap().view(), r.view());
            prop_assert!(e <= 1e-5, "GPU vs reference {:e}", e);
        } else {
            prop_assert!(spec.output_shape(input, "d").is_err());
            prop_assert!(r.is_err(), "reference accepted it");
            prop_assert!(g.is_err(), "GPU accepted it");
        }
    }

    #[test]
    fn zoom_shapes_and_values_agree(
        factor in 0usize..=4,
        (n, c, h, w) in (1usize..=2, 1usize..=3, 0usize..=6, 1usize..=6),
        seed in any::<u64>(),
    ) {
        let zoom = Zoom { factor };
        let input = Shape::new(n, c, h, w);
        let x = random4(seed, input.dims());
        let r = reference::zoom(x.view(), &zoom);
        let gpu = gpu();
        let g = gpu.upload(x.view()).and_then(|t| GpuZoom::new(zoom).forward(gpu, &t)).and_then(|t| gpu.download(&t));
        if factor > 0 && h > 0 {
            let want = Shape::new(n, c, h * factor, w * factor);
            prop_assert_eq!(zoom.output_shape(input, "z").unwrap(), want);
            let r = r.unwrap();
            prop_assert_eq!(r.dim(), (want.n, want.c, want.h, want.w));
            let e = rel_error(g.unwrap().view(), r.view());
            prop_assert!(e <= 1e-6, "GPU vs reference {:e}", e);
        } else {
            prop_assert!(zoom.output_shape(input, "z").is_err());
            prop_assert!(r.is_err(), "reference accepted it");
            prop_assert!(g.is_err(), "GPU accepted it");
        }
    }
}
