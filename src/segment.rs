//! Segmenting whole images the way the reference predictor does: BGR mean subtraction,
//! reflect-101 padding by the front-end's margin, tiles of the model's input size stitched
//! together, the model's upsampling, argmax, and the dataset's colour palette and class names.

use ndarray::{Array2, Array3, Array4, ArrayView3, s};

use crate::cpu::reference;
use crate::error::{Error, Result};
use crate::gpu::context::block_on;
use crate::gpu::{Gpu, GpuLayer, GpuZoom};
use crate::net::{Model, ModelInfo, Network, Upsampling};
use crate::plan::{CpuPlan, Plan, PlanOptions};
use crate::spec::{Shape, Zoom};

/// Where the network runs.
pub enum Backend<'g> {
    /// On a GPU.
    Gpu(&'g Gpu),
    /// On the CPU's fast path.
    Cpu,
}

enum Runner<'g> {
    /// The plan, and whether upsampling and argmax run on the GPU too (not under a memory
    /// budget: the plan's figure is then all the GPU memory the segmenter holds).
    Gpu(&'g Gpu, Box<Plan<'g>>, bool),
    Cpu(CpuPlan),
}

/// A segmentation: a label per pixel, and the class probabilities if they were asked for.
#[derive(Clone, Debug)]
pub struct Segmentation {
    /// Class index per pixel, `[height, width]`.
    pub labels: Array2<u32>,
    /// Class probabilities `[classes, height, width]`, when requested.
    pub probabilities: Option<Array3<f32>>,
}

/// A model ready to segment images of any size, tile by tile.
pub struct Segmenter<'g> {
    info: ModelInfo,
    tile: (usize, usize),
    runner: Runner<'g>,
    tile_output: Shape,
}

/// Index into `0..n` of position `i` reflected about the edges without repeating the edge
/// pixel (OpenCV's BORDER_REFLECT_101), for any distance outside.
pub fn reflect101(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

impl<'g> Segmenter<'g> {
    /// Prepares `network` (built from `model`, with its weights loaded) for tiles of
    /// `tile` pixels (default: the model's deploy input size).
    pub fn new(
        model: Model,
        network: &Network,
        backend: Backend<'g>,
        tile: Option<(usize, usize)>,
    ) -> Result<Self> {
        Self::with_options(model, network, backend, tile, &PlanOptions::default())
    }

    /// [`Segmenter::new`] with plan options: under a GPU memory budget
    /// (`options.max_memory`) each tile is processed in bands as needed, and the upsampling
    /// and argmax of the stitched scores run on the CPU; on the CPU, the network runs at
    /// `options.cpu_precision`.
    pub fn with_options(
        model: Model,
        network: &Network,
        backend: Backend<'g>,
        tile: Option<(usize, usize)>,
        options: &PlanOptions,
    ) -> Result<Self> {
        let info = model.info();
        let tile = tile.unwrap_or(info.input_size);
        for (v, what) in [(tile.0, "height"), (tile.1, "width")] {
            if v <= 2 * info.margin || !(v - 2 * info.margin).is_multiple_of(8) {
                return Err(Error::InvalidSpec {
                    context: "tile size".into(),
                    reason: format!(
                        "tile {what} {v} must exceed {} and exceed it by a multiple of 8 (e.g. {} or {})",
                        2 * info.margin,
                        2 * info.margin + 8 * 16,
                        info.input_size.0
                    ),
                });
            }
        }
        let shape = Shape::new(1, 3, tile.0, tile.1);
        let tile_output = network.output_shape(shape)?;
        let runner = match backend {
            Backend::Gpu(gpu) => Runner::Gpu(
                gpu,
                Box::new(Plan::new(gpu, network, shape, options)?),
                options.max_memory.is_none(),
            ),
            Backend::Cpu => Runner::Cpu(CpuPlan::with_precision(network, options.cpu_precision)?),
        };
        Ok(Self {
            info,
            tile,
            runner,
            tile_output,
        })
    }

    /// Bytes of GPU memory the segmenter's plan holds (`None` on the CPU).
    pub fn gpu_memory(&self) -> Option<u64> {
        match &self.runner {
            Runner::Gpu(_, plan, _) => Some(plan.peak_memory()),
            Runner::Cpu(_) => None,
        }
    }

    /// The tile size (height, width) of the network's input.
    pub fn tile(&self) -> (usize, usize) {
        self.tile
    }

    /// Image pixels per output pixel of the network (vertically, horizontally): 8 for the
    /// front-end and the models without in-network upsampling, 1 with it.
    pub fn stride(&self) -> (usize, usize) {
        let o = self.tile_output;
        (
            (self.tile.0 - 2 * self.info.margin) / o.h.max(1),
            (self.tile.1 - 2 * self.info.margin) / o.w.max(1),
        )
    }

    /// Number of tiles an image of this size needs.
    pub fn tiles(&self, height: usize, width: usize) -> (usize, usize) {
        let out = (
            self.tile.0 - 2 * self.info.margin,
            self.tile.1 - 2 * self.info.margin,
        );
        (height.div_ceil(out.0), width.div_ceil(out.1))
    }

    /// The input tile at tile position `(ty, tx)`: mean-subtracted BGR, cut from the image
    /// reflect-padded by the margin, and reflect-padded again at the bottom/right where the
    /// padded image ends inside the tile (both as the reference predictor does).
    fn tile_input(&self, image_bgr: &ArrayView3<f32>, ty: usize, tx: usize) -> Array4<f32> {
        let (h, w, _) = image_bgr.dim();
        let m = self.info.margin;
        let (th, tw) = self.tile;
        let (oy, ox) = (ty * (th - 2 * m), tx * (tw - 2 * m));
        let crop_h = th.min(h + 2 * m - oy);
        let crop_w = tw.min(w + 2 * m - ox);
        let mean = self.info.mean_bgr;
        let rows: Vec<usize> = (0..th)
            .map(|y| {
                reflect101(
                    (oy + reflect101(y as isize, crop_h)) as isize - m as isize,
                    h,
                )
            })
            .collect();
        let cols: Vec<usize> = (0..tw)
            .map(|x| {
                reflect101(
                    (ox + reflect101(x as isize, crop_w)) as isize - m as isize,
                    w,
                )
            })
            .collect();
        Array4::from_shape_fn((1, 3, th, tw), |(_, c, y, x)| {
            image_bgr[[rows[y], cols[x], c]] - mean[c]
        })
    }

    async fn run_tile(&self, input: &Array4<f32>) -> Result<Array4<f32>> {
        match &self.runner {
            Runner::Gpu(_, plan, _) => plan.forward_async(input.view()).await,
            Runner::Cpu(plan) => plan.forward(input.view()),
        }
    }

    /// The network's output over the whole image, tile by tile, stitched: `[1, C, rows, cols]`
    /// for all the tiles (the last row and column of tiles may reach past the image).
    async fn stitch(
        &self,
        image_bgr: &ArrayView3<'_, f32>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Array4<f32>> {
        let (h, w, _) = image_bgr.dim();
        let (nty, ntx) = self.tiles(h, w);
        let o = self.tile_output;
        let mut stitched = Array4::<f32>::zeros((1, o.c, nty * o.h, ntx * o.w));
        for ty in 0..nty {
            for tx in 0..ntx {
                let out = self.run_tile(&self.tile_input(image_bgr, ty, tx)).await?;
                stitched
                    .slice_mut(s![
                        ..,
                        ..,
                        ty * o.h..(ty + 1) * o.h,
                        tx * o.w..(tx + 1) * o.w
                    ])
                    .assign(&out);
                progress(ty * ntx + tx + 1, nty * ntx);
            }
        }
        Ok(stitched)
    }

    /// The time of each layer of the network on the image's first tile, on the GPU (layer by
    /// layer, or with timestamp queries where the adapter has them); `None` on the CPU.
    pub async fn profile_first_tile_async(
        &self,
        image_bgr: ArrayView3<'_, f32>,
    ) -> Result<Option<crate::timing::LayerTimes>> {
        let (h, w, c) = image_bgr.dim();
        if h == 0 || w == 0 || c != 3 {
            return Err(Error::InvalidSpec {
                context: "image".into(),
                reason: format!("expected a non-empty HxWx3 image, got {h}x{w}x{c}"),
            });
        }
        match &self.runner {
            Runner::Gpu(_, plan, _) => {
                let input = self.tile_input(&image_bgr, 0, 0);
                Ok(Some(plan.forward_profiled_async(input.view()).await?.1))
            }
            Runner::Cpu(_) => Ok(None),
        }
    }

    /// The network's raw output for an image given as `[height, width, 3]` BGR values in
    /// 0..255, as `[C, ceil(height / s), ceil(width / s)]` where `s` is the network's output
    /// stride (8 for the front-end): output pixel `(i, j)` is centred on image pixel
    /// `(s i, s j)`. This is what the context stage trains on when the network is the
    /// front-end (`dilated features`). Calls `progress(done, total)` after each tile.
    pub fn scores(
        &self,
        image_bgr: ArrayView3<f32>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Array3<f32>> {
        block_on(self.scores_async(image_bgr, progress))
    }

    /// [`Segmenter::scores`] as a future, for browsers (WebGPU), where nothing may block.
    pub async fn scores_async(
        &self,
        image_bgr: ArrayView3<'_, f32>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Array3<f32>> {
        let (h, w, c) = image_bgr.dim();
        if h == 0 || w == 0 || c != 3 {
            return Err(Error::InvalidSpec {
                context: "image".into(),
                reason: format!("expected a non-empty HxWx3 image, got {h}x{w}x{c}"),
            });
        }
        let o = self.tile_output;
        let inner = (
            self.tile.0 - 2 * self.info.margin,
            self.tile.1 - 2 * self.info.margin,
        );
        if o.h == 0 || o.w == 0 || !inner.0.is_multiple_of(o.h) || !inner.1.is_multiple_of(o.w) {
            return Err(Error::InvalidSpec {
                context: "scores".into(),
                reason: format!(
                    "the network turns {}x{} pixels into {}x{} outputs: no whole stride",
                    inner.0, inner.1, o.h, o.w
                ),
            });
        }
        let stride = self.stride();
        let stitched = self.stitch(&image_bgr, progress).await?;
        Ok(stitched
            .slice(s![0, .., ..h.div_ceil(stride.0), ..w.div_ceil(stride.1)])
            .to_owned())
    }

    /// Segments an image given as `[height, width, 3]` BGR values in 0..255, calling
    /// `progress(done, total)` after each tile (blocking; in a browser use
    /// [`Segmenter::segment_async`]).
    pub fn segment(
        &self,
        image_bgr: ArrayView3<f32>,
        want_probabilities: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Segmentation> {
        block_on(self.segment_async(image_bgr, want_probabilities, progress))
    }

    /// [`Segmenter::segment`] as a future: each tile's read-back, the argmax and the
    /// probabilities are awaited, so a browser (WebGPU) stays responsive and can show the
    /// progress between tiles. Natively it is ready when first polled.
    pub async fn segment_async(
        &self,
        image_bgr: ArrayView3<'_, f32>,
        want_probabilities: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Segmentation> {
        let (h, w, c) = image_bgr.dim();
        if h == 0 || w == 0 || c != 3 {
            return Err(Error::InvalidSpec {
                context: "image".into(),
                reason: format!("expected a non-empty HxWx3 image, got {h}x{w}x{c}"),
            });
        }
        let stitched = self.stitch(&image_bgr, progress).await?;
        let factor = match self.info.upsampling {
            Upsampling::Zoom(f) => f,
            Upsampling::Deconvolution => 1,
        };
        let zoom = Zoom { factor };
        // Full-resolution probabilities (cropped to the image) and labels.
        let (probs, labels) = match &self.runner {
            Runner::Gpu(gpu, _, true) => {
                let t = gpu.upload(stitched.view())?;
                let full = if factor > 1 {
                    GpuZoom::new(zoom).forward(gpu, &t)?
                } else {
                    t
                };
                let labels = gpu.argmax_async(&full).await?;
                let probs = if want_probabilities {
                    Some(gpu.download_async(&full).await?)
                } else {
                    None
                };
                (probs, labels)
            }
            Runner::Gpu(_, _, false) | Runner::Cpu(_) => {
                let full = if factor > 1 {
                    reference::zoom(stitched.view(), &zoom)?
                } else {
                    stitched
                };
                let labels = reference::argmax(full.view());
                (want_probabilities.then_some(full), labels)
            }
        };
        Ok(Segmentation {
            labels: labels.slice(s![0, ..h, ..w]).to_owned(),
            probabilities: probs.map(|p| p.slice(s![0, .., ..h, ..w]).to_owned()),
        })
    }
}

/// The label map in the dataset's colours.
pub fn colorize(labels: &Array2<u32>, palette: &[[u8; 3]]) -> image::RgbImage {
    let (h, w) = labels.dim();
    image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let label = labels[[y as usize, x as usize]] as usize;
        image::Rgb(palette.get(label).copied().unwrap_or([255, 255, 255]))
    })
}

/// The label colours blended over the image (`alpha` of the colour).
pub fn overlay(image_bgr: &Array3<f32>, colored: &image::RgbImage, alpha: f32) -> image::RgbImage {
    image::RgbImage::from_fn(colored.width(), colored.height(), |x, y| {
        let c = colored.get_pixel(x, y);
        let px = |ch: usize| image_bgr[[y as usize, x as usize, 2 - ch]];
        image::Rgb(std::array::from_fn(|ch| {
            (alpha * c[ch] as f32 + (1.0 - alpha) * px(ch))
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    })
}

/// The dataset's colour for each class (RGB).
pub fn palette(model: Model) -> Vec<[u8; 3]> {
    match model {
        Model::PascalVoc => (0..21u32)
            .map(|i| {
                // The VOC colour map: bits of the class index spread over the channels.
                let (mut r, mut g, mut b, mut c) = (0u8, 0u8, 0u8, i);
                for j in 0..8 {
                    r |= ((c & 1) as u8) << (7 - j);
                    g |= (((c >> 1) & 1) as u8) << (7 - j);
                    b |= (((c >> 2) & 1) as u8) << (7 - j);
                    c >>= 3;
                }
                [r, g, b]
            })
            .collect(),
        Model::CamVid | Model::Kitti => vec![
            [128, 0, 0],
            [128, 128, 0],
            [128, 128, 128],
            [64, 0, 128],
            [192, 128, 128],
            [128, 64, 128],
            [64, 64, 0],
            [64, 64, 128],
            [192, 192, 128],
            [0, 0, 192],
            [0, 128, 192],
        ],
        Model::Cityscapes => vec![
            [128, 64, 128],
            [244, 35, 232],
            [70, 70, 70],
            [102, 102, 156],
            [190, 153, 153],
            [153, 153, 153],
            [250, 170, 30],
            [220, 220, 0],
            [107, 142, 35],
            [152, 251, 152],
            [70, 130, 180],
            [220, 20, 60],
            [255, 0, 0],
            [0, 0, 142],
            [0, 0, 70],
            [0, 60, 100],
            [0, 80, 100],
            [0, 0, 230],
            [119, 11, 32],
        ],
    }
}

/// PASCAL VOC 2012: background and the 20 object classes.
const PASCAL_VOC: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The 11 CamVid classes (KITTI's labelled frames use the same ones), in the order of the
/// models' palette: building (128,0,0), tree (128,128,0), sky (128,128,128), ...
const CAMVID: [&str; 11] = [
    "building",
    "tree",
    "sky",
    "car",
    "sign",
    "road",
    "pedestrian",
    "fence",
    "pole",
    "sidewalk",
    "bicyclist",
];

/// The 19 Cityscapes training classes.
const CITYSCAPES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// The class names of `model`'s dataset, one per output channel, in the order of the released
/// models' outputs and of [`palette`].
pub fn class_names(model: Model) -> &'static [&'static str] {
    match model {
        Model::PascalVoc => &PASCAL_VOC,
        Model::CamVid | Model::Kitti => &CAMVID,
        Model::Cityscapes => &CITYSCAPES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect101_does_not_repeat_the_edge() {
        // OpenCV: "gfedcb|abcdefgh|gfedcba"
        let got: Vec<usize> = (-3..11).map(|i| reflect101(i, 8)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4]);
        assert_eq!(reflect101(-186, 1), 0);
        assert_eq!(reflect101(5, 2), 1);
        assert_eq!(reflect101(-200, 3), reflect101(200, 3));
    }

    #[test]
    fn palettes_cover_every_class() {
        for m in Model::ALL {
            assert_eq!(palette(m).len(), m.info().classes, "{}", m.name());
            assert_eq!(class_names(m).len(), m.info().classes, "{}", m.name());
        }
        let voc = palette(Model::PascalVoc);
        assert_eq!(voc[1], [128, 0, 0]);
        assert_eq!(voc[15], [192, 128, 128]);
    }
}
