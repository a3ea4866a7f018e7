//! Every convolution kernel, forced one at a time, against the f64 CPU reference on seeded
//! random configurations: odd sizes, non-square kernels, dilation up to 16, strides 1 to 3,
//! asymmetric padding, channel counts that are not multiples of any tile (1, 3, 17, 65),
//! batches of 1 to 3, bias and ReLU on and off. Output buffers are poisoned with NaN first.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::conv_configs::{CONFIGS, conv_config};
use common::{assert_no_failures, gpu, random1, random4, rel_error, rng};
use dilated::gpu::{ConvChoice, GpuLayer, Io, PACKED_MIN_PIXELS};
use dilated::gpu::{Kernel, TiledVariant};
use dilated::{Conv2d, ConvAlgorithm, GpuConv2d, Shape, cpu};
use ndarray::{Array1, Array4};

const TOLERANCE: f64 = 1e-5;
struct Case {
    spec: Conv2d,
    input: Array4<f32>,
    weight: Array4<f32>,
    bias: Option<Array1<f32>>,
    reference: Array4<f32>,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut r = rng(0x5eed_c0de);
        (0..CONFIGS)
            .map(|i| {
                let (spec, shape) = conv_config(&mut r, i);
                let input = random4(&mut r, shape.dims());
                let weight = random4(&mut r, spec.weight_shape());
                let bias = spec.bias.then(|| random1(&mut r, spec.out_channels));
                let reference = cpu::reference::conv2d(
                    input.view(),
                    &spec,
                    weight.view(),
                    bias.as_ref().map(|b| b.view()),
                )
                .expect("valid configuration");
                if std::env::var_os("SHOW_CONFIGS").is_some() {
                    eprintln!("{i}: {spec:?} input {shape} -> {:?}", reference.dim());
                }
                Case {
                    spec,
                    input,
                    weight,
                    bias,
                    reference,
                }
            })
            .collect()
    })
}

/// Runs every configuration with `algorithm`; returns the kernels that ran.
fn check_all(algorithm: ConvAlgorithm) -> BTreeSet<String> {
    check_choice(ConvChoice::new(algorithm, true))
}

/// [`check_all`] for a whole kernel choice (split-K factor included).
fn check_choice(choice: ConvChoice) -> BTreeSet<String> {
    let gpu = gpu();
    let mut kernels = BTreeSet::new();
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let conv = GpuConv2d::new(
            gpu,
            case.spec,
            case.weight.view(),
            case.bias.as_ref().map(|b| b.view()),
        )
        .expect("upload")
        .with_choice(choice);
        let input = gpu.upload(case.input.view()).expect("upload input");
        let out_shape = conv.output_shape(input.shape()).expect("output shape");
        let kernel = conv.kernel_for(out_shape);
        let output = gpu.filled(out_shape, f32::NAN).expect("output");
        let dispatches = conv
            .prepare(gpu, &Io::tensors(&input, &output))
            .expect("prepare");
        kernels.extend(dispatches.iter().map(|d| format!("{:?}", d.kernel())));
        gpu.run(&dispatches).expect("forward");
        let got = gpu.download(&output).expect("download");
        let err = rel_error(got.view(), case.reference.view());
        if err.is_nan() || err > TOLERANCE {
            failures.push(format!(
                "config {i}: {:?} on input {} with {kernel:?}: relative error {err:e}",
                case.spec,
                input.shape()
            ));
        }
    }
    assert_no_failures(&failures, CONFIGS);
    kernels
}

#[test]
fn direct_kernel_matches_reference() {
    let kernels = check_all(ConvAlgorithm::Direct);
    assert_eq!(kernels, BTreeSet::from(["ConvDirect".to_string()]));
}

#[test]
fn tiled_kernels_match_reference() {
    let kernels = check_all(ConvAlgorithm::Tiled);
    // Deep reductions over few tiles are split, then summed by a second pass.
    assert_eq!(
        kernels,
        BTreeSet::from([
            "ConvPointwise".to_string(),
            "ConvSplitReduce".to_string(),
            "ConvTiled".to_string()
        ])
    );
}

/// Every generated tile shape, forced, on every configuration: each runs its own kernel
/// (lavapipe's limits allow them all), splitting deep reductions over few tiles.
#[test]
fn generated_tiled_variants_match_reference() {
    for v in TiledVariant::ALL {
        let kernels = check_all(ConvAlgorithm::TiledVariant(v));
        let own = format!("{:?}", v.kernel());
        assert!(kernels.contains(&own), "{v:?}: {kernels:?}");
        assert!(
            kernels.iter().all(|k| *k == own || k == "ConvSplitReduce"),
            "{v:?}: {kernels:?}"
        );
    }
}

/// Split-K factors asked for, on the tiled kernel and a generated variant: every configuration
/// whose reduction is deep enough is cut into that many slices (the second pass runs), and the
/// sums stay right, odd factors and factors beyond the depth included.
#[test]
fn forced_split_factors_match_reference() {
    for (algorithm, own) in [
        (ConvAlgorithm::Tiled, None),
        (
            ConvAlgorithm::TiledVariant(TiledVariant::T32x4),
            Some(TiledVariant::T32x4.kernel()),
        ),
    ] {
        for slices in [2, 3, 16, 200] {
            let choice = ConvChoice {
                slices,
                ..ConvChoice::new(algorithm, true)
            };
            let kernels = check_choice(choice);
            assert!(kernels.contains("ConvSplitReduce"), "{choice}: {kernels:?}");
            if let Some(own) = own {
                assert!(
                    kernels.contains(&format!("{own:?}")),
                    "{choice}: {kernels:?}"
                );
            }
        }
    }
}

/// The wide register-blocked kernel (64 output channels per invocation) on the same cases;
/// their 65 and 136 output channels give one full block and a partial one, and two full blocks
/// and a partial one.
#[test]
fn wide_blocked_kernel_matches_reference() {
    let kernels = check_all(ConvAlgorithm::BlockedWide);
    assert_eq!(
        kernels,
        BTreeSet::from([format!("{:?}", Kernel::ConvBlocked64)]),
        "subgroups: {}",
        gpu().adapter().subgroups
    );
}

/// The wide register-blocked kernel reading packed weights, on the same cases: each run packs
/// the weights of its 64-channel blocks before convolving them.
#[test]
fn packed_blocked_kernel_matches_reference() {
    let kernels = check_all(ConvAlgorithm::BlockedPacked);
    assert_eq!(
        kernels,
        BTreeSet::from([
            format!("{:?}", Kernel::ConvBlockedPacked),
            format!("{:?}", Kernel::ConvPackBlocked)
        ]),
        "subgroups: {}",
        gpu().adapter().subgroups
    );
}

/// `Auto` on an adapter that runs shaders on CPU cores takes the wide block where it computes no
/// more padding channels than the 32-channel one, and the narrow block elsewhere; the wide block
/// reads packed weights where the output has at least `PACKED_MIN_PIXELS` pixels.
#[test]
fn auto_picks_the_blocked_width_by_output_channels() {
    let gpu = gpu();
    let info = &gpu.adapter().info;
    if info.device_type != wgpu::DeviceType::Cpu
        || !gpu.device().features().contains(wgpu::Features::SUBGROUP)
        || info.subgroup_min_size < 8
    {
        eprintln!("skipped: {} does not run shaders on CPU cores", gpu.name());
        return;
    }
    for (k, out_c, want) in [
        (1, 64, Kernel::ConvBlocked64),
        (1, 1024, Kernel::ConvBlocked64),
        (1, 40, Kernel::ConvBlocked64),
        (1, 168, Kernel::ConvBlocked64),
        (1, 21, Kernel::ConvBlocked),
        (1, 96, Kernel::ConvBlocked),
        (1, 84, Kernel::ConvBlocked),
        (3, 1024, Kernel::ConvBlocked64),
        (3, 64, Kernel::ConvBlocked64),
        (3, 21, Kernel::ConvBlocked),
        (3, 336, Kernel::ConvBlocked),
        (7, 672, Kernel::ConvBlocked),
        (7, 1024, Kernel::ConvBlocked64),
    ] {
        let spec = Conv2d::new(8, out_c, k).pad(k / 2).with_bias(false);
        let w = ndarray::Array4::<f32>::zeros(spec.weight_shape());
        let conv = GpuConv2d::new(gpu, spec, w.view(), None).expect("upload");
        let out = Shape::new(1, out_c, 9, 9);
        assert_eq!(
            conv.kernel_for(out),
            want,
            "{k}x{k}, {out_c} output channels"
        );
        // PACKED_MIN_PIXELS output pixels, in one image or two, are enough to pack.
        let packed = match want {
            Kernel::ConvBlocked64 => Kernel::ConvBlockedPacked,
            other => other,
        };
        let rows = PACKED_MIN_PIXELS / 32;
        for (n, h) in [(1, rows), (2, rows / 2)] {
            assert_eq!(
                conv.kernel_for(Shape::new(n, out_c, h, 32)),
                packed,
                "{k}x{k}, {out_c} output channels, {n} x {h}x32"
            );
        }
        assert_eq!(
            conv.kernel_for(Shape::new(1, out_c, rows - 1, 32)),
            want,
            "{k}x{k}, {out_c} output channels, one row short"
        );
    }
}

#[test]
fn blocked_kernel_matches_reference() {
    let kernels = check_all(ConvAlgorithm::Blocked);
    // Without subgroups of 8 or more the blocked kernel falls back to the tiled one; this test
    // would then have tested that one, so it fails rather than pass unnoticed.
    let adapter = gpu().adapter();
    assert_eq!(
        kernels,
        BTreeSet::from([format!("{:?}", Kernel::ConvBlocked)]),
        "{}: subgroups {}, of {} to {} invocations",
        adapter.info.name,
        adapter.subgroups,
        adapter.info.subgroup_min_size,
        adapter.info.subgroup_max_size
    );
}

#[test]
fn automatic_choice_matches_reference() {
    let kernels = check_all(ConvAlgorithm::Auto);
    eprintln!("Auto picked {kernels:?}");
}
