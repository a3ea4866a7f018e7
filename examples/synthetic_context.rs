//! Writes a small synthetic dataset for `dilated train context`: scores that a context module
//! must look around to label correctly.
//!
//! The task is `dilated::train::synthetic::context_item`'s: rectangles of object classes whose
//! class shows only on their one-pixel frame, inside scores that say "some object". A 3 x 3
//! window inside a rectangle cannot tell its class; a module whose receptive field reaches the
//! frame can.
//!
//! ```text
//! cargo run --release --example synthetic_context -- data/ 64 11 48x48 [seed]
//! ```
//! writes `data/train_features.txt`, `data/train_labels.txt` (the first 3/4 of the items),
//! `data/test_features.txt`, `data/test_labels.txt` and the files they list.

use std::path::{Path, PathBuf};

use dilated::io::write_npy;
use dilated::train::synthetic::context_item;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn usage() -> ! {
    eprintln!("usage: synthetic_context <dir> <items> <classes> <HxW> [seed]");
    std::process::exit(2);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        usage();
    }
    let dir = PathBuf::from(&args[0]);
    let items: usize = args[1].parse().unwrap_or_else(|_| usage());
    let classes: usize = args[2].parse().unwrap_or_else(|_| usage());
    let (h, w) = args[3]
        .split_once('x')
        .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)))
        .unwrap_or_else(|| usage());
    let seed: u64 = args
        .get(4)
        .map_or(0, |s| s.parse().unwrap_or_else(|_| usage()));
    if classes < 2 || h < 20 || w < 20 || items < 2 {
        eprintln!("need at least 2 classes, 2 items and 20x20 maps");
        usage();
    }
    std::fs::create_dir_all(&dir)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lists = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let train = items * 3 / 4;
    for i in 0..items {
        let (scores, labels) = context_item(&mut rng, classes, h, w);
        let f = dir.join(format!("item{i:04}.npy"));
        let l = dir.join(format!("item{i:04}.png"));
        write_npy(&f, &scores)?;
        image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([labels[[y as usize, x as usize]]])
        })
        .save(&l)?;
        let list = &mut lists[usize::from(i >= train)];
        list.0.push(f.display().to_string());
        list.1.push(l.display().to_string());
    }
    let write = |name: &str, lines: &[String]| -> std::io::Result<()> {
        std::fs::write(Path::new(&dir).join(name), lines.join("\n") + "\n")
    };
    write("train_features.txt", &lists[0].0)?;
    write("train_labels.txt", &lists[0].1)?;
    write("test_features.txt", &lists[1].0)?;
    write("test_labels.txt", &lists[1].1)?;
    println!(
        "{items} items ({train} for training) of {classes} classes at {h}x{w} in {}",
        dir.display()
    );
    Ok(())
}
