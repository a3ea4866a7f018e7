//! Elementwise and per-pixel ops on the fast path: ReLU and the softmax over channels.

use crate::par::*;
use ndarray::{Array4, ArrayView4};

/// `max(x, 0)` on a slice, multi-threaded; NaN stays NaN.
pub(crate) fn relu_slice(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    });
}

/// Elementwise `max(x, 0)` in place, multi-threaded; NaN stays NaN (as
/// [`crate::cpu::reference::relu`]).
pub fn relu_inplace(x: &mut Array4<f32>) {
    match x.as_slice_memory_order_mut() {
        Some(s) => relu_slice(s),
        None => x.par_mapv_inplace(|v| if v < 0.0 { 0.0 } else { v }),
    }
}

/// Softmax over channels at every pixel, multi-threaded, in f32 (same formula as the
/// reference: `exp(x - max) / sum`, so NaN and infinities behave the same way).
pub fn softmax(input: ArrayView4<f32>) -> Array4<f32> {
    let input = input.as_standard_layout();
    let (n, c, h, w) = input.dim();
    let plane = h * w;
    let x = input.as_slice().unwrap_or(&[]);
    let mut y = vec![0f32; x.len()];
    const CHUNK: usize = 4096;
    for b in 0..n {
        let xi = &x[b * c * plane..(b + 1) * c * plane];
        let yi = &mut y[b * c * plane..(b + 1) * c * plane];
        let mut m = vec![f32::NEG_INFINITY; plane];
        m.par_chunks_mut(CHUNK).enumerate().for_each(|(i, m)| {
            for k in 0..c {
                let row = &xi[k * plane + i * CHUNK..][..m.len()];
                for (m, &v) in m.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
        });
        yi.par_chunks_mut(plane)
            .zip(xi.par_chunks(plane))
            .for_each(|(y, x)| {
                for ((y, &x), &m) in y.iter_mut().zip(x).zip(&m) {
                    *y = (x - m).exp();
                }
            });
        let mut sum = vec![0f32; plane];
        {
            let yr: &[f32] = yi;
            sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, s)| {
                for k in 0..c {
                    let row = &yr[k * plane + i * CHUNK..][..s.len()];
                    for (s, &v) in s.iter_mut().zip(row) {
                        *s += v;
                    }
                }
            });
        }
        yi.par_chunks_mut(plane).for_each(|y| {
            for (y, &s) in y.iter_mut().zip(&sum) {
                *y /= s;
            }
        });
    }
    Array4::from_shape_vec((n, c, h, w), y).unwrap_or_else(|_| Array4::zeros((n, c, h, w)))
}
