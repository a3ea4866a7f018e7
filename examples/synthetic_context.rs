//! Writes a small synthetic dataset for `dilated train context`: scores that a context module
//! must look around to label correctly.
//!
//! Each item is an `H x W` map of `C` class scores (`.npy`, [C, H, W]) and its label PNG. The
//! background is class 0. Rectangles of 9 to 17 pixels a side carry a class k in 1..C, but
//! their scores say only "some object" (every object class equally likely, plus noise), except
//! in the rectangle's top-left 2 x 2 corner, whose scores point to k. A 3 x 3 window inside a
//! rectangle cannot tell its class; a module whose receptive field reaches the corner can. The
//! identity initialisation labels every object pixel as the first object class.
//!
//! ```text
//! cargo run --release --example synthetic_context -- data/ 64 11 48x48 [seed]
//! ```
//! writes `data/train_features.txt`, `data/train_labels.txt` (the first 3/4 of the items),
//! `data/test_features.txt`, `data/test_labels.txt` and the files they list.

use std::path::{Path, PathBuf};

use dilated::io::write_npy;
use ndarray::{Array2, Array3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn usage() -> ! {
    eprintln!("usage: synthetic_context <dir> <items> <classes> <HxW> [seed]");
    std::process::exit(2);
}

fn item(rng: &mut StdRng, classes: usize, h: usize, w: usize) -> (Array3<f32>, Array2<u8>) {
    let mut labels = Array2::<u8>::zeros((h, w));
    let mut corners = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let (rh, rw) = (rng.random_range(9..=17), rng.random_range(9..=17));
        let (y0, x0) = (rng.random_range(0..h - rh), rng.random_range(0..w - rw));
        let k = rng.random_range(1..classes) as u8;
        labels
            .slice_mut(ndarray::s![y0..y0 + rh, x0..x0 + rw])
            .fill(k);
        corners.push((y0, x0, k));
    }
    let mut scores = Array3::<f32>::zeros((classes, h, w));
    for ((y, x), &l) in labels.indexed_iter() {
        if l == 0 {
            scores[[0, y, x]] = 1.0;
        } else {
            for k in 1..classes {
                scores[[k, y, x]] = 0.5;
            }
        }
        for k in 0..classes {
            scores[[k, y, x]] += rng.random_range(-0.1..0.1);
        }
    }
    // The marker: the corners of the rectangles still visible, drawn last.
    for (y0, x0, k) in corners {
        for y in y0..y0 + 2 {
            for x in x0..x0 + 2 {
                if labels[[y, x]] == k {
                    scores[[k as usize, y, x]] = 2.0;
                }
            }
        }
    }
    (scores, labels)
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
        let (scores, labels) = item(&mut rng, classes, h, w);
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
