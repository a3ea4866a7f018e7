//! `dilated receptive-field`: the theoretical and effective receptive fields of a model's
//! centre output pixel, for the front-end, the context module and both, drawn side by side.

use std::path::PathBuf;
use std::time::Instant;

use clap::ValueEnum;
use dilated::Error;
use dilated::io::figure::{BLACK, Canvas, Colour, Font, GREY, Panel, Scale, WHITE};
use dilated::io::write_file;
use dilated::net::Model;
use dilated::train::receptive::{
    EffectiveField, Field, FieldOptions, ModelFields, Part, model_fields, model_fields_flops,
    random_weights,
};

use super::args::ModelArgs;
use super::network;

/// The colour scales of the heatmaps.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScaleArg {
    /// |gradient| / max.
    Linear,
    /// sqrt(|gradient| / max): the tails show more.
    Sqrt,
    /// log10(|gradient| / max) over 4 decades: the whole support shows.
    Log,
}

impl ScaleArg {
    fn scale(self) -> Scale {
        match self {
            ScaleArg::Linear => Scale::Linear,
            ScaleArg::Sqrt => Scale::Sqrt,
            ScaleArg::Log => Scale::Log(4.0),
        }
    }
}

/// Arguments of `dilated receptive-field`.
#[derive(clap::Args)]
#[command(after_long_help = COST)]
pub struct ReceptiveFieldArgs {
    /// The preset.
    #[arg(long)]
    pub model: String,
    /// Weights (.caffemodel or .safetensors); without them every convolution gets random
    /// weights (He initialisation, zero bias), as Luo et al. use.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Divides every front-end width by this. Default: 32 (64 for dilation10_cityscapes)
    /// without --weights, 1 (the released size) with them. The time grows with the square of
    /// the widths: at 1 it takes hours (see --help).
    #[arg(long)]
    pub width_divisor: Option<usize>,
    /// Seed of the random weights and of the random input (uniform noise pixels).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Feature pixels (8 input pixels each) of input around the theoretical field, where the
    /// gradient must be 0.
    #[arg(long, default_value_t = 2)]
    pub margin: usize,
    /// Colour scale of the heatmaps.
    #[arg(long, value_enum, default_value_t = ScaleArg::Sqrt)]
    pub scale: ScaleArg,
    /// The figure (PNG).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Also write the numbers as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The cost note at the end of `--help`.
const COST: &str = "\
The gradients come from the CPU training reference (f64 loops): one forward and one backward \
pass of the front-end and the context module, unpadded, on an input holding the whole field \
(940x940 pixels for dilation8_pascal_voc and dilation8_camvid, 684x684 for dilation7_kitti, \
2476x2476 for dilation10_cityscapes), and of the front-end on a 412x412 crop (with the default \
margin); the command prints the arithmetic before it starts. The reference does about 0.45 \
GFLOP/s per core. At the default divisors: dilation7_kitti 1.6 GFLOP (measured: 3.7 s of CPU \
time), dilation8_camvid 4 GFLOP (9 s), dilation8_pascal_voc 10 GFLOP (23 s; its large context \
module is 6.4 GFLOP at any divisor), dilation10_cityscapes 16 GFLOP (38 s): on 2 free cores \
about 2, 5, 12 and 20 s. Each halving of the divisor roughly quadruples the front-end's share. \
At --width-divisor 1 (the released widths, which the released weights need): 1500, 3800, 3800 \
and 42000 GFLOP, about 30 minutes, 70 minutes, 70 minutes and 13 hours on 2 cores.";

/// Panel side on the figure, in pixels.
const PANEL: u32 = 360;
/// Gap between and around panels.
const GAP: u32 = 24;
/// The theoretical field's outline.
const FIELD_COLOUR: Colour = [0, 230, 255];
/// The front-end's field inside the whole one.
const FRONT_END_COLOUR: Colour = [90, 230, 90];

/// Computes the fields, draws them and writes the figure (and the JSON).
pub fn execute(args: &ReceptiveFieldArgs) -> Result<(), Error> {
    let model = Model::from_name(&args.model)?;
    let default_divisor = match (&args.weights, model) {
        (Some(_), _) => 1,
        (None, Model::Cityscapes) => 64,
        (None, _) => 32,
    };
    let width_divisor = args.width_divisor.unwrap_or(default_divisor);
    let model_args = ModelArgs {
        model: args.model.clone(),
        width_divisor,
    };
    let (_, net) = network::load(&model_args, args.weights.as_deref())?;
    let net = match &args.weights {
        Some(_) => net,
        None => random_weights(&net, args.seed)?,
    };
    let weights = match &args.weights {
        Some(w) => format!("weights {}", w.display()),
        None => format!("random weights (He initialisation, seed {})", args.seed),
    };
    let options = FieldOptions {
        margin: args.margin,
        seed: args.seed,
    };
    println!(
        "receptive fields of {} (front-end widths / {width_divisor}, {weights}): {:.1} GFLOP \
         on the CPU reference...",
        model.name(),
        model_fields_flops(model, &net, &options)? as f64 / 1e9
    );
    let started = Instant::now();
    let fields = model_fields(model, &net, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    let scale = args.scale.scale();
    let subtitle = format!(
        "{weights}, front-end widths / {width_divisor}, random input (seed {}); colour: {} \
         of v = |d out / d input| summed over channels",
        args.seed,
        scale.describe()
    );
    let figure = draw(model, &fields, &subtitle, scale);
    figure.save(&args.output)?;
    for part in PARTS {
        let f = fields.part(part);
        let s = stats(f);
        println!(
            "  {:<20} theoretical {} x {} {} px; 50% of the gradient within {}, 90% within {}",
            part.name(),
            f.theoretical.height,
            f.theoretical.width,
            part.unit(),
            side(s.erf50),
            side(s.erf90)
        );
    }
    println!("wrote {} in {seconds:.1} s", args.output.display());
    if let Some(path) = &args.json {
        let parts: Vec<serde_json::Value> = PARTS
            .iter()
            .map(|&p| part_json(p, fields.part(p)))
            .collect();
        let value = serde_json::json!({
            "model": model.name(),
            "width_divisor": width_divisor,
            "weights": args.weights.as_ref().map(|w| w.display().to_string()),
            "random_weights": args.weights.is_none(),
            "seed": args.seed,
            "margin": args.margin,
            "stride": fields.stride,
            "scale": scale.describe(),
            "seconds": seconds,
            "front_end_in_whole": field_json(&fields.front_end_in_whole),
            "parts": parts,
        });
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| Error::Internal(format!("JSON of the fields: {e}")))?;
        write_file(path, format!("{text}\n").as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

const PARTS: [Part; 3] = [Part::FrontEnd, Part::Context, Part::Whole];

/// The figures of one field.
struct Stats {
    erf50: Option<Field>,
    erf90: Option<Field>,
    support: Option<Field>,
    inside: f64,
}

fn stats(f: &EffectiveField) -> Stats {
    Stats {
        erf50: f.centred_square(0.5),
        erf90: f.centred_square(0.9),
        support: f.support(),
        inside: f.fraction_inside(&f.theoretical),
    }
}

fn side(f: Option<Field>) -> String {
    f.map_or("-".into(), |f| format!("{} x {}", f.height, f.width))
}

fn field_json(f: &Field) -> serde_json::Value {
    serde_json::json!({"top": f.top, "left": f.left, "height": f.height, "width": f.width})
}

fn part_json(part: Part, f: &EffectiveField) -> serde_json::Value {
    let s = stats(f);
    let (h, w) = f.map.dim();
    serde_json::json!({
        "part": part.name(),
        "unit": format!("{} pixels", part.unit()),
        "map_size": [h, w],
        "output_pixel": [f.pixel.0, f.pixel.1],
        "theoretical": field_json(&f.theoretical),
        "support": s.support.as_ref().map(field_json),
        "gradient_inside_theoretical": s.inside,
        "erf_50_square": s.erf50.map(|f| f.height),
        "erf_90_square": s.erf90.map(|f| f.height),
        "erf_90_of_theoretical_side": s.erf90.map(|e| e.height as f64 / f.theoretical.height as f64),
    })
}

/// The three panels side by side, with titles, captions and a colour bar.
fn draw(model: Model, fields: &ModelFields, subtitle: &str, scale: Scale) -> Canvas {
    let width = 3 * PANEL + 4 * GAP;
    let title_h = Font::Large.line_height() + 6 + Font::Small.line_height() + 14;
    let panel_top = title_h + Font::Bold.line_height() + 8;
    let caption_lines = 5;
    let captions_h = caption_lines * (Font::Small.line_height() + 2);
    let height = panel_top + PANEL + 10 + captions_h + 40;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(
        &format!(
            "{}: receptive fields of the centre output pixel",
            model.name()
        ),
        (GAP as i32, 8),
        Font::Large,
        BLACK,
        false,
    );
    c.text(
        subtitle,
        (GAP as i32, 8 + Font::Large.line_height() as i32 + 6),
        Font::Small,
        GREY,
        false,
    );
    for (i, part) in PARTS.into_iter().enumerate() {
        let f = fields.part(part);
        let x = (GAP + i as u32 * (PANEL + GAP)) as i32;
        let centre = x + PANEL as i32 / 2;
        c.text(
            &format!("{} ({} pixels)", part.name(), part.unit()),
            (centre, title_h as i32),
            Font::Bold,
            BLACK,
            true,
        );
        let panel = Panel::image(&f.map, (x, panel_top as i32, PANEL, PANEL));
        panel.heatmap(&mut c, &f.map, scale);
        panel.frame(&mut c, GREY);
        let t = f.theoretical;
        panel.rectangle(
            &mut c,
            (t.top as f64, t.left as f64),
            (t.height as f64, t.width as f64),
            FIELD_COLOUR,
            2,
        );
        let s = stats(f);
        let (h, w) = f.map.dim();
        let mut lines = vec![
            format!(
                "map {h} x {w} {} px, shown at {:.2}x",
                part.unit(),
                panel.zoom()
            ),
            format!("theoretical field {} x {} px (cyan)", t.height, t.width),
            format!("50% of the gradient in the centred {}", side(s.erf50)),
            format!(
                "90% in {}{}",
                side(s.erf90),
                s.erf90.map_or(String::new(), |e| format!(
                    " = {:.2} of the side",
                    e.height as f64 / t.height as f64
                ))
            ),
        ];
        if part == Part::Whole {
            let fe = fields.front_end_in_whole;
            panel.rectangle(
                &mut c,
                (fe.top as f64, fe.left as f64),
                (fe.height as f64, fe.width as f64),
                FRONT_END_COLOUR,
                1,
            );
            lines.push(format!(
                "green: the front-end's field, {} x {}",
                fe.height, fe.width
            ));
        }
        let mut y = (panel_top + PANEL + 10) as i32;
        for line in lines {
            c.text(&line, (x, y), Font::Small, BLACK, false);
            y += Font::Small.line_height() as i32 + 2;
        }
    }
    let bar_y = (height - 30) as i32;
    c.colour_bar((GAP as i32, bar_y, 240, 10), "0", "max");
    c.text(
        &format!("colour: {}", scale.describe()),
        (GAP as i32 + 256, bar_y - 1),
        Font::Small,
        BLACK,
        false,
    );
    c
}
