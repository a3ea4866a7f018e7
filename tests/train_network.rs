//! Whole-network training steps against central differences of the network's loss: the basic
//! and the large context module, a small network with strided convolution, separate ReLU and
//! max pooling (ceil mode, overlapping windows), and a width-reduced front-end with dropout.
//! Perturbations that cross a ReLU kink or change a pooling winner are detected (the forward
//! passes' fingerprints differ) and not used.

mod train_support;

use dilated::net::{ContextModule, ContextPadding, FrontEnd, Network, Op};
use dilated::train::grad::max_pool2d_backward;
use dilated::train::{
    Dropout, Forward, Gradients, LrPolicy, SgdConfig, SgdSolver, forward, forward_loss,
    softmax_cross_entropy, train_step,
};
use dilated::{Conv2d, Error, MaxPool2d, Padding, Shape};
use ndarray::{Array1, Array3, Array4, ArrayView3, ArrayView4};
use rand::Rng;
use train_support::{rng, uniform};

/// Where a forward pass sits between kinks: the sign of every ReLU output (fused or not) and
/// the winners of every max-pooling window. Two parameter values with the same fingerprint lie
/// on one smooth piece of the loss, so a central difference between them has no kink error.
pub fn fingerprint(net: &Network, f: &Forward) -> Vec<Vec<bool>> {
    let acts = f.activations();
    let mut out = Vec::new();
    for (i, layer) in net.layers().iter().enumerate().take(acts.len() - 1) {
        match &layer.op {
            Op::Conv { spec, .. } if spec.relu => {
                out.push(acts[i + 1].iter().map(|&v| v > 0.0).collect())
            }
            Op::Relu => out.push(acts[i + 1].iter().map(|&v| v > 0.0).collect()),
            Op::MaxPool(p) => {
                // How many windows each input wins (overlapping windows may win one input
                // several times), as bits.
                let ones = Array4::<f32>::ones(acts[i + 1].dim());
                let routed = max_pool2d_backward(acts[i].view(), p, ones.view()).unwrap();
                out.push(
                    routed
                        .iter()
                        .flat_map(|&v| (0..4).map(move |b| (v as u32 >> b) & 1 == 1))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    out
}

/// Checks a network's analytic parameter gradients against central differences of its loss:
/// for every convolution, up to `per_layer` parameters drawn at random (weights, and the bias
/// now and then), skipping draws whose perturbation crosses a kink (the fingerprints at the
/// two points differ), with `|fd - g| <= abs + rel * |fd|`. Returns, per layer, how many
/// parameters were checked and the largest error relative to the tolerance.
#[allow(clippy::too_many_arguments)]
pub fn check_network_gradients(
    net: &Network,
    input: ArrayView4<f32>,
    labels: ArrayView3<u8>,
    dropout: &[Dropout],
    grads: &Gradients,
    per_layer: usize,
    seed: u64,
    eps: f32,
    (abs, rel): (f64, f64),
) -> Vec<(String, usize, f64)> {
    let mut r = rng(seed);
    let mut report = Vec::new();
    for layer in net.layers() {
        let Op::Conv { weight, bias, .. } = &layer.op else {
            continue;
        };
        let name = layer.name.as_str();
        let g = grads
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let (mut checked, mut worst) = (0, 0.0f64);
        for _ in 0..4 * per_layer {
            if checked == per_layer {
                break;
            }
            let on_bias = bias.is_some() && r.random_bool(0.25);
            let (idx, analytic) = if on_bias {
                let i = r.random_range(0..weight.dim().0);
                (Err(i), g.bias.as_ref().unwrap()[i])
            } else {
                let d = weight.dim();
                let i = [
                    r.random_range(0..d.0),
                    r.random_range(0..d.1),
                    r.random_range(0..d.2),
                    r.random_range(0..d.3),
                ];
                (Ok(i), g.weight[i])
            };
            let at = |delta: f32| {
                let (mut w, mut b) = (weight.clone(), bias.clone());
                let v = match idx {
                    Ok(i) => {
                        w[i] += delta;
                        w[i]
                    }
                    Err(i) => {
                        let b = b.as_mut().unwrap();
                        b[i] += delta;
                        b[i]
                    }
                };
                let mut n = net.clone();
                n.set_weights(name, w, b).unwrap();
                let f = forward(&n, input, dropout).unwrap();
                let loss = softmax_cross_entropy(f.scores(), labels).unwrap().loss;
                (v as f64, loss, fingerprint(&n, &f))
            };
            let (hi, loss_hi, print_hi) = at(eps);
            let (lo, loss_lo, print_lo) = at(-eps);
            if print_hi != print_lo {
                continue;
            }
            let fd = (loss_hi - loss_lo) / (hi - lo);
            let err = (fd - analytic as f64).abs() / (abs + rel * fd.abs());
            assert!(
                err <= 1.0,
                "{name} {idx:?}: analytic {analytic}, finite difference {fd}"
            );
            checked += 1;
            worst = worst.max(err);
        }
        report.push((name.to_string(), checked, worst));
    }
    report
}

/// Adds uniform noise in `[-a, a)` to every weight and sets biases uniform in `[-b, b)`: away
/// from the identity initialisation, which puts many pre-activations exactly at a ReLU kink.
fn jitter(net: &mut Network, seed: u64, a: f32, b: f32) {
    let mut r = rng(seed);
    let convs: Vec<(String, Array4<f32>, bool)> = net
        .layers()
        .iter()
        .filter_map(|l| match &l.op {
            Op::Conv { weight, bias, .. } => Some((l.name.clone(), weight.clone(), bias.is_some())),
            _ => None,
        })
        .collect();
    for (name, w, has_bias) in convs {
        let w = w.mapv(|v| v + r.random_range(-a..a));
        let bias = has_bias.then(|| Array1::from_shape_fn(w.dim().0, |_| r.random_range(-b..b)));
        net.set_weights(&name, w, bias).unwrap();
    }
}

fn labels(seed: u64, shape: (usize, usize, usize), classes: u8) -> Array3<u8> {
    let mut r = rng(seed);
    Array3::from_shape_simple_fn(shape, || {
        if r.random_bool(0.15) {
            255
        } else {
            r.random_range(0..classes)
        }
    })
}

fn print_report(what: &str, report: &[(String, usize, f64)]) {
    for (name, checked, worst) in report {
        eprintln!("{what}: {name}: {checked} parameters, worst error {worst:.3} of the tolerance");
    }
}

/// Finite differences of the f32 forward pass: eps 1e-3; the f32 rounding of the activations
/// gives about 1e-5 of noise, the curvature of the loss about eps^2.
const EPS: f32 = 1e-3;
const TOL: (f64, f64) = (5e-5, 2e-3);

#[test]
fn basic_context_module_gradients_match_finite_differences() {
    let module = ContextModule::basic(3).dilations(&[1, 1, 2, 4, 1]);
    let mut net = module.build().unwrap();
    let input = uniform(&mut rng(1), [2, 3, 10, 9], -1.0, 2.0);
    let labels = labels(2, (2, 10, 9), 3);
    // At the identity initialisation: a gradient for every layer, in order.
    let step = train_step(&net, input.view(), labels.view(), &[]).unwrap();
    let names: Vec<&str> = step.gradients.names().collect();
    assert_eq!(names, module.layer_names());
    assert!(step.loss.is_finite() && step.valid > 100);
    jitter(&mut net, 3, 0.3, 0.2);
    let step = train_step(&net, input.view(), labels.view(), &[]).unwrap();
    let report = check_network_gradients(
        &net,
        input.view(),
        labels.view(),
        &[],
        &step.gradients,
        6,
        4,
        EPS,
        TOL,
    );
    print_report("basic", &report);
    assert_eq!(report.len(), 6);
    assert!(
        report.iter().all(|(_, checked, _)| *checked >= 3),
        "{report:?}"
    );
}

#[test]
fn large_context_module_gradients_match_finite_differences() {
    // The VOC release's padding: the first layer pads by the sum of the dilations, the rest
    // not at all. Widths 4, 4, 8, 8, then 2.
    let module = ContextModule::large(2)
        .dilations(&[1, 1, 2, 1])
        .padding(ContextPadding::FirstLayer)
        .sigma(0.01, 5);
    let mut net = module.build().unwrap();
    assert_eq!(module.channels(), vec![4, 4, 8, 8, 2]);
    jitter(&mut net, 6, 0.2, 0.2);
    let input = uniform(&mut rng(7), [2, 2, 9, 8], -1.0, 2.0);
    let labels = labels(8, (2, 9, 8), 2);
    let step = train_step(&net, input.view(), labels.view(), &[]).unwrap();
    let report = check_network_gradients(
        &net,
        input.view(),
        labels.view(),
        &[],
        &step.gradients,
        6,
        9,
        EPS,
        TOL,
    );
    print_report("large", &report);
    assert!(
        report.iter().all(|(_, checked, _)| *checked >= 3),
        "{report:?}"
    );
}

/// Max pool (stride 1) first, a strided convolution with asymmetric padding and fused ReLU,
/// overlapping ceil-mode pooling, a dilated non-square convolution without ReLU, a separate
/// ReLU, pooling again, a 1x1 to 3 classes and the softmax.
fn mixed_network(seed: u64) -> Network {
    let mut r = rng(seed);
    let mut conv = |spec: Conv2d| {
        let w = uniform(&mut r, spec.weight_shape(), -0.5, 0.5);
        let b = Array1::from_shape_fn(spec.out_channels, |_| r.random_range(-0.2..0.2));
        (spec, w, Some(b))
    };
    let (s1, w1, b1) = conv(
        Conv2d::new(2, 4, 3)
            .stride(2)
            .padding(Padding::new(1, 0, 2, 1))
            .with_relu(true),
    );
    let (s2, w2, b2) = conv(Conv2d::new(4, 4, 1).kernel(2, 3).dilation_hw(2, 1).pad(1));
    let (s3, w3, b3) = conv(Conv2d::new(4, 3, 1));
    Network::builder("mixed", 2)
        .max_pool("p0", MaxPool2d::caffe(2, 1))
        .conv("c1", s1, w1, b1)
        .max_pool("p1", MaxPool2d::caffe(3, 2))
        .conv("c2", s2, w2, b2)
        .relu("r2")
        .max_pool("p2", MaxPool2d::caffe(2, 2))
        .conv("c3", s3, w3, b3)
        .softmax("prob")
        .build()
        .unwrap()
}

#[test]
fn pooling_strided_network_gradients_match_finite_differences() {
    let net = mixed_network(10);
    let input = uniform(&mut rng(11), [2, 2, 23, 21], -1.0, 1.0);
    let out = net.output_shape(Shape::new(2, 2, 23, 21)).unwrap();
    assert_eq!((out.c, out.h, out.w), (3, 3, 3));
    let labels = labels(12, (2, 3, 3), 3);
    let step = train_step(&net, input.view(), labels.view(), &[]).unwrap();
    // The final softmax is the loss: the scores are c3's output.
    let f = forward(&net, input.view(), &[]).unwrap();
    assert_eq!(f.activations().len(), net.layers().len());
    let l = softmax_cross_entropy(f.scores(), labels.view()).unwrap();
    assert_eq!(l.loss, step.loss);
    let report = check_network_gradients(
        &net,
        input.view(),
        labels.view(),
        &[],
        &step.gradients,
        24,
        13,
        EPS,
        TOL,
    );
    print_report("mixed", &report);
    assert!(
        report.iter().all(|(_, checked, _)| *checked >= 12),
        "{report:?}"
    );
}

#[test]
fn front_end_with_dropout_trains_and_its_top_layers_match_finite_differences() {
    let net = FrontEnd {
        classes: 3,
        width_divisor: 64,
        final_layer: "final",
    }
    .builder("fe", 5)
    .unwrap()
    .softmax("prob")
    .build()
    .unwrap();
    let shape = Shape::new(1, 3, 381, 381);
    let out = net.output_shape(shape).unwrap();
    assert_eq!((out.h, out.w), (2, 2));
    let input = uniform(&mut rng(14), shape.dims(), -1.0, 1.0);
    let labels = Array3::from_shape_vec((1, 2, 2), vec![0u8, 2, 255, 1]).unwrap();
    let dropout = Dropout::masks(&net, shape, &[("fc6", 0.5), ("fc7", 0.5)], 15).unwrap();
    let f = forward(&net, input.view(), &dropout).unwrap();
    let step = dilated::train::backward(&net, &f, labels.view(), &dropout).unwrap();
    assert_eq!(step.valid, 3);
    assert_eq!(step.gradients.len(), 16);
    assert!(
        step.gradients
            .iter()
            .all(|(_, g)| g.weight.iter().all(|v| v.is_finite()))
    );
    // Dropped units pass no gradient: the weights of an fc6 channel dropped at every pixel
    // get none.
    let fc6 = net.layers().iter().position(|l| l.name == "fc6").unwrap();
    let fc6_mask = &dropout[0].mask;
    let g = step.gradients.get("fc6").unwrap();
    let mut dropped = 0;
    for c in 0..fc6_mask.dim().1 {
        if fc6_mask
            .slice(ndarray::s![.., c, .., ..])
            .iter()
            .all(|&k| !k)
        {
            dropped += 1;
            assert!(
                g.weight
                    .slice(ndarray::s![c, .., .., ..])
                    .iter()
                    .all(|&v| v == 0.0)
            );
            assert_eq!(g.bias.as_ref().unwrap()[c], 0.0);
        }
    }
    assert!(dropped > 0);
    // From conv5_3 on, the network's gradients against differences of the loss of the
    // network's tail run on conv5_3's input (the same computation, much cheaper).
    let start = net
        .layers()
        .iter()
        .position(|l| l.name == "conv5_3")
        .unwrap();
    assert!(start < fc6);
    let tail = net.sub_network(start..net.layers().len()).unwrap();
    let tail_input = f.activations()[start].view();
    let tail_loss = forward_loss(&tail, tail_input, labels.view(), &dropout).unwrap();
    assert_eq!(tail_loss, step.loss);
    let report = check_network_gradients(
        &tail,
        tail_input,
        labels.view(),
        &dropout,
        &step.gradients,
        4,
        16,
        EPS,
        TOL,
    );
    print_report("front-end", &report);
    assert_eq!(report.len(), 4);
    assert!(
        report.iter().all(|(_, checked, _)| *checked >= 2),
        "{report:?}"
    );
}

#[test]
fn a_few_sgd_steps_reduce_the_loss() {
    let mut net = ContextModule::basic(3)
        .dilations(&[1, 2, 1])
        .build()
        .unwrap();
    let input = uniform(&mut rng(20), [2, 3, 8, 8], -1.0, 2.0);
    let labels = labels(21, (2, 8, 8), 3);
    let mut solver = SgdSolver::new(SgdConfig {
        base_lr: 0.05,
        policy: LrPolicy::Fixed,
        ..SgdConfig::default()
    })
    .unwrap();
    let first = train_step(&net, input.view(), labels.view(), &[])
        .unwrap()
        .loss;
    let mut last = first;
    for iter in 0..10 {
        let step = train_step(&net, input.view(), labels.view(), &[]).unwrap();
        last = step.loss;
        solver.step(&mut net, &step.gradients, iter).unwrap();
    }
    assert!(last < first, "loss {first} -> {last}");
}

#[test]
fn unsupported_layers_and_bad_inputs_are_errors() {
    let conv = Conv2d::new(2, 2, 1);
    let w = || Array4::<f32>::ones((2, 2, 1, 1));
    let input = Array4::<f32>::ones((1, 2, 4, 4));
    let labels = Array3::<u8>::zeros((1, 4, 4));
    let layer_err = |r: Result<dilated::train::TrainStep, Error>, name: &str| match r {
        Err(Error::Layer { layer, .. }) => assert_eq!(layer, name),
        other => panic!("expected an error naming {name}, got {other:?}"),
    };
    let zoom = Network::builder("z", 2)
        .conv("c", conv, w(), Some(Array1::zeros(2)))
        .zoom("up", 2);
    layer_err(
        train_step(&zoom.build().unwrap(), input.view(), labels.view(), &[]),
        "up",
    );
    let mid = Network::builder("m", 2)
        .conv("c", conv, w(), Some(Array1::zeros(2)))
        .softmax("s")
        .conv("d", conv, w(), Some(Array1::zeros(2)))
        .build()
        .unwrap();
    layer_err(train_step(&mid, input.view(), labels.view(), &[]), "s");
    let net = Network::builder("ok", 2)
        .conv("c", conv, w(), Some(Array1::zeros(2)))
        .softmax("prob")
        .build()
        .unwrap();
    assert!(train_step(&net, input.view(), labels.view(), &[]).is_ok());
    assert!(matches!(
        train_step(
            &net,
            input.view(),
            Array3::<u8>::zeros((1, 4, 3)).view(),
            &[]
        ),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(
        train_step(
            &net,
            Array4::<f32>::ones((1, 3, 4, 4)).view(),
            labels.view(),
            &[]
        )
        .is_err()
    );
    let mask = Array4::from_elem((1, 2, 4, 4), true);
    let dropout_on = |layer: &str, mask: Array4<bool>| Dropout {
        layer: layer.into(),
        ratio: 0.5,
        mask,
    };
    layer_err(
        train_step(
            &net,
            input.view(),
            labels.view(),
            &[dropout_on("x", mask.clone())],
        ),
        "x",
    );
    layer_err(
        train_step(
            &net,
            input.view(),
            labels.view(),
            &[dropout_on("prob", mask.clone())],
        ),
        "prob",
    );
    layer_err(
        train_step(
            &net,
            input.view(),
            labels.view(),
            &[dropout_on("c", Array4::from_elem((1, 2, 4, 3), true))],
        ),
        "c",
    );
    layer_err(
        train_step(
            &net,
            input.view(),
            labels.view(),
            &[dropout_on("c", mask.clone()), dropout_on("c", mask)],
        ),
        "c",
    );
}
