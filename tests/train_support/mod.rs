//! Shared code of the training tests: seeded data, data on dyadic grids (exact in f32, so
//! finite differences of piecewise-linear ops are exact), and central differences.
#![allow(dead_code)]

use ndarray::{Array4, ArrayView4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded generator.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Values `k / denom` with `k` uniform in `-max_k..=max_k`.
pub fn dyadic(rng: &mut StdRng, shape: [usize; 4], max_k: i32, denom: f32) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || rng.random_range(-max_k..=max_k) as f32 / denom)
}

/// Uniform values in `[lo, hi)`.
pub fn uniform(rng: &mut StdRng, shape: [usize; 4], lo: f32, hi: f32) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || rng.random_range(lo..hi))
}

/// Distinct values: a random permutation of `0..len`, centred and divided by `denom`.
pub fn distinct(rng: &mut StdRng, shape: [usize; 4], denom: f32) -> Array4<f32> {
    let len: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..len)
        .map(|i| (i as f32 - len as f32 / 2.0) / denom)
        .collect();
    for i in (1..len).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    Array4::from_shape_vec(shape, v).unwrap()
}

/// `sum y * r` in f64: the scalar whose gradient with respect to `y` is `r`.
pub fn dot(y: ArrayView4<f32>, r: ArrayView4<f32>) -> f64 {
    assert_eq!(y.dim(), r.dim());
    y.iter()
        .zip(r.iter())
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum()
}

/// Central difference of `f` at `x` along element `idx`, divided by the step actually taken
/// between the two f32 points (`x + eps` and `x - eps` rounded to f32).
pub fn central_difference(
    x: &Array4<f32>,
    idx: [usize; 4],
    eps: f32,
    f: impl Fn(&Array4<f32>) -> f64,
) -> f64 {
    let (mut plus, mut minus) = (x.clone(), x.clone());
    plus[idx] = x[idx] + eps;
    minus[idx] = x[idx] - eps;
    let h = plus[idx] as f64 - minus[idx] as f64;
    (f(&plus) - f(&minus)) / h
}

/// Checks an analytic gradient against central differences at every element (or the first
/// `limit` in a seeded random order), with `|fd - g| <= abs + rel * |fd|`. Returns the
/// largest error relative to `abs + rel * |fd|` (at most 1 when it passes).
pub fn check_gradient(
    what: &str,
    x: &Array4<f32>,
    analytic: ArrayView4<f32>,
    eps: f32,
    (abs, rel): (f64, f64),
    f: impl Fn(&Array4<f32>) -> f64,
) -> f64 {
    assert_eq!(x.dim(), analytic.dim(), "{what}: gradient shape");
    let mut worst = 0.0f64;
    for (idx, &g) in analytic.indexed_iter() {
        let idx = [idx.0, idx.1, idx.2, idx.3];
        let fd = central_difference(x, idx, eps, &f);
        let err = (fd - g as f64).abs() / (abs + rel * fd.abs());
        assert!(
            err <= 1.0,
            "{what} at {idx:?}: analytic {g}, finite difference {fd}"
        );
        worst = worst.max(err);
    }
    worst
}
