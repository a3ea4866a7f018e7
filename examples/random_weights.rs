//! Writes a preset's seeded random weights (He / identity initialisation, meaningless labels)
//! to a safetensors file: weights to try `dilated segment` and the web page with, and the
//! browser tests' fixture (`web/test.sh`).
//!
//!     cargo run --release --example random_weights -- OUT.safetensors MODEL WIDTH_DIVISOR SEED

use dilated::net::{Model, PresetOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, model, divisor, seed] = args.as_slice() else {
        return Err("usage: random_weights OUT.safetensors MODEL WIDTH_DIVISOR SEED".into());
    };
    let model = Model::from_name(model)?;
    let network = model.build(&PresetOptions {
        width_divisor: divisor.parse()?,
        seed: seed.parse()?,
        ..Default::default()
    })?;
    dilated::weights::write_safetensors(path, &network.weight_set()?)?;
    println!(
        "wrote {path} ({}, widths / {divisor}, seed {seed}, {} parameters)",
        model.name(),
        network.params()
    );
    Ok(())
}
