//! Training on the GPU (`GpuTrainer`): a network of convolutions' gradients against central
//! finite differences of the loss computed with the f64 forward reference, the loss going
//! down over SGD steps on a fixed batch, and whole steps of a width-reduced front-end (max
//! pooling, dropout on fc6 and fc7) and of the front-end joined with a context module against
//! the CPU reference's step and solver (`dilated::train::train_step`, `SgdSolver`): loss,
//! gradients, momentum and updated weights. Also weights above a capped binding (fc6-like),
//! the memory report and budget, and the errors.

mod common;

use common::{gpu, random1, random4, rng};
use dilated::gpu::{Kernel, SgdHyper};
use dilated::net::{ContextModule, FrontEnd, Network, Op};
use dilated::plan::{GpuTrainer, PlanOptions, TrainingMemory};
use dilated::train::{Dropout, LrPolicy, SgdConfig, SgdSolver, forward_loss, train_step};
use dilated::weights::LayerWeights;
use dilated::{Conv2d, Error, Gpu, MaxPool2d, Padding, Shape};
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

/// `max |got - want| / max |want|` over a layer's weight and bias, in f64; NaN in `got` (an
/// element the GPU did not write) is an infinite error.
fn layer_error(got: &LayerWeights, want: &LayerWeights) -> f64 {
    let mut pairs: Vec<(f32, f32)> = got
        .weight
        .iter()
        .copied()
        .zip(want.weight.iter().copied())
        .collect();
    assert_eq!(got.weight.dim(), want.weight.dim());
    match (&got.bias, &want.bias) {
        (Some(a), Some(b)) => pairs.extend(a.iter().copied().zip(b.iter().copied())),
        (None, None) => {}
        _ => panic!("bias presence differs"),
    }
    let scale = pairs
        .iter()
        .fold(0f64, |m, &(_, b)| m.max((b as f64).abs()));
    let mut diff = 0f64;
    for (a, b) in pairs {
        if a.is_nan() {
            return f64::INFINITY;
        }
        diff = diff.max((a as f64 - b as f64).abs());
    }
    if scale == 0.0 { diff } else { diff / scale }
}

/// The weights of every convolution of `net`, by name.
fn conv_weights(net: &Network) -> Vec<(String, LayerWeights)> {
    net.layers()
        .iter()
        .filter_map(|l| match &l.op {
            Op::Conv { weight, bias, .. } => Some((
                l.name.clone(),
                LayerWeights::new(&l.name, weight.clone(), bias.clone()).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

/// Runs `steps` training steps of `net` on `gpu` and on the CPU reference (`train_step` and
/// `SgdSolver` at a fixed rate), each step with fresh seeded dropout masks for `dropout`
/// (layer, ratio), and asserts after every step that the loss, every layer's gradients, its
/// momentum and its updated weights agree within `tol`. Returns the trainer's kernels and
/// memory.
fn assert_steps_match_the_reference(
    gpu: &Gpu,
    options: &PlanOptions,
    net: &Network,
    (x, labels): (&Array4<f32>, &Array3<u32>),
    dropout: &[(&str, f32)],
    steps: u64,
    tol: f64,
) -> (Vec<Kernel>, TrainingMemory) {
    let d = x.dim();
    let shape = Shape::new(d.0, d.1, d.2, d.3);
    let hyper = SgdHyper {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0005,
    };
    let mut solver = SgdSolver::new(SgdConfig {
        base_lr: hyper.lr as f64,
        policy: LrPolicy::Fixed,
        momentum: hyper.momentum as f64,
        weight_decay: hyper.weight_decay as f64,
        ..SgdConfig::default()
    })
    .unwrap();
    let mut cpu_net = net.clone();
    let mut gpu_net = net.clone();
    let mut trainer = GpuTrainer::with_options(gpu, net, shape, options).unwrap();
    for iter in 0..steps {
        let masks = Dropout::masks(&cpu_net, shape, dropout, 300 + iter).unwrap();
        let want = train_step(&cpu_net, x.view(), labels.view(), &masks).unwrap();
        solver.step(&mut cpu_net, &want.gradients, iter).unwrap();
        let got = trainer
            .step_with_dropout(x.view(), labels.view(), &masks, &hyper)
            .unwrap();
        assert_eq!(got.valid_pixels, want.valid, "step {iter}");
        assert!(
            (got.loss - want.loss).abs() <= tol * want.loss,
            "step {iter}: loss {} vs {}",
            got.loss,
            want.loss
        );
        let grads = trainer.gradients().unwrap();
        assert_eq!(grads.len(), want.gradients.len());
        for (name, g) in &grads {
            let err = layer_error(g, want.gradients.get(name).unwrap());
            eprintln!("step {iter} {name}: gradient error {err:.2e}");
            if std::env::var("DBG").is_err() {
                assert!(err <= tol, "step {iter} {name}: gradient error {err:e}");
            }
        }
        for (name, m) in trainer.momentum().unwrap() {
            let err = layer_error(&m, solver.momentum(&name).unwrap());
            assert!(err <= tol, "step {iter} {name}: momentum error {err:e}");
        }
        trainer.download_into(&mut gpu_net).unwrap();
        for ((name, got), (_, want)) in conv_weights(&gpu_net).iter().zip(conv_weights(&cpu_net)) {
            let err = layer_error(got, &want);
            assert!(err <= tol, "step {iter} {name}: weight error {err:e}");
        }
    }
    (trainer.kernels(), trainer.memory())
}

/// The width-reduced front-end (widths / 64) for 3 classes, with its final softmax.
fn small_front_end() -> dilated::net::NetworkBuilder {
    FrontEnd {
        classes: 3,
        width_divisor: 64,
        final_layer: "final",
    }
    .builder("fe", 5)
    .unwrap()
}

fn count(kernels: &[Kernel], k: Kernel) -> usize {
    kernels.iter().filter(|&&x| x == k).count()
}

#[test]
fn front_end_steps_with_dropout_match_the_cpu_reference() {
    let gpu = gpu();
    let net = small_front_end().softmax("prob").build().unwrap();
    // 381 x 381 gives 2 x 2 scores (the front-end loses 186 pixels a side, stride 8); the
    // three pools see odd sizes (377, 185, 87: ceil mode clips their last windows).
    let shape = Shape::new(2, 3, 381, 381);
    let out = net.output_shape(shape).unwrap();
    assert_eq!((out.h, out.w), (2, 2));
    let mut r = rng(40);
    let x = random4(&mut r, shape.dims());
    let labels = random_labels(&mut r, (2, 2, 2), 3);
    let (kernels, _) = assert_steps_match_the_reference(
        gpu,
        &PlanOptions::default(),
        &net,
        (&x, &labels),
        &[("fc6", 0.5), ("fc7", 0.5)],
        2,
        2e-5,
    );
    // The step ran on the GPU through the pooling gradient (pool1, pool2, pool3) and dropout
    // on fc6 and fc7 both ways.
    assert_eq!(count(&kernels, Kernel::MaxPoolGrad), 3, "{kernels:?}");
    assert_eq!(count(&kernels, Kernel::MaxPool), 3);
    assert_eq!(count(&kernels, Kernel::Dropout), 4);
    assert_eq!(count(&kernels, Kernel::SoftmaxLoss), 1);
}

#[test]
fn front_end_and_context_steps_match_the_cpu_reference() {
    let gpu = gpu();
    // Joint training: the front-end, then a basic context module ("same" padding), its
    // identity initialisation jittered so every weight matters.
    let mut context = ContextModule::basic(3)
        .dilations(&[1, 2, 1])
        .build()
        .unwrap();
    let mut r = rng(41);
    for (name, w) in conv_weights(&context) {
        let noise = random4(&mut r, w.weight_shape()).mapv(|v| 0.1 * v);
        let b = w.bias.map(|b| {
            let noise = random1(&mut r, b.len()).mapv(|v| 0.1 * v);
            b + &noise
        });
        context.set_weights(&name, w.weight + &noise, b).unwrap();
    }
    let net = small_front_end()
        .append(context)
        .softmax("prob")
        .build()
        .unwrap();
    let shape = Shape::new(1, 3, 397, 397);
    let out = net.output_shape(shape).unwrap();
    assert_eq!((out.c, out.h, out.w), (3, 4, 4));
    let x = random4(&mut r, shape.dims());
    let labels = random_labels(&mut r, (1, 4, 4), 3);
    let (kernels, _) = assert_steps_match_the_reference(
        gpu,
        &PlanOptions::default(),
        &net,
        (&x, &labels),
        &[("fc6", 0.5), ("fc7", 0.5)],
        2,
        2e-5,
    );
    assert_eq!(count(&kernels, Kernel::MaxPoolGrad), 3);
    assert_eq!(count(&kernels, Kernel::Dropout), 4);
}

#[test]
fn a_separate_relu_and_overlapping_pools_train_as_on_the_cpu() {
    let gpu = gpu();
    // conv (no ReLU) -> ReLU -> overlapping pool with padding -> conv -> dropout -> pool ->
    // conv: every kind of layer, dropout on a layer without a fused ReLU.
    let mut r = rng(42);
    let a = Conv2d::new(2, 4, 3).pad(1);
    let b = Conv2d::new(4, 5, 3).dilation(2).with_relu(true);
    let c = Conv2d::new(5, 3, 1);
    let net = Network::builder("mixed", 2)
        .max_pool("pool0", MaxPool2d::caffe(2, 1))
        .conv(
            "a",
            a,
            random4(&mut r, a.weight_shape()),
            Some(random1(&mut r, 4)),
        )
        .relu("relu_a")
        .max_pool(
            "pool_a",
            MaxPool2d::caffe(3, 2).padding(Padding::new(1, 1, 1, 1)),
        )
        .conv(
            "b",
            b,
            random4(&mut r, b.weight_shape()),
            Some(random1(&mut r, 5)),
        )
        .max_pool("pool_b", MaxPool2d::caffe(2, 2))
        .conv(
            "c",
            c,
            random4(&mut r, c.weight_shape()),
            Some(random1(&mut r, 3)),
        )
        .softmax("prob")
        .build()
        .unwrap();
    let shape = Shape::new(2, 2, 24, 21);
    let out = net.output_shape(shape).unwrap();
    let x = random4(&mut r, shape.dims());
    let labels = random_labels(&mut r, (out.n, out.h, out.w), 3);
    let (kernels, _) = assert_steps_match_the_reference(
        gpu,
        &PlanOptions::default(),
        &net,
        (&x, &labels),
        &[("relu_a", 0.25), ("b", 0.5)],
        2,
        1e-5,
    );
    // The pooling before the first convolution needs no gradient.
    assert_eq!(count(&kernels, Kernel::MaxPoolGrad), 2);
    assert_eq!(count(&kernels, Kernel::MaxPool), 3);
    assert_eq!(count(&kernels, Kernel::Dropout), 4);
}

#[test]
fn weights_above_a_capped_binding_train_in_chunks() {
    // fc6-like, on a GPU whose bindings are capped at 64 KiB (about 16,300 floats): fc6's
    // 25,088 weights (and their gradient and momentum) and the 21,600-float batch exceed one
    // binding.
    let mut capped = Gpu::new().unwrap();
    common::check_adapter(&capped);
    capped.set_max_binding_bytes(Some(64 << 10)).unwrap();
    let mut r = rng(43);
    let fc6 = Conv2d::new(8, 64, 7).dilation(4).with_relu(true);
    let fc7 = Conv2d::new(64, 64, 1).with_relu(true);
    let fin = Conv2d::new(64, 3, 1);
    let net = Network::builder("fc", 8)
        .conv(
            "fc6",
            fc6,
            random4(&mut r, fc6.weight_shape()),
            Some(random1(&mut r, 64)),
        )
        .conv(
            "fc7",
            fc7,
            random4(&mut r, fc7.weight_shape()).mapv(|v| 0.2 * v),
            Some(random1(&mut r, 64)),
        )
        .conv(
            "final",
            fin,
            random4(&mut r, fin.weight_shape()).mapv(|v| 0.2 * v),
            Some(random1(&mut r, 3)),
        )
        .softmax("prob")
        .build()
        .unwrap();
    let x = random4(&mut r, [3, 8, 30, 30]);
    let labels = random_labels(&mut r, (3, 6, 6), 3);
    let (kernels, _) = assert_steps_match_the_reference(
        &capped,
        &PlanOptions::default(),
        &net,
        (&x, &labels),
        &[("fc6", 0.5), ("fc7", 0.5)],
        2,
        1e-5,
    );
    // Weight gradients (register-blocked on lavapipe): fc6 in 3 images x 2 chunks of output
    // channels (40 or 41 a window), fc7 and final in one chunk each. Input gradients of fc7
    // and final as convolutions of their flipped weights (fc6, the first layer, needs
    // none). SGD: fc6's weights in 2 chunks, every other buffer in one (3 biases, fc7's and
    // final's weights).
    let weight_grads =
        count(&kernels, Kernel::ConvGradWeight) + count(&kernels, Kernel::ConvGradWeightBlocked);
    assert_eq!(weight_grads, 8, "{kernels:?}");
    assert_eq!(count(&kernels, Kernel::ConvWeightFlip), 2, "{kernels:?}");
    assert_eq!(count(&kernels, Kernel::Sgd), 7);
}

#[test]
fn split_reductions_of_the_tiled_kernel_train_as_on_the_cpu() {
    // The tiled kernel forced (GPUs' choice; lavapipe's is the blocked one): a 3x3 layer of
    // 64 input channels (reduction depth 576) on 2 images of 12 x 12 has 4 output tiles, so
    // its forward pass splits the reduction in 2 and keeps the partial sums in the trainer's
    // scratch: 2 slices x 2 images x 16 channels x 144 pixels.
    let gpu = gpu();
    let mut r = rng(46);
    let a = Conv2d::new(64, 16, 3).pad(1).with_relu(true);
    let b = Conv2d::new(16, 3, 1);
    let net = Network::builder("split", 64)
        .conv(
            "a",
            a,
            random4(&mut r, a.weight_shape()).mapv(|v| 0.2 * v),
            Some(random1(&mut r, 16)),
        )
        .conv(
            "b",
            b,
            random4(&mut r, b.weight_shape()),
            Some(random1(&mut r, 3)),
        )
        .softmax("prob")
        .build()
        .unwrap();
    let shape = Shape::new(2, 64, 12, 12);
    let x = random4(&mut r, shape.dims());
    let labels = random_labels(&mut r, (2, 12, 12), 3);
    let options = PlanOptions {
        algorithm: dilated::ConvAlgorithm::Tiled,
        ..PlanOptions::default()
    };
    let (kernels, memory) = assert_steps_match_the_reference(
        gpu,
        &options,
        &net,
        (&x, &labels),
        &[("a", 0.5)],
        2,
        1e-5,
    );
    assert_eq!(count(&kernels, Kernel::ConvSplitReduce), 1, "{kernels:?}");
    // b's input gradient is the 1x1 convolution of its flipped weights (3 -> 16 channels),
    // never split.
    assert_eq!(count(&kernels, Kernel::ConvTiled), 1);
    assert_eq!(count(&kernels, Kernel::ConvPointwise), 2);
    assert_eq!(count(&kernels, Kernel::ConvWeightFlip), 1);
    let labels_and_losses = 2 * 2 * 144 * 4;
    let mask = (2 * 16 * 144 / 32) * 4;
    let flipped = 16 * 3 * 4;
    assert_eq!(
        memory.scratch,
        labels_and_losses + 2 * 2 * 16 * 144 * 4 + flipped + mask
    );
    assert_eq!(
        GpuTrainer::estimate_memory(&net, shape, &["a"]).unwrap(),
        memory
    );
}

#[test]
fn the_memory_report_adds_up_and_the_budget_is_kept() {
    let gpu = gpu();
    // By hand: input [1, 2, 4, 4] (128 bytes); a: 1x1 to 3 channels with ReLU (192), pool
    // 2x2 (48), b: 1x1 to 2 channels (32). Output gradients alternate from the scores: b and
    // a share a buffer (192), the pool has the other (48); a's gradient before its ReLU
    // another (192). Weights 6 + 3 and 6 + 2 floats; labels and losses 4 pixels each; b's
    // weights flipped for its input gradient (6 floats); a's dropout mask 48 bits in 2 words.
    let mut r = rng(44);
    let a = Conv2d::new(2, 3, 1).with_relu(true);
    let b = Conv2d::new(3, 2, 1);
    let net = Network::builder("tiny", 2)
        .conv(
            "a",
            a,
            random4(&mut r, a.weight_shape()),
            Some(random1(&mut r, 3)),
        )
        .max_pool("pool", MaxPool2d::caffe(2, 2))
        .conv(
            "b",
            b,
            random4(&mut r, b.weight_shape()),
            Some(random1(&mut r, 2)),
        )
        .softmax("prob")
        .build()
        .unwrap();
    let shape = Shape::new(1, 2, 4, 4);
    let want = TrainingMemory {
        activations: 128 + 192 + 48 + 32,
        activation_gradients: 192 + 48 + 192,
        weights: 36 + 32,
        weight_gradients: 36 + 32,
        momentum: 36 + 32,
        scratch: 16 + 16 + 24,
    };
    assert_eq!(GpuTrainer::estimate_memory(&net, shape, &[]).unwrap(), want);
    let with_mask = TrainingMemory {
        scratch: want.scratch + 8,
        ..want
    };
    assert_eq!(
        GpuTrainer::estimate_memory(&net, shape, &["a"]).unwrap(),
        with_mask
    );
    let mut trainer = GpuTrainer::new(gpu, &net, shape).unwrap();
    assert_eq!(trainer.memory(), want);
    let x = random4(&mut r, shape.dims());
    let labels = Array3::from_shape_vec((1, 2, 2), vec![0u32, 1, 255, 1]).unwrap();
    let hyper = SgdHyper {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let masks = Dropout::masks(&net, shape, &[("a", 0.5)], 1).unwrap();
    trainer
        .step_with_dropout(x.view(), labels.view(), &masks, &hyper)
        .unwrap();
    assert_eq!(trainer.memory(), with_mask);
    assert!(trainer.memory().to_string().contains("MiB"));

    // The front-end with dropout: the estimate is what the trainer holds.
    let fe = small_front_end().softmax("prob").build().unwrap();
    let fe_shape = Shape::new(1, 3, 381, 381);
    let fe_want = GpuTrainer::estimate_memory(&fe, fe_shape, &["fc6", "fc7"]).unwrap();
    let mut fe_trainer = GpuTrainer::new(gpu, &fe, fe_shape).unwrap();
    let fe_x = random4(&mut r, fe_shape.dims());
    let fe_labels = random_labels(&mut r, (1, 2, 2), 3);
    let fe_masks = Dropout::masks(&fe, fe_shape, &[("fc6", 0.5), ("fc7", 0.5)], 2).unwrap();
    fe_trainer
        .step_with_dropout(fe_x.view(), fe_labels.view(), &fe_masks, &hyper)
        .unwrap();
    assert_eq!(fe_trainer.memory(), fe_want);

    // A budget a byte short is refused before anything is allocated; one that fits the plan
    // but not the masks refuses the step that needs them, and steps without dropout go on.
    let budget = |bytes: u64| PlanOptions::with_max_memory(bytes);
    let err = GpuTrainer::with_options(gpu, &net, shape, &budget(want.total() - 1)).err();
    assert!(matches!(err, Some(Error::MemoryBudget { .. })), "{err:?}");
    let mut tight = GpuTrainer::with_options(gpu, &net, shape, &budget(want.total())).unwrap();
    let err = tight
        .step_with_dropout(x.view(), labels.view(), &masks, &hyper)
        .err();
    assert!(matches!(err, Some(Error::MemoryBudget { .. })), "{err:?}");
    tight.step(x.view(), labels.view(), &hyper).unwrap();
}

#[test]
fn unsupported_layers_and_bad_dropout_entries_are_errors() {
    let gpu = gpu();
    let mut r = rng(45);
    let a = Conv2d::new(2, 3, 1).with_relu(true);
    let zoomed = Network::builder("zoomed", 2)
        .conv(
            "a",
            a,
            random4(&mut r, a.weight_shape()),
            Some(random1(&mut r, 3)),
        )
        .zoom("zoom", 2)
        .build()
        .unwrap();
    let shape = Shape::new(1, 2, 4, 4);
    let err = GpuTrainer::new(gpu, &zoomed, shape).err();
    assert!(
        matches!(&err, Some(Error::Layer { layer, .. }) if layer == "zoom"),
        "{err:?}"
    );
    let pool_only = Network::builder("pool", 2)
        .max_pool("pool", MaxPool2d::caffe(2, 2))
        .build()
        .unwrap();
    assert!(matches!(
        GpuTrainer::new(gpu, &pool_only, shape).err(),
        Some(Error::InvalidSpec { .. })
    ));

    let net = Network::builder("net", 2)
        .conv(
            "a",
            a,
            random4(&mut r, a.weight_shape()),
            Some(random1(&mut r, 3)),
        )
        .softmax("prob")
        .build()
        .unwrap();
    let mut trainer = GpuTrainer::new(gpu, &net, shape).unwrap();
    let x = random4(&mut r, shape.dims());
    let labels = Array3::from_elem((1, 4, 4), 1u32);
    let hyper = SgdHyper {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let keep = Array4::from_elem((1, 3, 4, 4), true);
    let entry = |layer: &str, ratio: f32, mask: &Array4<bool>| Dropout {
        layer: layer.into(),
        ratio,
        mask: mask.clone(),
    };
    for (what, entries) in [
        ("the final softmax", vec![entry("prob", 0.5, &keep)]),
        ("an unknown layer", vec![entry("b", 0.5, &keep)]),
        (
            "a layer twice",
            vec![entry("a", 0.5, &keep), entry("a", 0.5, &keep)],
        ),
        ("a ratio of 1", vec![entry("a", 1.0, &keep)]),
        (
            "a mask of another shape",
            vec![entry("a", 0.5, &Array4::from_elem((1, 3, 4, 5), true))],
        ),
    ] {
        let err = trainer
            .step_with_dropout(x.view(), labels.view(), &entries, &hyper)
            .err();
        assert!(matches!(err, Some(Error::Layer { .. })), "{what}: {err:?}");
    }
    // Labels of the wrong shape, a batch of the wrong shape.
    let err = trainer
        .step(x.view(), Array3::from_elem((1, 4, 3), 1u32).view(), &hyper)
        .err();
    assert!(matches!(err, Some(Error::ShapeMismatch { .. })), "{err:?}");
    let err = trainer
        .step(random4(&mut r, [1, 2, 4, 5]).view(), labels.view(), &hyper)
        .err();
    assert!(matches!(err, Some(Error::ShapeMismatch { .. })), "{err:?}");
    // After the errors the trainer still steps, and drops out as asked.
    let masks = Dropout::masks(&net, shape, &[("a", 0.5)], 3).unwrap();
    trainer
        .step_with_dropout(x.view(), labels.view(), &masks, &hyper)
        .unwrap();
}
