//! Writes a generated test picture (sky, hills, a road and a few boxes) to try
//! `dilated segment` without a photo at hand.
//!
//!     cargo run --release --example synthetic_image -- scene.png [WIDTHxHEIGHT]

use image::{Rgb, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "scene.png".into());
    let (w, h) = match args.next() {
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or("size must be WIDTHxHEIGHT")?;
            (w.parse()?, h.parse()?)
        }
        None => (480u32, 320u32),
    };
    let img = RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let hill = 0.45 + 0.08 * (fx * 9.0).sin() + 0.05 * (fx * 23.0).cos();
        let road = fy > 0.7 && (fx - 0.5).abs() < (fy - 0.7) * 1.2 + 0.05;
        let boxed = [(0.15, 0.55, 0.12, 0.2), (0.7, 0.5, 0.18, 0.25)]
            .iter()
            .any(|&(bx, by, bw, bh)| fx > bx && fx < bx + bw && fy > by && fy < by + bh);
        // A little texture so the picture is not flat.
        let n = ((x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 23) as u8;
        if boxed {
            Rgb([180 + n, 40 + n, 40])
        } else if road {
            Rgb([90 + n, 90 + n, 95 + n])
        } else if fy < hill {
            Rgb([110 + n, 160 + n, 230])
        } else {
            Rgb([50 + n, 140 + n, 60 + n])
        }
    });
    img.save(&path)?;
    println!("wrote {path} ({w}x{h})");
    Ok(())
}
