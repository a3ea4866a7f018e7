//! # dilated
//!
//! The dilated-convolution networks of Yu & Koltun, *Multi-Scale Context Aggregation by Dilated
//! Convolutions* (ICLR 2016), on any GPU through wgpu compute shaders, with a CPU
//! implementation of every op that checks the GPU.
//!
//! ```no_run
//! use dilated::{Conv2d, Gpu, GpuConv2d, GpuLayer, cpu};
//! use ndarray::{Array1, Array4};
//!
//! let gpu = Gpu::new()?;
//! let spec = Conv2d::new(8, 16, 3).dilation(4).pad(4).with_relu(true);
//! let x = Array4::<f32>::from_elem((1, 8, 32, 32), 0.5);
//! let w = Array4::<f32>::from_elem(spec.weight_shape(), 0.01);
//! let b = Array1::<f32>::zeros(16);
//! let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view()))?;
//! let y = gpu.download(&conv.forward(&gpu, &gpu.upload(x.view())?)?)?;
//! let reference = cpu::reference::conv2d(x.view(), &spec, w.view(), Some(b.view()))?;
//! assert_eq!(y.dim(), reference.dim());
//! # Ok::<(), dilated::Error>(())
//! ```
//!
//! ## Cargo features
//!
//! * `cli` (default): the `dilated` command-line tool; implies `fs` and `threads`.
//! * `fs` (default): whatever takes a path: reading weights, images and `.npy` arrays from
//!   files and writing them atomically, training datasets listed in files, solver snapshots,
//!   and the GPU's pipeline and kernel-choice caches on disk. Without it the readers of bytes
//!   remain ([`weights::read_safetensors_bytes`], [`weights::read_caffemodel_bytes`],
//!   [`io::decode_image_bgr`], [`io::read_npy4_bytes`]) and nothing is kept between runs.
//! * `threads` (default): the CPU paths on every core, through rayon (and gemm's and
//!   ndarray's rayon); without it they run on the caller's thread.
//!
//! With neither (`default-features = false`) the crate builds for `wasm32-unknown-unknown`,
//! where a browser's WebGPU runs it through the `_async` methods ([`Gpu::new_async`],
//! [`Plan::forward_async`], [`segment::Segmenter::segment_async`], ...); `web/` is such a
//! page.

#![warn(missing_docs)]

pub mod cpu;
pub mod error;
pub mod gpu;
/// Reading and writing files: NumPy `.npy` arrays, images, and the file handling the weight
/// formats share (paths with the `fs` feature; bytes always).
pub mod io;
pub mod net;
mod par;
pub mod plan;
pub mod segment;
pub mod spec;
pub mod timing;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use gpu::{ConvAlgorithm, Gpu, GpuConv2d, GpuLayer, GpuOptions, GpuTensor, Precision};
pub use plan::{Plan, PlanOptions};
pub use spec::{Conv2d, Deconv2d, MaxPool2d, Padding, Shape, Zoom};
