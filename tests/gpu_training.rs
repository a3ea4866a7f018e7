//! Training a network of convolutions on the GPU (`GpuTrainer`): its gradients against central
//! finite differences of the loss computed with the f64 forward reference, and the loss going
//! down over SGD steps on a fixed batch.

mod common;

use common::{gpu, random1, random4, rng};
use dilated::gpu::SgdHyper;
use dilated::net::{ContextModule, Network, Op};
use dilated::plan::GpuTrainer;
use dilated::train::forward_loss;
use dilated::{Conv2d, Padding, Shape};
use ndarray::{Array3, Array4};
use rand::Rng;

/// Mean softmax cross-entropy of `net` on `x` over the non-ignored (255) pixels, by the CPU
/// reference (`dilated::train::forward_loss`, f64 accumulation).
fn reference_loss(net: &Network, x: &Array4<f32>, labels: &Array3<u32>) -> f64 {
    forward_loss(net, x.view(), labels.view(), &[]).unwrap()
}

fn small_network(seed: u64) -> Network {
    let mut r = rng(seed);
    let a = Conv2d::new(3, 5, 3)
        .dilation(2)
        .padding(Padding::new(2, 1, 2, 2))
        .with_relu(true);
    let b = Conv2d::new(5, 4, 3).pad(1).with_relu(true);
    let c = Conv2d::new(4, 3, 1);
    Network::builder("small", 3)
        .conv(
            "a",
            a,
            random4(&mut r, a.weight_shape()),
            Some(random1(&mut r, 5)),
        )
        .conv(
            "b",
            b,
            random4(&mut r, b.weight_shape()),
            Some(random1(&mut r, 4)),
        )
        .conv(
            "c",
            c,
            random4(&mut r, c.weight_shape()),
            Some(random1(&mut r, 3)),
        )
        .build()
        .unwrap()
}

fn random_labels(
    r: &mut rand::rngs::StdRng,
    shape: (usize, usize, usize),
    classes: u32,
) -> Array3<u32> {
    Array3::from_shape_simple_fn(shape, || {
        if r.random_bool(0.15) {
            255
        } else {
            r.random_range(0..classes)
        }
    })
}

#[test]
fn gradients_match_finite_differences_of_the_reference_loss() {
    let gpu = gpu();
    let net = small_network(1);
    let mut r = rng(2);
    let x = random4(&mut r, [2, 3, 9, 8]);
    let out = net.output_shape(Shape::new(2, 3, 9, 8)).unwrap();
    let labels = random_labels(&mut r, (out.n, out.h, out.w), 3);
    let mut trainer = GpuTrainer::new(gpu, &net, Shape::new(2, 3, 9, 8)).unwrap();
    // A step with learning rate 0 leaves the weights and reports the gradients.
    let stats = trainer
        .step(
            x.view(),
            labels.view(),
            &SgdHyper {
                lr: 0.0,
                momentum: 0.0,
                weight_decay: 0.0,
            },
        )
        .unwrap();
    let want = reference_loss(&net, &x, &labels);
    assert!(
        (stats.loss - want).abs() <= 1e-5 * want,
        "loss {} vs {want}",
        stats.loss
    );
    let grads = trainer.gradients().unwrap();
    let h = 1e-3f32;
    let mut checked = 0;
    for (name, g) in &grads {
        for _ in 0..6 {
            let (o, i, ky, kx) = g.weight.dim();
            let at = [
                r.random_range(0..o),
                r.random_range(0..i),
                r.random_range(0..ky),
                r.random_range(0..kx),
            ];
            let loss_at = |delta: f32| {
                let mut n2 = net.clone();
                let layer = n2.layers().iter().find(|l| &l.name == name).unwrap();
                let Op::Conv { weight, bias, .. } = &layer.op else {
                    panic!("conv")
                };
                let mut w = weight.clone();
                w[at] += delta;
                let b = bias.clone();
                n2.set_weights(name, w, b).unwrap();
                reference_loss(&n2, &x, &labels)
            };
            let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
            let got = g.weight[at] as f64;
            assert!(
                (got - fd).abs() <= 2e-3 * fd.abs() + 5e-4,
                "{name} weight {at:?}: GPU {got} vs finite difference {fd}"
            );
            checked += 1;
        }
        let bias = g.bias.as_ref().unwrap();
        let co = r.random_range(0..bias.len());
        let loss_at = |delta: f32| {
            let mut n2 = net.clone();
            let layer = n2.layers().iter().find(|l| &l.name == name).unwrap();
            let Op::Conv { weight, bias, .. } = &layer.op else {
                panic!("conv")
            };
            let w = weight.clone();
            let mut b = bias.clone().unwrap();
            b[co] += delta;
            n2.set_weights(name, w, Some(b)).unwrap();
            reference_loss(&n2, &x, &labels)
        };
        let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
        assert!(
            (bias[co] as f64 - fd).abs() <= 2e-3 * fd.abs() + 5e-4,
            "{name} bias {co}: GPU {} vs finite difference {fd}",
            bias[co]
        );
    }
    assert_eq!(checked, 18);
}

#[test]
fn sgd_steps_lower_the_loss_of_a_context_module() {
    let gpu = gpu();
    // The basic context module for 4 classes from its identity initialisation, on scores whose
    // labels need context: the label of a pixel is the class of the largest score 4 pixels to
    // its right (so the identity is a poor start).
    let mut net = ContextModule::basic(4).build().unwrap();
    let shape = Shape::new(2, 4, 24, 24);
    let mut r = rng(3);
    let x = random4(&mut r, [2, 4, 24, 24]).mapv(|v| v.abs());
    let out = net.output_shape(shape).unwrap();
    let labels = Array3::from_shape_fn((out.n, out.h, out.w), |(b, i, j)| {
        let jj = (j + 4).min(out.w - 1);
        (0..4u32)
            .max_by(|&p, &q| x[[b, p as usize, i, jj]].total_cmp(&x[[b, q as usize, i, jj]]))
            .unwrap()
    });
    let mut trainer = GpuTrainer::new(gpu, &net, shape).unwrap();
    let hyper = SgdHyper {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0005,
    };
    let first = trainer.step(x.view(), labels.view(), &hyper).unwrap();
    let mut last = first;
    for _ in 0..60 {
        last = trainer.step(x.view(), labels.view(), &hyper).unwrap();
    }
    assert!(
        last.loss < 0.92 * first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    // The trained weights come back into the network, and the reference loss agrees.
    trainer.download_into(&mut net).unwrap();
    let now = reference_loss(&net, &x, &labels);
    let next = trainer.step(x.view(), labels.view(), &hyper).unwrap();
    assert!(
        (next.loss - now).abs() <= 1e-4 * now,
        "{} vs {now}",
        next.loss
    );
}
