//! The networks and inputs the commands run: presets built from the shared flags, with
//! weights loaded from a file, and generated image-like inputs.

use std::path::Path;

use dilated::net::{Model, Network, Op, PresetOptions};
use dilated::weights::WeightSet;
use dilated::{Error, Shape};
use ndarray::Array4;

use super::args::ModelArgs;
use super::report::warn_non_finite;

/// Builds the preset `args` name with initial weights drawn from `seed`.
pub fn build(args: &ModelArgs, seed: u64) -> Result<(Model, Network), Error> {
    let model = Model::from_name(&args.model)?;
    let net = model.build(&PresetOptions {
        width_divisor: args.width_divisor,
        seed,
        ..Default::default()
    })?;
    Ok((model, net))
}

/// Builds the preset `args` name and loads `weights` into it when given, warning about NaN or
/// infinite weights.
pub fn load(args: &ModelArgs, weights: Option<&Path>) -> Result<(Model, Network), Error> {
    let (model, mut net) = build(args, PresetOptions::default().seed)?;
    if let Some(path) = weights {
        net.load_weights(&WeightSet::load(path)?)?;
        for layer in net.layers() {
            let what = || format!("{}: the weights of layer {}", path.display(), layer.name);
            match &layer.op {
                Op::Conv { weight, bias, .. } => {
                    warn_non_finite(&what(), weight.iter().chain(bias.iter().flatten()).copied())
                }
                Op::Deconv { weight, .. } => warn_non_finite(&what(), weight.iter().copied()),
                _ => {}
            }
        }
    }
    Ok((model, net))
}

/// A deterministic image-like input: smooth gradients plus seeded noise, in the 0..255 range
/// minus a mean, as the models expect.
pub fn generated_input(shape: Shape, seed: u64) -> Array4<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array4::from_shape_fn(shape.dims(), |(_, c, y, x)| {
        let base = 127.0 * ((y as f32 / 37.0 + c as f32).sin() * (x as f32 / 53.0).cos());
        base + rng.random_range(-20.0..20.0)
    })
}
