//! `dilated convert`: weights between .caffemodel and .safetensors, checked against a preset.

use std::path::PathBuf;

use dilated::Error;
use dilated::weights::{WeightSet, write_caffemodel, write_safetensors};

use super::args::ModelArgs;
use super::network;

/// Arguments of `dilated convert`.
#[derive(clap::Args)]
#[command(
    mut_arg("model", |a| a.help("Preset the weights must fit")),
    mut_arg("width_divisor", |a| a.help("Width divisor of the preset the weights belong to")),
)]
pub struct ConvertArgs {
    /// Input weights (.caffemodel or .safetensors).
    pub input: PathBuf,
    /// Output weights (.safetensors or .caffemodel).
    pub output: PathBuf,
    /// The preset the weights belong to.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Reads the input weights, checks them against the preset and writes them in the format the
/// output's extension names.
pub fn execute(args: &ConvertArgs) -> Result<(), Error> {
    let set = WeightSet::load(&args.input)?;
    let (model, net) = network::load(&args.model, None)?;
    set.check(&net.required_weights())?;
    match args.output.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => write_safetensors(&args.output, &set)?,
        Some("caffemodel") => write_caffemodel(&args.output, &set, false)?,
        _ => {
            return Err(Error::Weights(format!(
                "{}: the output must end in .safetensors or .caffemodel",
                args.output.display()
            )));
        }
    }
    println!(
        "wrote {} ({} layers, {:.2} M parameters, checked against {})",
        args.output.display(),
        set.len(),
        set.num_parameters() as f64 / 1e6,
        model.name()
    );
    Ok(())
}
