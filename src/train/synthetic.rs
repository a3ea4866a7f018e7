//! A small synthetic segmentation task for the context stage, in which context is what counts:
//! cached "front-end scores" whose labels a 3x3 window cannot tell, but a module that looks
//! further can.
//!
//! Each item is an `H x W` map of `C` class scores `[C, H, W]` and its labels `[H, W]`. The
//! background is class 0 and its scores say so. Rectangles of 9 to 17 pixels a side carry a
//! class k in `1..C`, but inside them the scores say only "some object" (every object class
//! equally likely), except on the rectangle's one-pixel frame, whose scores point to k. Every
//! score has a little uniform noise. A pixel more than one pixel inside a rectangle cannot be
//! classified from its 3x3 neighbourhood (it sees "some object" everywhere); a module whose
//! receptive field reaches the frame can, by spreading the frame's class inwards. The identity
//! initialisation of the context module passes the scores through, so it labels the inside of
//! each rectangle at random among the object classes.

use ndarray::{Array2, Array3, s};
use rand::Rng;

/// One item of `classes` classes at `height x width`: scores `[C, H, W]` and labels `[H, W]`.
/// Needs `classes >= 2` and both sides at least 20 (the caller checks; smaller values are
/// raised to those).
pub fn context_item(
    rng: &mut impl Rng,
    classes: usize,
    height: usize,
    width: usize,
) -> (Array3<f32>, Array2<u8>) {
    let classes = classes.clamp(2, 255);
    let (h, w) = (height.max(20), width.max(20));
    let mut labels = Array2::<u8>::zeros((h, w));
    let mut frames = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let (rh, rw) = (rng.random_range(9..=17), rng.random_range(9..=17));
        let (y0, x0) = (rng.random_range(0..h - rh), rng.random_range(0..w - rw));
        let k = rng.random_range(1..classes) as u8;
        labels.slice_mut(s![y0..y0 + rh, x0..x0 + rw]).fill(k);
        frames.push((y0, x0, rh, rw, k));
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
    // The frames, drawn last, where their rectangle is still visible (rectangles overlap).
    for (y0, x0, rh, rw, k) in frames {
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                let on_frame = y == y0 || y + 1 == y0 + rh || x == x0 || x + 1 == x0 + rw;
                if on_frame && labels[[y, x]] == k {
                    scores[[k as usize, y, x]] = 2.0;
                }
            }
        }
    }
    (scores, labels)
}
