//! Draws a training curve written by `dilated train ... --log curve.csv` as a PNG: the
//! training loss per iteration (and its running mean) and the test loss on the left, the
//! test mean IoU and pixel accuracy on the right, with the first test pass (the starting
//! weights: the identity initialisation for the context module) as a dashed line.
//!
//! ```text
//! cargo run --release --example training_curve -- curve.csv curve.png ["title"]
//! ```

use dilated::io::figure::{BLACK, Canvas, Colour, Font, GREY, Panel, WHITE};

/// One row of the curve: an iteration with the batch's loss, or a test pass.
enum Row {
    Step {
        iter: f64,
        loss: f64,
    },
    Test {
        iter: f64,
        loss: f64,
        miou: f64,
        accuracy: f64,
    },
}

fn parse(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 6 {
            return Err(format!(
                "line {}: expected 6 fields, got {}",
                n + 1,
                f.len()
            ));
        }
        let num = |s: &str| -> Result<f64, String> {
            s.parse::<f64>()
                .map_err(|e| format!("line {}: {s:?}: {e}", n + 1))
        };
        let iter = num(f[0])?;
        rows.push(if f[1].is_empty() {
            Row::Test {
                iter,
                loss: num(f[3])?,
                miou: num(f[4])? * 100.0,
                accuracy: num(f[5])? * 100.0,
            }
        } else {
            Row::Step {
                iter,
                loss: num(f[1])?,
            }
        });
    }
    Ok(rows)
}

/// About five round tick values covering `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 {
        out.push(v);
        v += step;
    }
    out
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Axes with ticks and numbers, and the panel's title and axis names.
fn axes(canvas: &mut Canvas, p: &Panel, title: &str, x_name: &str, y_name: &str) {
    let (x, y, w, h) = p.area;
    p.frame(canvas, GREY);
    let (x_lo, x_hi) = p.x_range;
    let (y_lo, y_hi) = (p.y_range.1, p.y_range.0);
    for t in ticks(x_lo, x_hi) {
        let (cx, _) = p.to_canvas(t, y_lo);
        let cx = cx.round() as i32;
        canvas.line((cx, y + h as i32), (cx, y + h as i32 + 4), GREY, 1);
        canvas.text(&label(t), (cx, y + h as i32 + 6), Font::Small, BLACK, true);
    }
    for t in ticks(y_lo, y_hi) {
        let (_, cy) = p.to_canvas(x_lo, t);
        let cy = cy.round() as i32;
        canvas.line((x - 5, cy), (x - 1, cy), GREY, 1);
        for gx in (x..x + w as i32).step_by(4) {
            canvas.put(gx, cy, [225, 225, 225]);
        }
        let s = label(t);
        let tw = Font::Small.width(&s) as i32;
        canvas.text(&s, (x - 8 - tw, cy - 6), Font::Small, BLACK, false);
    }
    canvas.text(title, (x + w as i32 / 2, y - 22), Font::Bold, BLACK, true);
    canvas.text(
        x_name,
        (x + w as i32 / 2, y + h as i32 + 22),
        Font::Small,
        BLACK,
        true,
    );
    canvas.text(y_name, (x, y - 8 - 13), Font::Small, GREY, false);
}

fn dashed(canvas: &mut Canvas, p: &Panel, y: f64, colour: Colour) {
    let (x0, x1) = p.x_range;
    let (_, cy) = p.to_canvas(x0, y);
    let (l, r) = (p.to_canvas(x0, y).0 as i32, p.to_canvas(x1, y).0 as i32);
    for x in (l..r).step_by(8) {
        canvas.line(
            (x, cy.round() as i32),
            ((x + 4).min(r), cy.round() as i32),
            colour,
            2,
        );
    }
}

fn legend(canvas: &mut Canvas, at: (i32, i32), items: &[(&str, Colour)]) {
    for (i, (name, colour)) in items.iter().enumerate() {
        let y = at.1 + 16 * i as i32;
        canvas.line((at.0, y + 6), (at.0 + 18, y + 6), *colour, 3);
        canvas.text(name, (at.0 + 24, y), Font::Small, BLACK, false);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: training_curve <curve.csv> <out.png> [title]");
        std::process::exit(2);
    }
    let rows = parse(&std::fs::read_to_string(&args[0])?)?;
    let title = args.get(2).map_or("Training curve", String::as_str);
    let steps: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| match *r {
            Row::Step { iter, loss } => Some((iter, loss)),
            Row::Test { .. } => None,
        })
        .collect();
    let tests: Vec<(f64, f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| match *r {
            Row::Test {
                iter,
                loss,
                miou,
                accuracy,
            } => Some((iter, loss, miou, accuracy)),
            Row::Step { .. } => None,
        })
        .collect();
    if steps.is_empty() || tests.is_empty() {
        return Err(
            "the curve needs training rows and test rows (train with --test-interval)".into(),
        );
    }
    let last = steps
        .iter()
        .map(|p| p.0 + 1.0)
        .chain(tests.iter().map(|t| t.0))
        .fold(1.0, f64::max);
    // Running mean of the batch losses over 20 iterations.
    let mean: Vec<(f64, f64)> = steps
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let from = i.saturating_sub(19);
            let window = &steps[from..=i];
            (
                x,
                window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64,
            )
        })
        .collect();
    let loss_max = steps
        .iter()
        .map(|p| p.1)
        .chain(tests.iter().map(|t| t.1))
        .fold(0.0, f64::max)
        * 1.05;
    let (width, height) = (1000u32, 420u32);
    let mut canvas = Canvas::new(width, height, WHITE);
    canvas.text(title, (width as i32 / 2, 10), Font::Large, BLACK, true);
    let left = Panel::new((70, 80, 380, 270), (0.0, last), (0.0, loss_max));
    axes(&mut canvas, &left, "Loss", "iteration", "cross-entropy");
    left.polyline(&mut canvas, &steps, [170, 190, 230], 1);
    left.polyline(&mut canvas, &mean, [30, 80, 200], 2);
    let test_loss: Vec<(f64, f64)> = tests.iter().map(|t| (t.0, t.1)).collect();
    left.polyline(&mut canvas, &test_loss, [220, 90, 20], 2);
    legend(
        &mut canvas,
        (left.area.0 + 180, left.area.1 + 8),
        &[
            ("batch loss", [170, 190, 230]),
            ("running mean (20)", [30, 80, 200]),
            ("test loss", [220, 90, 20]),
        ],
    );
    let right = Panel::new((580, 80, 380, 270), (0.0, last), (0.0, 100.0));
    axes(&mut canvas, &right, "Test set", "iteration", "percent");
    let miou: Vec<(f64, f64)> = tests.iter().map(|t| (t.0, t.2)).collect();
    let acc: Vec<(f64, f64)> = tests.iter().map(|t| (t.0, t.3)).collect();
    dashed(&mut canvas, &right, tests[0].2, [150, 150, 150]);
    right.polyline(&mut canvas, &acc, [60, 160, 60], 2);
    right.polyline(&mut canvas, &miou, [200, 30, 60], 3);
    let (first, end) = (tests[0], tests[tests.len() - 1]);
    legend(
        &mut canvas,
        (right.area.0 + 150, right.area.1 + 150),
        &[
            ("mean IoU", [200, 30, 60]),
            ("pixel accuracy", [60, 160, 60]),
            ("mean IoU at the start", [150, 150, 150]),
        ],
    );
    canvas.text(
        &format!(
            "mIoU {:.2}% at iteration {:.0} -> {:.2}% at iteration {:.0}; test loss {:.3} -> {:.3}",
            first.2, first.0, end.2, end.0, first.1, end.1
        ),
        (width as i32 / 2, height as i32 - 24),
        Font::Small,
        BLACK,
        true,
    );
    canvas.save(&args[1])?;
    println!("wrote {}", args[1]);
    Ok(())
}
