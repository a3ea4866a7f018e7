//! SGD with momentum as Caffe updates, written out by hand; the learning-rate policies at
//! several iterations; errors leave the network unchanged; the momentum state survives a save
//! and load.

use dilated::net::Network;
use dilated::train::{Gradients, LrPolicy, ParamMults, SgdConfig, SgdSolver};
use dilated::{Conv2d, Error};
use ndarray::{Array1, Array4, array};

/// One 1x1 convolution from 1 to 2 channels: weights [1, -2], bias [0.5, 0.25].
fn tiny_net() -> Network {
    Network::builder("tiny", 1)
        .conv(
            "fc",
            Conv2d::new(1, 2, 1),
            Array4::from_shape_vec((2, 1, 1, 1), vec![1.0, -2.0]).unwrap(),
            Some(array![0.5, 0.25]),
        )
        .build()
        .unwrap()
}

fn tiny_grads() -> Gradients {
    let mut g = Gradients::new();
    g.insert(
        "fc",
        Array4::from_shape_vec((2, 1, 1, 1), vec![0.2, 0.4]).unwrap(),
        Some(array![1.0, -0.5]),
    )
    .unwrap();
    g
}

fn params(net: &Network, name: &str) -> (Vec<f32>, Vec<f32>) {
    let set = net.weight_set().unwrap();
    let l = set.get(name).unwrap();
    (
        l.weight.iter().copied().collect(),
        l.bias.as_ref().unwrap().iter().copied().collect(),
    )
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*g as f64 - w).abs() < 1e-6,
            "{what}: got {got:?}, want {want:?}"
        );
    }
}

fn config() -> SgdConfig {
    SgdConfig {
        base_lr: 0.1,
        policy: LrPolicy::Fixed,
        momentum: 0.9,
        weight_decay: 0.01,
        ..SgdConfig::default()
    }
}

#[test]
fn two_steps_with_momentum_and_weight_decay_match_the_hand_computed_update() {
    let mut net = tiny_net();
    let mut solver = SgdSolver::new(config()).unwrap();
    let g = tiny_grads();
    assert_eq!(solver.step(&mut net, &g, 0).unwrap(), 0.1);
    // Step 0, v = 0. Weights (lr_mult 1, decay_mult 1):
    //   v = 0.1 * (g + 0.01 * w) = 0.1 * (0.2 + 0.01) = 0.021,  0.1 * (0.4 - 0.02) = 0.038
    //   w = [1 - 0.021, -2 - 0.038] = [0.979, -2.038]
    // Biases (lr_mult 2, decay_mult 0):
    //   v = 0.2 * g = [0.2, -0.1];  b = [0.5 - 0.2, 0.25 + 0.1] = [0.3, 0.35]
    let (w, b) = params(&net, "fc");
    close(&w, &[0.979, -2.038], "weights after step 0");
    close(&b, &[0.3, 0.35], "biases after step 0");
    solver.step(&mut net, &g, 1).unwrap();
    // Step 1, same gradients:
    //   v = 0.9 * 0.021 + 0.1 * (0.2 + 0.01 * 0.979)   = 0.0189 + 0.020979 = 0.039879
    //   v = 0.9 * 0.038 + 0.1 * (0.4 + 0.01 * -2.038)  = 0.0342 + 0.037962 = 0.072162
    //   w = [0.979 - 0.039879, -2.038 - 0.072162] = [0.939121, -2.110162]
    //   bias v = 0.9 * [0.2, -0.1] + 0.2 * [1, -0.5] = [0.38, -0.19]
    //   b = [0.3 - 0.38, 0.35 + 0.19] = [-0.08, 0.54]
    let (w, b) = params(&net, "fc");
    close(&w, &[0.939121, -2.110162], "weights after step 1");
    close(&b, &[-0.08, 0.54], "biases after step 1");
    let m = solver.momentum("fc").unwrap();
    close(
        &m.weight.iter().copied().collect::<Vec<_>>(),
        &[0.039879, 0.072162],
        "momentum",
    );
    close(
        &m.bias.as_ref().unwrap().to_vec(),
        &[0.38, -0.19],
        "bias momentum",
    );
}

#[test]
fn multipliers_are_configurable() {
    // Frozen biases (lr_mult 0) and decayed biases (decay_mult 1, lr_mult 1), no momentum:
    // b = 0.5 - 0.1 * (1 + 0.01 * 0.5) = 0.3995 when decayed.
    let mut net = tiny_net();
    let frozen = SgdConfig {
        bias: ParamMults {
            lr_mult: 0.0,
            decay_mult: 0.0,
        },
        ..config()
    };
    SgdSolver::new(frozen)
        .unwrap()
        .step(&mut net, &tiny_grads(), 0)
        .unwrap();
    close(&params(&net, "fc").1, &[0.5, 0.25], "frozen biases");
    let mut net = tiny_net();
    let decayed = SgdConfig {
        bias: ParamMults {
            lr_mult: 1.0,
            decay_mult: 1.0,
        },
        ..config()
    };
    SgdSolver::new(decayed)
        .unwrap()
        .step(&mut net, &tiny_grads(), 0)
        .unwrap();
    // 0.25 - 0.1 * (-0.5 + 0.01 * 0.25) = 0.25 + 0.04975 = 0.29975
    close(&params(&net, "fc").1, &[0.3995, 0.29975], "decayed biases");
}

#[test]
fn learning_rate_policies_at_several_iterations() {
    let step = LrPolicy::Step {
        gamma: 0.1,
        stepsize: 100_000,
    };
    for (iter, want) in [
        (0, 1e-3),
        (99_999, 1e-3),
        (100_000, 1e-4),
        (250_000, 1e-5),
        (399_999, 1e-6),
    ] {
        let got = step.rate(1e-3, iter);
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "step at {iter}: {got} want {want}"
        );
    }
    assert_eq!(LrPolicy::Fixed.rate(0.01, 12_345), 0.01);
    // poly: 0.01 * (1 - iter / 1000) ^ 0.9; 0.5^0.9 = 0.5358867312681466,
    // 0.75^0.9 = 0.7718895067235705.
    let poly = LrPolicy::Poly {
        power: 0.9,
        max_iter: 1000,
    };
    for (iter, want) in [
        (0, 0.01),
        (250, 0.007718895067235705),
        (500, 0.005358867312681466),
        (1000, 0.0),
        (1500, 0.0),
    ] {
        let got = poly.rate(0.01, iter);
        assert!(
            (got - want).abs() < 1e-15,
            "poly at {iter}: {got} want {want}"
        );
    }
    let linear = LrPolicy::Poly {
        power: 1.0,
        max_iter: 1000,
    };
    assert!((linear.rate(0.01, 250) - 0.0075).abs() < 1e-15);
    let square = LrPolicy::Poly {
        power: 2.0,
        max_iter: 1000,
    };
    assert!((square.rate(0.01, 900) - 1e-4).abs() < 1e-15);
    // The solver uses the policy's rate at the iteration given.
    let solver = SgdSolver::new(SgdConfig {
        policy: step,
        ..SgdConfig::default()
    })
    .unwrap();
    assert!((solver.learning_rate(200_000) - 1e-5).abs() < 1e-18);
    assert!(
        SgdSolver::new(SgdConfig {
            policy: LrPolicy::Step {
                gamma: 0.1,
                stepsize: 0
            },
            ..SgdConfig::default()
        })
        .is_err()
    );
    assert!(
        SgdSolver::new(SgdConfig {
            base_lr: f64::NAN,
            ..SgdConfig::default()
        })
        .is_err()
    );
}

#[test]
fn bad_gradients_are_errors_and_change_nothing() {
    let mut net = Network::builder("two", 1)
        .conv(
            "a",
            Conv2d::new(1, 2, 1),
            Array4::ones((2, 1, 1, 1)),
            Some(Array1::zeros(2)),
        )
        .conv(
            "b",
            Conv2d::new(2, 1, 1).with_bias(false),
            Array4::ones((1, 2, 1, 1)),
            None,
        )
        .build()
        .unwrap();
    let before = net.weight_set().unwrap();
    let mut solver = SgdSolver::new(config()).unwrap();
    // "a" is fine, "b" has the wrong shape: neither is applied.
    let mut g = Gradients::new();
    g.insert("a", Array4::ones((2, 1, 1, 1)), Some(Array1::ones(2)))
        .unwrap();
    g.insert("b", Array4::ones((1, 2, 3, 1)), None).unwrap();
    assert!(matches!(
        solver.step(&mut net, &g, 0),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut g = Gradients::new();
    g.insert("a", Array4::ones((2, 1, 1, 1)), Some(Array1::ones(2)))
        .unwrap();
    g.insert("b", Array4::ones((1, 2, 1, 1)), Some(Array1::ones(1)))
        .unwrap();
    assert!(matches!(
        solver.step(&mut net, &g, 0),
        Err(Error::Layer { .. })
    ));
    let mut g = Gradients::new();
    g.insert("a", Array4::ones((2, 1, 1, 1)), None).unwrap();
    assert!(matches!(
        solver.step(&mut net, &g, 0),
        Err(Error::Layer { .. })
    ));
    let mut g = Gradients::new();
    g.insert("nope", Array4::ones((2, 1, 1, 1)), None).unwrap();
    assert!(matches!(
        solver.step(&mut net, &g, 0),
        Err(Error::Layer { .. })
    ));
    assert_eq!(net.weight_set().unwrap(), before);
    assert!(solver.momentum("a").is_none());
    // A bias gradient of the wrong length cannot even be built.
    assert!(
        Gradients::new()
            .insert("a", Array4::ones((2, 1, 1, 1)), Some(Array1::ones(3)))
            .is_err()
    );
}

#[test]
fn momentum_state_round_trips_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("solver.safetensors");
    let g = tiny_grads();
    let mut net = tiny_net();
    let mut solver = SgdSolver::new(config()).unwrap();
    solver.step(&mut net, &g, 0).unwrap();
    solver.save_state(&path, 1).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort_unstable();
    assert_eq!(names, ["fc.bias.momentum", "fc.weight.momentum"]);

    let mut resumed = SgdSolver::new(config()).unwrap();
    assert_eq!(resumed.load_state(&path).unwrap(), 1);
    assert_eq!(resumed.momentum("fc"), solver.momentum("fc"));
    let mut net2 = net.clone();
    solver.step(&mut net, &g, 1).unwrap();
    resumed.step(&mut net2, &g, 1).unwrap();
    assert_eq!(net.weight_set().unwrap(), net2.weight_set().unwrap());

    // Weights are not a solver state; a state for other shapes fails at the step.
    let weights = dir.path().join("w.safetensors");
    dilated::weights::write_safetensors(&weights, &net.weight_set().unwrap()).unwrap();
    assert!(matches!(
        resumed.load_state(&weights),
        Err(Error::InvalidFile { .. })
    ));
    assert!(matches!(
        resumed.load_state_bytes(b"garbage"),
        Err(Error::InvalidFile { .. })
    ));
    let mut other = SgdSolver::new(config()).unwrap();
    let mut wide = Network::builder("wide", 1)
        .conv(
            "fc",
            Conv2d::new(1, 3, 1),
            Array4::ones((3, 1, 1, 1)),
            Some(Array1::zeros(3)),
        )
        .build()
        .unwrap();
    other
        .load_state_bytes(&solver.state_bytes(2).unwrap())
        .unwrap();
    let mut g3 = Gradients::new();
    g3.insert("fc", Array4::ones((3, 1, 1, 1)), Some(Array1::ones(3)))
        .unwrap();
    assert!(matches!(
        other.step(&mut wide, &g3, 2),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn gradients_accumulate_and_scale() {
    let mut sum = tiny_grads();
    sum.accumulate(&tiny_grads()).unwrap();
    sum.scale(0.5);
    assert_eq!(sum, tiny_grads());
    let mut wrong = Gradients::new();
    wrong
        .insert("fc", Array4::ones((3, 1, 1, 1)), None)
        .unwrap();
    assert!(sum.accumulate(&wrong).is_err());
    assert_eq!(sum, tiny_grads());
}
