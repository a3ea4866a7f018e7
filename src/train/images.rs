//! Training data of the front-end and joint stages: images and label PNGs in two list files,
//! turned into fixed-size crops the way the authors' `ImageLabelData` Caffe layer does.
//!
//! For each item of a batch ([`Crops::sample`]):
//! 1. the image is extended by the front-end's margin (186) on every side by reflection
//!    without repeating the edge pixel (OpenCV's `BORDER_REFLECT_101`), and the label image by
//!    the same margin of ignored pixels (255);
//! 2. both are padded to at least `crop x crop` the same way (image reflected, labels 255),
//!    the padding split between the two sides as that layer splits it: vertically the smaller
//!    half on top, horizontally the larger half on the left;
//! 3. a random `crop x crop` window is cut from both at the same place, and both are mirrored
//!    left to right with probability 1/2 (when mirroring is on);
//! 4. the dataset's BGR mean is subtracted from the image;
//! 5. the labels are sliced at stride 8 from offset 186 (the margin), one per output pixel of
//!    the front-end, which sees `crop - 372` pixels of context around them: `(crop - 372) / 8`
//!    labels per side (16 for a 500 crop).
//!
//! Random choices come from a generator seeded by the seed, the iteration and the item's place
//! in the batch, so a resumed run sees exactly the crops an uninterrupted one would.
//! Evaluation uses centred crops without mirroring ([`Crops::centre`]), as Caffe's test phase
//! does.

#[cfg(feature = "fs")]
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
#[cfg(feature = "fs")]
use ndarray::{Array4, s};
use rand::Rng;
#[cfg(feature = "fs")]
use rand::{SeedableRng, rngs::StdRng};

#[cfg(feature = "fs")]
use super::data::{BatchOrder, batch_indices};
use crate::error::{Error, Result};
#[cfg(feature = "fs")]
use crate::io::{load_image_bgr, load_label_png, read_list};
use crate::net::FRONT_END_MARGIN;
use crate::segment::reflect101;

/// The label value training ignores.
const IGNORE: u8 = 255;

/// How crops are cut (the transform and label-slice parameters of `ImageLabelData`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crops {
    /// Side of the square crop fed to the network (500 for VOC).
    pub crop: usize,
    /// The front-end's margin: how far the image is extended, and the offset of the first
    /// label taken (186).
    pub margin: usize,
    /// Distance between the labels taken: the network's output stride (8).
    pub stride: usize,
    /// BGR mean subtracted from 0..255 pixels.
    pub mean_bgr: [f32; 3],
    /// Mirror left to right with probability 1/2.
    pub mirror: bool,
}

impl Crops {
    /// Crops of side `crop` for the front-end (margin 186, stride 8), mirrored at random.
    pub fn new(crop: usize, mean_bgr: [f32; 3]) -> Result<Self> {
        let crops = Self {
            crop,
            margin: FRONT_END_MARGIN,
            stride: 8,
            mean_bgr,
            mirror: true,
        };
        crops.label_size()?;
        Ok(crops)
    }

    /// Labels per side: `(crop - 2 margin) / stride`. Errors when the crop leaves no output or
    /// is not the margin plus a multiple of the stride.
    pub fn label_size(&self) -> Result<usize> {
        let bad = |reason: String| Error::InvalidSpec {
            context: "--crop-size".into(),
            reason,
        };
        if self.stride == 0 {
            return Err(bad("the label stride must be at least 1".into()));
        }
        let inner = self
            .crop
            .checked_sub(2 * self.margin)
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                bad(format!(
                    "a crop of {} leaves no output: it must exceed twice the margin, {}",
                    self.crop,
                    2 * self.margin
                ))
            })?;
        if !inner.is_multiple_of(self.stride) {
            return Err(bad(format!(
                "a crop of {} is not {} plus a multiple of {} (e.g. {})",
                self.crop,
                2 * self.margin,
                self.stride,
                2 * self.margin + self.stride * (inner / self.stride).max(1)
            )));
        }
        Ok(inner / self.stride)
    }

    /// A random crop of one item: the image `[3, crop, crop]` (mean subtracted) and its
    /// labels `[n, n]` with `n` = [`Crops::label_size`].
    pub fn sample(
        &self,
        image_bgr: ArrayView3<f32>,
        labels: ArrayView2<u8>,
        rng: &mut impl Rng,
    ) -> Result<(Array3<f32>, Array2<u8>)> {
        let (ph, pw) = self.padded_size(image_bgr.dim().0, image_bgr.dim().1);
        let mirror = self.mirror && rng.random_bool(0.5);
        let y0 = rng.random_range(0..=ph - self.crop);
        let x0 = rng.random_range(0..=pw - self.crop);
        self.cut(image_bgr, labels, y0, x0, mirror)
    }

    /// The centred crop of one item, not mirrored (for evaluation).
    pub fn centre(
        &self,
        image_bgr: ArrayView3<f32>,
        labels: ArrayView2<u8>,
    ) -> Result<(Array3<f32>, Array2<u8>)> {
        let (ph, pw) = self.padded_size(image_bgr.dim().0, image_bgr.dim().1);
        self.cut(
            image_bgr,
            labels,
            (ph - self.crop) / 2,
            (pw - self.crop) / 2,
            false,
        )
    }

    /// Size of the image once extended by the margin and padded to the crop.
    fn padded_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.margin).max(self.crop),
            (w + 2 * self.margin).max(self.crop),
        )
    }

    /// The crop at `(y0, x0)` of the extended and padded item.
    fn cut(
        &self,
        image_bgr: ArrayView3<f32>,
        labels: ArrayView2<u8>,
        y0: usize,
        x0: usize,
        mirror: bool,
    ) -> Result<(Array3<f32>, Array2<u8>)> {
        let (h, w, c) = image_bgr.dim();
        if h == 0 || w == 0 || c != 3 {
            return Err(Error::InvalidSpec {
                context: "training image".into(),
                reason: format!("expected a non-empty HxWx3 image, got {h}x{w}x{c}"),
            });
        }
        if labels.dim() != (h, w) {
            return Err(Error::ShapeMismatch {
                context: "training item".into(),
                left_name: "image (H, W)",
                left: vec![h, w],
                right_name: "labels (H, W)",
                right: vec![labels.dim().0, labels.dim().1],
            });
        }
        let n = self.label_size()?;
        let m = self.margin as isize;
        let (eh, ew) = (h + 2 * self.margin, w + 2 * self.margin);
        let (ph, pw) = self.padded_size(h, w);
        // Padding to the crop: vertically the smaller half on top, horizontally the larger
        // half on the left.
        let top = ((ph - eh) / 2) as isize;
        let left = ((pw - ew) - (pw - ew) / 2) as isize;
        // Source row (column) of crop row (column) `i`: in the image, or None in the label's
        // ignored border, reflected into the image for the image itself.
        let source = |i: usize, start: usize, pad: isize, extended: usize, size: usize| {
            let p = (start + i) as isize - pad;
            let in_extended = (0..extended as isize).contains(&p);
            let e = reflect101(p, extended) as isize - m;
            let in_image = in_extended && (0..size as isize).contains(&e);
            (reflect101(e, size), in_image)
        };
        let rows: Vec<(usize, bool)> = (0..self.crop).map(|y| source(y, y0, top, eh, h)).collect();
        let cols: Vec<(usize, bool)> = (0..self.crop)
            .map(|x| {
                let x = if mirror { self.crop - 1 - x } else { x };
                source(x, x0, left, ew, w)
            })
            .collect();
        let mean = self.mean_bgr;
        let image = Array3::from_shape_fn((3, self.crop, self.crop), |(ch, y, x)| {
            image_bgr[[rows[y].0, cols[x].0, ch]] - mean[ch]
        });
        let label_slice = Array2::from_shape_fn((n, n), |(i, j)| {
            let (r, rin) = rows[self.margin + self.stride * i];
            let (c, cin) = cols[self.margin + self.stride * j];
            if rin && cin { labels[[r, c]] } else { IGNORE }
        });
        Ok((image, label_slice))
    }
}

/// Images and their label PNGs, listed line by line (with the `fs` feature).
#[cfg(feature = "fs")]
#[derive(Clone, Debug)]
pub struct ImageDataset {
    images: Vec<PathBuf>,
    labels: Vec<PathBuf>,
}

#[cfg(feature = "fs")]
impl ImageDataset {
    /// The dataset of two list files: image paths and label PNG paths, line by line.
    pub fn from_lists(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        Self::new(read_list(images)?, read_list(labels)?)
    }

    /// The dataset of image and label paths, item by item.
    pub fn new(images: Vec<PathBuf>, labels: Vec<PathBuf>) -> Result<Self> {
        if images.len() != labels.len() {
            return Err(Error::InvalidSpec {
                context: "training data".into(),
                reason: format!(
                    "{} images but {} label files; the lists must correspond line by line",
                    images.len(),
                    labels.len()
                ),
            });
        }
        if images.is_empty() {
            return Err(Error::InvalidSpec {
                context: "training data".into(),
                reason: "the lists are empty".into(),
            });
        }
        Ok(Self { images, labels })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are no items (never: construction refuses empty lists).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// One item: the image `[H, W, 3]` (BGR, 0..255) and its labels `[H, W]`.
    pub fn item(&self, index: usize) -> Result<(Array3<f32>, Array2<u8>)> {
        let (i, l) = (&self.images[index], &self.labels[index]);
        let image = load_image_bgr(i)?;
        let labels = load_label_png(l)?;
        let (h, w, _) = image.dim();
        if labels.dim() != (h, w) {
            return Err(Error::ShapeMismatch {
                context: format!("{} and {}", i.display(), l.display()),
                left_name: "image (H, W)",
                left: vec![h, w],
                right_name: "labels (H, W)",
                right: vec![labels.dim().0, labels.dim().1],
            });
        }
        Ok((image, labels))
    }

    /// The batch of iteration `iter`: random crops `[batch, 3, crop, crop]` and their label
    /// slices `[batch, n, n]`, the crops drawn from `seed`, the iteration and the item's place.
    pub fn batch(
        &self,
        iter: u64,
        batch: usize,
        order: BatchOrder,
        crops: &Crops,
        seed: u64,
    ) -> Result<(Array4<f32>, ndarray::Array3<u32>)> {
        let indices = batch_indices(self.len(), iter, batch, order);
        self.assemble(&indices, crops, |k| {
            let mut rng = StdRng::seed_from_u64(
                seed ^ (iter.wrapping_mul(batch as u64) + k as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .rotate_left(17),
            );
            move |crops: &Crops, image: ArrayView3<f32>, labels: ArrayView2<u8>| {
                crops.sample(image, labels, &mut rng)
            }
        })
    }

    /// Items `indices` as centred crops without mirroring, for evaluation.
    pub fn centred(
        &self,
        indices: &[usize],
        crops: &Crops,
    ) -> Result<(Array4<f32>, ndarray::Array3<u32>)> {
        self.assemble(indices, crops, |_| {
            |crops: &Crops, image: ArrayView3<f32>, labels: ArrayView2<u8>| {
                crops.centre(image, labels)
            }
        })
    }

    fn assemble<F>(
        &self,
        indices: &[usize],
        crops: &Crops,
        mut cutter: impl FnMut(usize) -> F,
    ) -> Result<(Array4<f32>, ndarray::Array3<u32>)>
    where
        F: FnMut(&Crops, ArrayView3<f32>, ArrayView2<u8>) -> Result<(Array3<f32>, Array2<u8>)>,
    {
        if indices.is_empty() {
            return Err(Error::InvalidSpec {
                context: "training batch".into(),
                reason: "a batch needs at least one item".into(),
            });
        }
        let n = crops.label_size()?;
        let mut xs = Array4::<f32>::zeros((indices.len(), 3, crops.crop, crops.crop));
        let mut ys = ndarray::Array3::<u32>::zeros((indices.len(), n, n));
        for (k, &i) in indices.iter().enumerate() {
            let (image, labels) = self.item(i)?;
            let (x, y) =
                cutter(k)(crops, image.view(), labels.view()).map_err(|e| Error::InvalidSpec {
                    context: self.images[i].display().to_string(),
                    reason: e.to_string(),
                })?;
            xs.slice_mut(s![k, .., .., ..]).assign(&x);
            ys.slice_mut(s![k, .., ..]).assign(&y.mapv(u32::from));
        }
        Ok((xs, ys))
    }
}
