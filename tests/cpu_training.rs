//! The fast CPU training path (`dilated::train::CpuTrainer`, `dilated::cpu::fast`'s backward
//! ops) against the f64 reference (`dilated::train::train_step`, `train::grad`,
//! `SgdSolver`) on seeded random shapes, by relative error: `max |fast - reference| /
//! max |reference|`.
//!
//! Tolerances: the fast path accumulates in f32 (unit roundoff 6e-8). A gradient element is a
//! sum of up to a few hundred thousand products here; with the blocked, tree-like order of the
//! kernels (16 lanes, partial sums per chunk of 256 pixels and per group of images) the
//! rounding error grows like `sqrt(terms) * 6e-8` in practice, about 1e-5 at worst. Whole
//! networks compound it over up to 16 layers, forward and backward, so whole-network
//! gradients are held to 2e-4 and single ops to 2e-5; the SGD update itself is the
//! reference's formula element for element.

mod common;

use common::{random4, rel_error, rng};
use dilated::cpu::fast;
use dilated::net::{ContextModule, ContextPadding, FrontEnd, Network};
use dilated::train::{
    CpuKernels, CpuTrainer, Dropout, Gradients, LrPolicy, SgdConfig, SgdSolver, grad, train_step,
};
use dilated::{Conv2d, Error, MaxPool2d, Padding, Shape};
use ndarray::{Array3, Array4, ArrayView1, ArrayView4};
use rand::Rng;
use rand::rngs::StdRng;

/// Relative error of two bias vectors.
fn rel_error1(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f64 {
    let a4 = a
        .to_owned()
        .into_shape_with_order((1, 1, 1, a.len()))
        .unwrap();
    let b4 = b
        .to_owned()
        .into_shape_with_order((1, 1, 1, b.len()))
        .unwrap();
    rel_error(a4.view(), b4.view())
}

/// Random labels in `0..classes`, about a tenth ignored (255).
fn labels(r: &mut StdRng, n: usize, h: usize, w: usize, classes: usize) -> Array3<u8> {
    Array3::from_shape_simple_fn((n, h, w), || {
        if r.random_bool(0.1) {
            255
        } else {
            r.random_range(0..classes as u8)
        }
    })
}

/// Largest relative error over every layer's weight and bias gradients (each layer relative
/// to its own largest reference value).
fn gradients_error(got: &Gradients, want: &Gradients) -> f64 {
    assert_eq!(
        got.names().collect::<Vec<_>>(),
        want.names().collect::<Vec<_>>()
    );
    let mut worst = 0f64;
    for (name, w) in want.iter() {
        let g = got.get(name).unwrap();
        let e = rel_error(g.weight.view(), w.weight.view());
        assert!(e.is_finite(), "{name}: weight gradient {e}");
        worst = worst.max(e);
        if let (Some(a), Some(b)) = (&g.bias, &w.bias) {
            worst = worst.max(rel_error1(a.view(), b.view()));
        }
    }
    worst
}

/// The trainer's gradients and loss on one batch against the reference's.
fn check_step(
    net: &Network,
    x: ArrayView4<f32>,
    y: &Array3<u8>,
    dropout: &[Dropout],
    kernels: CpuKernels,
    tol: f64,
    what: &str,
) {
    let d = x.dim();
    let shape = Shape::new(d.0, d.1, d.2, d.3);
    let want = train_step(net, x, y.view(), dropout).unwrap();
    let mut t = CpuTrainer::with_kernels(net, shape, SgdConfig::default(), kernels).unwrap();
    let got = t.forward_backward(x, y.view(), dropout).unwrap();
    assert_eq!(got.valid_pixels, want.valid, "{what}: valid pixels");
    let loss_err = (got.loss - want.loss).abs() / want.loss.abs().max(1e-30);
    let err = gradients_error(&t.gradients().unwrap(), &want.gradients);
    eprintln!(
        "{what}: loss {:.6} (rel. error {loss_err:.1e}), gradients {err:.2e}",
        want.loss
    );
    assert!(
        loss_err <= 1e-5,
        "{what}: loss {} vs {}",
        got.loss,
        want.loss
    );
    assert!(err <= tol, "{what}: gradient error {err:e}");
}

#[test]
fn convolution_gradients_match_the_reference_on_random_geometries() {
    let mut r = rng(7001);
    for case in 0..60 {
        let kh = r.random_range(1..=4);
        let kw = r.random_range(1..=4);
        let (dh, dw) = (r.random_range(1..=3), r.random_range(1..=3));
        // Mostly stride 1 (the direct input gradient), a third strided (SGEMM + col2im).
        let (sh, sw) = if case % 3 == 2 {
            (r.random_range(1..=3), r.random_range(2..=3))
        } else {
            (1, 1)
        };
        let (eh, ew) = ((kh - 1) * dh, (kw - 1) * dw);
        // Padding up to past the kernel's extent (the input gradient then crops).
        let padding = Padding::new(
            r.random_range(0..=eh + 2),
            r.random_range(0..=ew + 2),
            r.random_range(0..=eh + 2),
            r.random_range(0..=ew + 2),
        );
        // Channel counts across one and several 16-lane vectors and blocks of 4 vectors.
        let ci = [1, 3, 7, 16, 19][r.random_range(0..5)];
        let co = [1, 5, 16, 17, 33, 70][r.random_range(0..6)];
        let spec = Conv2d::new(ci, co, 1)
            .kernel(kh, kw)
            .dilation_hw(dh, dw)
            .stride_hw(sh, sw)
            .padding(padding)
            .with_bias(r.random_bool(0.8));
        let n = r.random_range(1..=3);
        let h =
            (eh + 1).saturating_sub(padding.top + padding.bottom).max(1) + r.random_range(0..12);
        let w =
            (ew + 1).saturating_sub(padding.left + padding.right).max(1) + r.random_range(0..40);
        let is = Shape::new(n, ci, h, w);
        let os = spec.output_shape(is, "test").unwrap();
        let x = random4(&mut r, is.dims());
        let dy = random4(&mut r, os.dims());
        let weight = random4(&mut r, spec.weight_shape());
        let what = format!("case {case}: {spec:?} on {is}");
        let gw = fast::conv2d_grad_weight(x.view(), dy.view(), &spec).unwrap();
        let want_w = grad::conv2d_grad_weight(x.view(), dy.view(), &spec).unwrap();
        let ew_ = rel_error(gw.view(), want_w.view());
        assert!(ew_ <= 2e-5, "{what}: weight gradient {ew_:e}");
        let gx = fast::conv2d_grad_input(dy.view(), &spec, weight.view(), is).unwrap();
        let want_x = grad::conv2d_grad_input(dy.view(), &spec, weight.view(), is).unwrap();
        let ex = rel_error(gx.view(), want_x.view());
        assert!(ex <= 2e-5, "{what}: input gradient {ex:e}");
        let gb = fast::bias_grad(dy.view());
        let eb = rel_error1(gb.view(), grad::bias_grad(dy.view()).view());
        assert!(eb <= 2e-6, "{what}: bias gradient {eb:e}");
    }
}

#[test]
fn input_gradients_of_padding_heavy_layers_match_the_reference() {
    // fc6-like (7x7, dilation 4, no padding, small map) and a dilation-8 3x3 without padding:
    // the input gradient as a convolution would mostly read padding, so W^T dy + col2im runs.
    let mut r = rng(7010);
    for (spec, is) in [
        (Conv2d::new(6, 64, 7).dilation(4), Shape::new(2, 6, 29, 31)),
        (Conv2d::new(3, 80, 3).dilation(8), Shape::new(1, 3, 21, 18)),
        (
            Conv2d::new(4, 65, 3)
                .dilation(3)
                .padding(Padding::new(9, 0, 1, 8)),
            Shape::new(2, 4, 5, 7),
        ),
    ] {
        let os = spec.output_shape(is, "test").unwrap();
        let dy = random4(&mut r, os.dims());
        let weight = random4(&mut r, spec.weight_shape());
        let got = fast::conv2d_grad_input(dy.view(), &spec, weight.view(), is).unwrap();
        let want = grad::conv2d_grad_input(dy.view(), &spec, weight.view(), is).unwrap();
        let e = rel_error(got.view(), want.view());
        assert!(e <= 2e-5, "{spec:?} on {is}: {e:e}");
    }
}

#[test]
fn loss_matches_the_reference_at_every_scale() {
    let mut r = rng(7011);
    // Scores up to 0.1, 10 and 60 apart: softmaxes near uniform, peaked, and saturated (the
    // smallest probabilities underflow, the loss caps where a label's probability does).
    for (case, scale) in [0.1f32, 10.0, 60.0].into_iter().enumerate() {
        let s = random4(&mut r, [3, 21, 13, 17]).mapv(|v| v * scale);
        let y = labels(&mut r, 3, 13, 17, 21).mapv(u32::from);
        let (loss, valid, g) = fast::softmax_cross_entropy(s.view(), y.view(), 255).unwrap();
        let want = dilated::train::softmax_cross_entropy(s.view(), y.view()).unwrap();
        assert_eq!(valid, want.valid);
        let le = (loss - want.loss).abs() / want.loss;
        let ge = rel_error(g.view(), want.grad.view());
        assert!(
            le <= 1e-6 && ge <= 1e-6,
            "case {case}: loss {le:e}, gradient {ge:e}"
        );
    }
    // No valid pixel: loss 0, gradient 0.
    let s = random4(&mut r, [1, 3, 2, 2]);
    let y = Array3::from_elem((1, 2, 2), 255u32);
    let (loss, valid, g) = fast::softmax_cross_entropy(s.view(), y.view(), 255).unwrap();
    assert_eq!((loss, valid), (0.0, 0));
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn max_pool_gradient_matches_the_reference() {
    let mut r = rng(7002);
    for case in 0..40 {
        let k = (r.random_range(1..=4), r.random_range(1..=4));
        let s = (r.random_range(1..=3), r.random_range(1..=3));
        let p = Padding::new(
            r.random_range(0..k.0),
            r.random_range(0..k.1),
            r.random_range(0..k.0),
            r.random_range(0..k.1),
        );
        let spec = MaxPool2d {
            kernel: k,
            stride: s,
            padding: p,
            ceil_mode: r.random_bool(0.7),
        };
        let is = Shape::new(
            r.random_range(1..=2),
            r.random_range(1..=5),
            r.random_range(k.0..k.0 + 11),
            r.random_range(k.1..k.1 + 11),
        );
        let Ok(os) = spec.output_shape(is, "test") else {
            continue;
        };
        // Values on a coarse grid: many ties, which go to the first maximum.
        let x = Array4::from_shape_simple_fn(is.dims(), || r.random_range(-3..=3) as f32);
        let dy = random4(&mut r, os.dims());
        let got = fast::max_pool2d_backward(x.view(), &spec, dy.view()).unwrap();
        let want = grad::max_pool2d_backward(x.view(), &spec, dy.view()).unwrap();
        let e = rel_error(got.view(), want.view());
        assert!(e <= 1e-6, "case {case}: {spec:?} on {is}: {e:e}");
    }
}

#[test]
fn basic_context_module_gradients_match_the_reference() {
    let mut r = rng(7003);
    // The paper's basic module (dilations 1, 1, 2, 4, 8, 16, 1 and the 1x1) with random
    // weights, so every layer's gradient is non-trivial.
    let mut net = ContextModule::basic(21).build().unwrap();
    randomize(&mut net, &mut r, 0.3);
    let x = random4(&mut r, [2, 21, 37, 35]);
    let y = labels(&mut r, 2, 37, 35, 21);
    check_step(
        &net,
        x.view(),
        &y,
        &[],
        CpuKernels::Auto,
        2e-4,
        "basic context",
    );
    check_step(
        &net,
        x.view(),
        &y,
        &[],
        CpuKernels::Portable,
        2e-4,
        "basic context, portable",
    );
}

#[test]
fn large_context_module_gradients_match_the_reference() {
    let mut r = rng(7004);
    // VOC's layout (first layer padded by the sum of the dilations) at 5 classes: channels
    // 10, 10, 20, 40, 80, 160, 160, 5.
    let mut net = ContextModule::large(5)
        .padding(ContextPadding::FirstLayer)
        .build()
        .unwrap();
    randomize(&mut net, &mut r, 0.2);
    let x = random4(&mut r, [2, 5, 19, 22]);
    let y = labels(&mut r, 2, 19, 22, 5);
    check_step(
        &net,
        x.view(),
        &y,
        &[],
        CpuKernels::Auto,
        2e-4,
        "large context",
    );
}

#[test]
fn front_end_with_pools_and_dropout_matches_the_reference() {
    let mut r = rng(7005);
    // The front-end at widths / 64 (1, 2, 4, 8 channels, fc6 and fc7 of 64) with its three
    // pools, and dropout after fc6 and fc7 as the authors train it; 389 x 397 gives 3 x 4.
    let net = FrontEnd {
        classes: 6,
        width_divisor: 64,
        final_layer: "final",
    }
    .builder("fe", 3)
    .unwrap()
    .softmax("prob")
    .build()
    .unwrap();
    let x = random4(&mut r, [2, 3, 389, 397]);
    let out = net.output_shape(Shape::new(2, 3, 389, 397)).unwrap();
    assert_eq!((out.h, out.w), (3, 4));
    let y = labels(&mut r, 2, 3, 4, 6);
    let dropout = Dropout::masks(
        &net,
        Shape::new(2, 3, 389, 397),
        &[("fc6", 0.5), ("fc7", 0.5)],
        11,
    )
    .unwrap();
    check_step(
        &net,
        x.view(),
        &y,
        &dropout,
        CpuKernels::Auto,
        2e-4,
        "front-end",
    );
}

/// Strided and padded-per-side convolutions, a separate ReLU, overlapping ceil-mode pools with
/// padding, odd sizes, dropout in the middle and a final softmax.
fn odd_network(seed: u64) -> Network {
    Network::builder("odd", 3)
        .conv_he(
            "c1",
            Conv2d::new(3, 9, 3)
                .stride(2)
                .padding(Padding::new(1, 2, 0, 1))
                .with_relu(true),
            seed,
        )
        .max_pool(
            "p1",
            MaxPool2d::caffe(3, 2).padding(Padding::new(1, 0, 0, 1)),
        )
        .conv_he(
            "c2",
            Conv2d::new(9, 18, 1).kernel(3, 2).dilation_hw(2, 1).pad(2),
            seed + 1,
        )
        .relu("r2")
        .conv_he(
            "c3",
            Conv2d::new(18, 20, 3)
                .stride_hw(2, 1)
                .padding(Padding::new(0, 3, 2, 0))
                .with_relu(true),
            seed + 2,
        )
        .max_pool("p2", MaxPool2d::caffe(2, 2))
        .conv_he("c4", Conv2d::new(20, 7, 1), seed + 3)
        .softmax("prob")
        .build()
        .unwrap()
}

#[test]
fn strided_padded_network_matches_the_reference() {
    let mut r = rng(7006);
    let net = odd_network(5);
    let shape = Shape::new(3, 3, 45, 53);
    let out = net.output_shape(shape).unwrap();
    let x = random4(&mut r, shape.dims());
    let y = labels(&mut r, 3, out.h, out.w, 7);
    let dropout = Dropout::masks(&net, shape, &[("r2", 0.3)], 2).unwrap();
    for kernels in [CpuKernels::Auto, CpuKernels::Portable] {
        check_step(
            &net,
            x.view(),
            &y,
            &dropout,
            kernels,
            2e-4,
            &format!("odd network, {kernels:?}"),
        );
    }
}

/// Random weights of scale `s` on every convolution.
fn randomize(net: &mut Network, r: &mut StdRng, s: f32) {
    let layers: Vec<(String, [usize; 4], bool)> = net
        .layers()
        .iter()
        .filter_map(|l| match &l.op {
            dilated::net::Op::Conv { spec, .. } => {
                Some((l.name.clone(), spec.weight_shape(), spec.bias))
            }
            _ => None,
        })
        .collect();
    for (name, shape, bias) in layers {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f32;
        let w = random4(r, shape).mapv(|v| v * s * 3.0 / fan_in.sqrt());
        let b =
            bias.then(|| ndarray::Array1::from_shape_simple_fn(shape[0], || r.random_range(-s..s)));
        net.set_weights(&name, w, b).unwrap();
    }
}

/// Largest relative error between two networks' weights and biases.
fn weights_error(a: &Network, b: &Network) -> f64 {
    let (sa, sb) = (a.weight_set().unwrap(), b.weight_set().unwrap());
    let mut worst = 0f64;
    for (name, wa) in sa.iter() {
        let wb = sb.get(name).unwrap();
        worst = worst.max(rel_error(wa.weight.view(), wb.weight.view()));
        if let (Some(x), Some(y)) = (&wa.bias, &wb.bias) {
            worst = worst.max(rel_error1(x.view(), y.view()));
        }
    }
    worst
}

#[test]
fn sgd_steps_match_the_reference_solver() {
    let mut r = rng(7007);
    let mut start = ContextModule::basic(11)
        .dilations(&[1, 1, 2, 4, 1])
        .build()
        .unwrap();
    randomize(&mut start, &mut r, 0.3);
    let config = SgdConfig {
        base_lr: 0.05,
        policy: LrPolicy::Step {
            gamma: 0.5,
            stepsize: 2,
        },
        ..SgdConfig::default()
    };
    let shape = Shape::new(2, 11, 23, 21);
    let batches: Vec<(Array4<f32>, Array3<u8>)> = (0..5)
        .map(|_| (random4(&mut r, shape.dims()), labels(&mut r, 2, 23, 21, 11)))
        .collect();
    let mut reference = start.clone();
    let mut solver = SgdSolver::new(config).unwrap();
    let mut trainer = CpuTrainer::new(&start, shape, config).unwrap();
    let mut fast_net = start.clone();
    for (iter, (x, y)) in batches.iter().enumerate() {
        let step = train_step(&reference, x.view(), y.view(), &[]).unwrap();
        solver
            .step(&mut reference, &step.gradients, iter as u64)
            .unwrap();
        let stats = trainer.step(x.view(), y.view(), &[], iter as u64).unwrap();
        assert!((stats.loss - step.loss).abs() <= 1e-4 * step.loss.abs());
        trainer.download_into(&mut fast_net).unwrap();
        let e = weights_error(&fast_net, &reference);
        eprintln!("step {iter}: loss {:.5}, weights {e:.2e}", step.loss);
        assert!(e <= 1e-5, "weights after step {iter}: {e:e}");
    }
    // The momentum too.
    for (name, m) in trainer.momentum().unwrap() {
        let want = solver.momentum(&name).unwrap();
        let e = rel_error(m.weight.view(), want.weight.view());
        assert!(e <= 2e-4, "{name}: momentum {e:e}");
    }
    // And the weights moved.
    assert!(weights_error(&fast_net, &start) > 1e-3);
}

#[test]
fn steps_repeat_bit_for_bit_and_resume_exactly() {
    let mut r = rng(7008);
    let mut net = odd_network(9);
    randomize(&mut net, &mut r, 0.3);
    let shape = Shape::new(2, 3, 37, 41);
    let out = net.output_shape(shape).unwrap();
    let batches: Vec<(Array4<f32>, Array3<u8>, Vec<Dropout>)> = (0..4)
        .map(|i| {
            (
                random4(&mut r, shape.dims()),
                labels(&mut r, 2, out.h, out.w, 7),
                Dropout::masks(&net, shape, &[("r2", 0.5)], i).unwrap(),
            )
        })
        .collect();
    let config = SgdConfig {
        base_lr: 0.01,
        ..SgdConfig::default()
    };
    let run = |from: &Network, iters: std::ops::Range<usize>, momentum: Option<&SgdSolver>| {
        let mut t = CpuTrainer::new(from, shape, config).unwrap();
        if let Some(s) = momentum {
            t.load_momentum(s).unwrap();
        }
        for i in iters {
            let (x, y, d) = &batches[i];
            t.step(x.view(), y.view(), d, i as u64).unwrap();
        }
        let mut net = from.clone();
        t.download_into(&mut net).unwrap();
        let mut solver = SgdSolver::new(config).unwrap();
        t.store_momentum(&mut solver).unwrap();
        (net, solver)
    };
    let (whole, _) = run(&net, 0..4, None);
    let (again, _) = run(&net, 0..4, None);
    assert_eq!(weights_error(&whole, &again), 0.0, "two identical runs");
    // Stopped after two steps, state saved and loaded as the command line does, resumed.
    let (half, solver) = run(&net, 0..2, None);
    let mut loaded = SgdSolver::new(config).unwrap();
    assert_eq!(
        loaded
            .load_state_bytes(&solver.state_bytes(2).unwrap())
            .unwrap(),
        2
    );
    let (resumed, _) = run(&half, 2..4, Some(&loaded));
    assert_eq!(
        weights_error(&resumed, &whole),
        0.0,
        "resumed vs uninterrupted"
    );
}

#[test]
fn trainers_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CpuTrainer>();
}

#[test]
fn bad_inputs_are_errors() {
    let mut r = rng(7009);
    let net = odd_network(1);
    let shape = Shape::new(2, 3, 37, 41);
    let out = net.output_shape(shape).unwrap();
    let mut t = CpuTrainer::new(&net, shape, SgdConfig::default()).unwrap();
    let x = random4(&mut r, shape.dims());
    let y = labels(&mut r, 2, out.h, out.w, 7);
    // Nothing to read or apply before a step.
    assert!(t.gradients().is_err());
    assert!(t.update(0).is_err());
    // Another batch shape, other labels, a label that is no class.
    let x2 = random4(&mut r, [1, 3, 37, 41]);
    assert!(matches!(
        t.forward_backward(x2.view(), y.view(), &[]),
        Err(Error::ShapeMismatch { .. })
    ));
    let y2 = Array3::<u8>::zeros((2, out.h + 1, out.w));
    assert!(matches!(
        t.forward_backward(x.view(), y2.view(), &[]),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut y3 = y.clone();
    y3[[1, 0, 0]] = 7;
    let e = t.forward_backward(x.view(), y3.view(), &[]).unwrap_err();
    assert!(e.to_string().contains("label 7"), "{e}");
    // Dropout on an unknown layer, on the softmax, twice, with a bad ratio or mask.
    let good = Dropout::masks(&net, shape, &[("r2", 0.5)], 0)
        .unwrap()
        .remove(0);
    let with = |f: &dyn Fn(&mut Dropout)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    for (bad, what) in [
        (vec![with(&|d| d.layer = "nope".into())], "no such layer"),
        (vec![with(&|d| d.layer = "prob".into())], "softmax"),
        (vec![good.clone(), good.clone()], "two dropout"),
        (vec![with(&|d| d.ratio = 1.0)], "ratio"),
        (
            vec![with(&|d| d.mask = Array4::from_elem((2, 1, 1, 1), true))],
            "mask",
        ),
    ] {
        let e = t.forward_backward(x.view(), y.view(), &bad).unwrap_err();
        assert!(matches!(e, Error::Layer { .. }), "{what}: {e:?}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    // Still usable after every rejection.
    t.step(x.view(), y.view(), &[good], 0).unwrap();
    // Momentum of the wrong shape or for no layer.
    let m = t.momentum().unwrap();
    assert!(t.set_momentum("c2", &m[0].1).is_err());
    assert!(t.set_momentum("r2", &m[0].1).is_err());
    t.set_momentum("c1", &m[0].1).unwrap();
    // Layers training does not take, an input the network does not accept, bad settings.
    let zoom = Network::builder("z", 3)
        .conv_he("c", Conv2d::new(3, 4, 1), 0)
        .zoom("zoom", 2)
        .build()
        .unwrap();
    assert!(matches!(
        CpuTrainer::new(&zoom, Shape::new(1, 3, 8, 8), SgdConfig::default()),
        Err(Error::Layer { .. })
    ));
    assert!(CpuTrainer::new(&net, Shape::new(1, 3, 4, 4), SgdConfig::default()).is_err());
    let bad = SgdConfig {
        momentum: f64::NAN,
        ..SgdConfig::default()
    };
    assert!(CpuTrainer::new(&net, shape, bad).is_err());
}
