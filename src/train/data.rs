//! Training data of the context stage: one `.npy` per image holding the cached front-end
//! scores `[C, H, W]` (float32), and one label PNG of class ids at the same `H x W`, listed in
//! two list files that correspond line by line (the authors' convention).
//!
//! Batches are a function of the iteration alone, so a resumed run sees exactly the batches an
//! uninterrupted one would: in list order (`batch` items per iteration, wrapping around), or
//! shuffled once per pass over the data with a generator seeded by the seed and the pass.

#[cfg(feature = "fs")]
use std::path::{Path, PathBuf};

#[cfg(feature = "fs")]
use ndarray::{Array3, Array4, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

#[cfg(feature = "fs")]
use crate::error::{Error, Result};
#[cfg(feature = "fs")]
use crate::io::{load_label_png, read_list, read_npy3};

/// The items of iteration `iter` of a dataset of `len` items, `batch` per iteration: the
/// positions `iter * batch ..` of the endless sequence of passes over the data, each pass in
/// list order or in its own permutation.
pub fn batch_indices(len: usize, iter: u64, batch: usize, order: BatchOrder) -> Vec<usize> {
    let n = len.max(1) as u64;
    // The permutation of the pass the last item looked at (a batch spans few passes).
    let mut perm: Option<(u64, Vec<usize>)> = None;
    (0..batch as u64)
        .map(|k| {
            let at = iter * batch as u64 + k;
            let (pass, pos) = (at / n, (at % n) as usize);
            match order {
                BatchOrder::InOrder => pos,
                BatchOrder::Shuffled { seed } => {
                    if perm.as_ref().is_none_or(|(p, _)| *p != pass) {
                        let mut items: Vec<usize> = (0..len).collect();
                        let mut rng = StdRng::seed_from_u64(seed ^ pass.wrapping_mul(0x9e37_79b9));
                        items.shuffle(&mut rng);
                        perm = Some((pass, items));
                    }
                    perm.as_ref().map_or(pos, |(_, items)| items[pos])
                }
            }
        })
        .collect()
}

/// The order batches take items in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOrder {
    /// The lists' order, wrapping around.
    InOrder,
    /// A new permutation for every pass over the data, from `seed` and the pass number.
    Shuffled {
        /// The seed.
        seed: u64,
    },
}

/// Cached front-end scores and their labels (with the `fs` feature).
#[cfg(feature = "fs")]
#[derive(Clone, Debug)]
pub struct FeatureDataset {
    features: Vec<PathBuf>,
    labels: Vec<PathBuf>,
}

#[cfg(feature = "fs")]
impl FeatureDataset {
    /// The dataset of two list files: feature `.npy` paths and label PNG paths, line by line.
    pub fn from_lists(features: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        Self::new(read_list(features)?, read_list(labels)?)
    }

    /// The dataset of feature and label paths, item by item.
    pub fn new(features: Vec<PathBuf>, labels: Vec<PathBuf>) -> Result<Self> {
        if features.len() != labels.len() {
            return Err(Error::InvalidSpec {
                context: "training data".into(),
                reason: format!(
                    "{} feature files but {} label files; the lists must correspond line by line",
                    features.len(),
                    labels.len()
                ),
            });
        }
        if features.is_empty() {
            return Err(Error::InvalidSpec {
                context: "training data".into(),
                reason: "the lists are empty".into(),
            });
        }
        Ok(Self { features, labels })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether there are no items (never: construction refuses empty lists).
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// One item: scores `[C, H, W]` and labels `[H, W]` (class ids, 255 ignored).
    pub fn item(&self, index: usize) -> Result<(Array3<f32>, ndarray::Array2<u8>)> {
        let (f, l) = (&self.features[index], &self.labels[index]);
        let x = read_npy3(f)?;
        let y = load_label_png(l)?;
        let (_, h, w) = x.dim();
        if y.dim() != (h, w) {
            return Err(Error::ShapeMismatch {
                context: format!("{} and {}", f.display(), l.display()),
                left_name: "scores (H, W)",
                left: vec![h, w],
                right_name: "labels (H, W)",
                right: vec![y.dim().0, y.dim().1],
            });
        }
        Ok((x, y))
    }

    /// The items of iteration `iter` with `batch` items per iteration.
    pub fn batch_indices(&self, iter: u64, batch: usize, order: BatchOrder) -> Vec<usize> {
        batch_indices(self.len(), iter, batch, order)
    }

    /// The batch of iteration `iter`: scores `[batch, C, H, W]` and labels `[batch, H, W]`.
    /// Every item must have the batch's first item's size.
    pub fn batch(
        &self,
        iter: u64,
        batch: usize,
        order: BatchOrder,
    ) -> Result<(Array4<f32>, Array3<u32>)> {
        let indices = self.batch_indices(iter, batch, order);
        let mut xs: Option<Array4<f32>> = None;
        let mut ys: Option<Array3<u32>> = None;
        for (k, &i) in indices.iter().enumerate() {
            let (x, y) = self.item(i)?;
            let (c, h, w) = x.dim();
            let xb = xs.get_or_insert_with(|| Array4::zeros((indices.len(), c, h, w)));
            let yb = ys.get_or_insert_with(|| Array3::zeros((indices.len(), h, w)));
            if xb.dim() != (indices.len(), c, h, w) {
                return Err(Error::ShapeMismatch {
                    context: format!("batch item {}", self.features[i].display()),
                    left_name: "item (C, H, W)",
                    left: vec![c, h, w],
                    right_name: "batch (C, H, W)",
                    right: vec![xb.dim().1, xb.dim().2, xb.dim().3],
                });
            }
            xb.slice_mut(s![k, .., .., ..]).assign(&x);
            yb.slice_mut(s![k, .., ..]).assign(&y.mapv(u32::from));
        }
        match (xs, ys) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(Error::InvalidSpec {
                context: "training batch".into(),
                reason: "a batch needs at least one item".into(),
            }),
        }
    }
}
