//! The glue between `web/index.html` and the `dilated` crate: a WebGPU device, a model
//! prepared for segmenting images tile by tile (the reference predictor's steps), and the
//! in-page checks of the GPU kernels against the crate's CPU reference.
//!
//! Every method that waits for the GPU returns a JavaScript `Promise`; errors reach the page
//! as JavaScript `Error`s whose message is the crate's error in words.

use std::rc::Rc;

use dilated::cpu::reference;
use dilated::gpu::{GpuDeconv2d, GpuMaxPool2d, GpuSoftmax, GpuZoom};
use dilated::net::{Model, Network, PresetOptions};
use dilated::plan::{CpuPlan, Plan, PlanOptions};
use dilated::segment::{Backend, Segmenter, class_names, palette};
use dilated::weights::{WeightSet, read_caffemodel_bytes, read_safetensors_bytes};
use dilated::{Conv2d, Deconv2d, Gpu, GpuConv2d, GpuLayer, GpuOptions, MaxPool2d, Shape, Zoom};
use ndarray::{Array1, Array3, Array4};
use wasm_bindgen::prelude::*;

/// The crate's error as a JavaScript `Error`.
fn js(e: dilated::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// The names of the four presets, in the crate's order.
#[wasm_bindgen]
pub fn presets() -> Vec<String> {
    Model::ALL.iter().map(|m| m.name().to_string()).collect()
}

/// The browser's WebGPU device, opened once per page.
#[wasm_bindgen]
pub struct Device {
    gpu: &'static Gpu,
}

#[wasm_bindgen]
impl Device {
    /// Opens the browser's WebGPU adapter (high-performance preference). Fails with a message
    /// when the browser has no WebGPU or no adapter.
    pub async fn open() -> Result<Device, JsError> {
        let options = GpuOptions {
            backends: wgpu::Backends::BROWSER_WEBGPU,
            ..GpuOptions::from_env()
        };
        let gpu = Gpu::new_async(&options).await.map_err(js)?;
        // One device for the page's whole life: the models borrow it.
        Ok(Device {
            gpu: Box::leak(Box::new(gpu)),
        })
    }

    /// The adapter's name, backend, driver and the limits that bound tile and image sizes.
    pub fn adapter(&self) -> String {
        let report = self.gpu.adapter();
        let i = &report.info;
        let l = self.gpu.limits();
        format!(
            "{} ({:?}, {:?}); driver: {} {}; largest buffer {} MiB, largest storage binding {} MiB",
            if i.name.is_empty() {
                "unnamed adapter"
            } else {
                &i.name
            },
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20,
        )
    }

    /// Builds the preset `model` with front-end widths divided by `width_divisor`, loads the
    /// weights in `weights` (a `.safetensors` or `.caffemodel` file's bytes, told apart by
    /// `file_name`; none: the preset's seeded random weights, meaningless) and compiles it for
    /// square tiles of `tile` pixels (none: the model's deploy input size).
    pub fn prepare(
        &self,
        model: &str,
        width_divisor: usize,
        weights: Option<Vec<u8>>,
        file_name: Option<String>,
        tile: Option<usize>,
    ) -> Result<Prepared, JsError> {
        let model = Model::from_name(model).map_err(js)?;
        let mut network = model
            .build(&PresetOptions {
                width_divisor,
                ..Default::default()
            })
            .map_err(js)?;
        if let Some(bytes) = weights {
            let name = file_name.unwrap_or_default().to_lowercase();
            // The readers name in-memory files `<bytes>`: say which file it was.
            let named = |e: dilated::Error| JsError::new(&e.to_string().replace("<bytes>", &name));
            let set: WeightSet = if name.ends_with(".caffemodel") {
                read_caffemodel_bytes(&bytes).map_err(named)?
            } else if name.ends_with(".safetensors") {
                read_safetensors_bytes(&bytes).map_err(named)?
            } else {
                return Err(JsError::new(&format!(
                    "{name:?}: weights must be a .safetensors or .caffemodel file"
                )));
            };
            network.load_weights(&set).map_err(js)?;
        }
        let tile = tile.map(|t| (t, t));
        let segmenter =
            Segmenter::new(model, &network, Backend::Gpu(self.gpu), tile).map_err(js)?;
        Ok(Prepared {
            inner: Rc::new(Inner {
                model,
                network,
                segmenter,
            }),
        })
    }

    /// Runs every GPU kernel the segmenter uses on small seeded inputs, and a width-reduced
    /// network whole and in bands (within a memory budget), and compares each with the
    /// crate's CPU reference (run here, in WebAssembly). Resolves to a JSON array of
    /// `{name, max_abs_error, tolerance, ok}`, with `bands` where the plan ran in bands.
    pub fn checks(&self) -> js_sys::Promise {
        let gpu = self.gpu;
        wasm_bindgen_futures::future_to_promise(async move {
            let results = run_checks(gpu).await.map_err(|e| JsValue::from(js(e)))?;
            Ok(JsValue::from_str(
                &serde_json::Value::Array(results).to_string(),
            ))
        })
    }
}

struct Inner {
    model: Model,
    network: Network,
    segmenter: Segmenter<'static>,
}

/// A model ready to segment images on the device.
#[wasm_bindgen]
pub struct Prepared {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl Prepared {
    /// The dataset's class names, one per output channel.
    pub fn classes(&self) -> Vec<String> {
        class_names(self.inner.model)
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The dataset's colours, RGB, three bytes per class.
    pub fn palette(&self) -> Vec<u8> {
        palette(self.inner.model).concat()
    }

    /// The tile size in pixels, `[height, width]`.
    pub fn tile(&self) -> Vec<u32> {
        let (h, w) = self.inner.segmenter.tile();
        vec![h as u32, w as u32]
    }

    /// How many tiles an image of this size takes.
    pub fn tile_count(&self, width: usize, height: usize) -> usize {
        let (ty, tx) = self.inner.segmenter.tiles(height, width);
        ty * tx
    }

    /// GPU memory the compiled tile holds, in bytes.
    pub fn gpu_memory(&self) -> f64 {
        self.inner.segmenter.gpu_memory().unwrap_or(0) as f64
    }

    /// Number of parameters of the network.
    pub fn parameters(&self) -> f64 {
        self.inner.network.params() as f64
    }

    /// Segments an RGBA image (`width * height * 4` bytes, as a canvas gives them) the way
    /// the reference predictor does, calling `progress(done, total)` after each tile.
    /// Resolves to a `Uint32Array` of `width * height` class indices, row by row.
    pub fn segment(
        &self,
        rgba: Vec<u8>,
        width: usize,
        height: usize,
        progress: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let bgr = bgr_of(&rgba, width, height)?;
            let mut report = |done: usize, total: usize| {
                let _ = progress.call2(
                    &JsValue::NULL,
                    &JsValue::from(done as u32),
                    &JsValue::from(total as u32),
                );
            };
            let seg = inner
                .segmenter
                .segment_async(bgr.view(), false, &mut report)
                .await
                .map_err(|e| JsValue::from(js(e)))?;
            let labels: Vec<u32> = seg.labels.iter().copied().collect();
            Ok(js_sys::Uint32Array::from(labels.as_slice()).into())
        })
    }

    /// Times every layer of the network on the image's first tile (RGBA as for `segment`),
    /// one layer at a time. Resolves to an array of `[layer name, milliseconds]` pairs.
    pub fn profile(&self, rgba: Vec<u8>, width: usize, height: usize) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let bgr = bgr_of(&rgba, width, height)?;
            let times = inner
                .segmenter
                .profile_first_tile_async(bgr.view())
                .await
                .map_err(|e| JsValue::from(js(e)))?;
            let rows = js_sys::Array::new();
            for (name, time) in times.map(|t| t.layers).unwrap_or_default() {
                let row = js_sys::Array::new();
                row.push(&JsValue::from(name));
                row.push(&JsValue::from(time.as_secs_f64() * 1e3));
                rows.push(&row);
            }
            Ok(rows.into())
        })
    }
}

/// An RGBA image (`width * height * 4` bytes, as a canvas gives them) as `[height, width, 3]`
/// BGR values in 0..255, as the models were trained on.
fn bgr_of(rgba: &[u8], width: usize, height: usize) -> Result<Array3<f32>, JsValue> {
    if width == 0 || height == 0 || rgba.len() != width * height * 4 {
        return Err(JsError::new(&format!(
            "expected {width}x{height} RGBA pixels ({} bytes), got {} bytes",
            width * height * 4,
            rgba.len()
        ))
        .into());
    }
    Ok(Array3::from_shape_fn((height, width, 3), |(y, x, c)| {
        rgba[(y * width + x) * 4 + 2 - c] as f32
    }))
}

/// Seeded values in `-scale..scale` (a linear congruential generator: the checks need
/// variety, not quality).
fn noise(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn array4(shape: [usize; 4], seed: u64, scale: f32) -> Array4<f32> {
    let len = shape.iter().product();
    Array4::from_shape_vec(shape, noise(len, seed, scale)).expect("length matches the shape")
}

/// Largest absolute difference of two arrays of one shape (infinite when the shapes differ
/// or a value is not finite).
fn max_abs(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    if a.dim() != b.dim() {
        return f32::INFINITY;
    }
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() { f32::INFINITY } else { m.max(d) }
    })
}

fn entry(name: &str, error: f32, tolerance: f32) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "max_abs_error": error,
        "tolerance": tolerance,
        "ok": error <= tolerance,
    })
}

/// Runs one layer on the GPU and reads its output back.
async fn gpu_forward(
    gpu: &Gpu,
    layer: &dyn GpuLayer,
    x: &Array4<f32>,
) -> dilated::Result<Array4<f32>> {
    let t = gpu.upload(x.view())?;
    let y = layer.forward(gpu, &t)?;
    gpu.download_async(&y).await
}

async fn run_checks(gpu: &Gpu) -> dilated::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();

    // Dilated convolution with bias and ReLU, as in the context module.
    let spec = Conv2d::new(6, 10, 3).dilation(4).pad(4).with_relu(true);
    let x = array4([1, 6, 23, 19], 1, 1.0);
    let w = array4(spec.weight_shape(), 2, 0.3);
    let b = Array1::from(noise(10, 3, 0.1));
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))?;
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view()))?;
    let got = gpu_forward(gpu, &conv, &x).await?;
    out.push(entry(
        "conv 3x3 dilation 4, bias, ReLU",
        max_abs(&got, &want),
        1e-4,
    ));

    // A front-end-like plain convolution, unpadded, wider reduction.
    let spec = Conv2d::new(32, 16, 3);
    let x = array4([1, 32, 17, 21], 4, 1.0);
    let w = array4(spec.weight_shape(), 5, 0.1);
    let b = Array1::from(noise(16, 6, 0.1));
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))?;
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view()))?;
    let got = gpu_forward(gpu, &conv, &x).await?;
    out.push(entry("conv 3x3 32->16", max_abs(&got, &want), 1e-4));

    // 1x1 convolution (fc7, final).
    let spec = Conv2d::new(24, 11, 1);
    let x = array4([1, 24, 9, 13], 7, 1.0);
    let w = array4(spec.weight_shape(), 8, 0.2);
    let b = Array1::from(noise(11, 9, 0.1));
    let conv = GpuConv2d::new(gpu, spec, w.view(), Some(b.view()))?;
    let want = reference::conv2d(x.view(), &spec, w.view(), Some(b.view()))?;
    let got = gpu_forward(gpu, &conv, &x).await?;
    out.push(entry("conv 1x1", max_abs(&got, &want), 1e-4));

    // Caffe's max pooling (ceil rounding).
    let spec = MaxPool2d::caffe(2, 2);
    let x = array4([1, 5, 15, 12], 10, 1.0);
    let want = reference::max_pool2d(x.view(), &spec)?;
    let got = gpu_forward(gpu, &GpuMaxPool2d::new(spec), &x).await?;
    out.push(entry(
        "max pool 2x2 stride 2, ceil",
        max_abs(&got, &want),
        0.0,
    ));

    // Softmax over channels.
    let x = array4([1, 11, 8, 9], 11, 4.0);
    let want = reference::softmax(x.view());
    let got = gpu_forward(gpu, &GpuSoftmax, &x).await?;
    out.push(entry("softmax", max_abs(&got, &want), 1e-5));

    // Bilinear x8 zoom.
    let spec = Zoom { factor: 8 };
    let x = array4([1, 3, 5, 7], 12, 1.0);
    let want = reference::zoom(x.view(), &spec)?;
    let got = gpu_forward(gpu, &GpuZoom::new(spec), &x).await?;
    out.push(entry("zoom x8", max_abs(&got, &want), 1e-5));

    // Cityscapes' per-channel bilinear deconvolution.
    let spec = Deconv2d::bilinear(4, 8);
    let x = array4([1, 4, 6, 5], 13, 1.0);
    let w = Array4::from_shape_vec(spec.weight_shape(), spec.bilinear_weights())
        .map_err(|e| dilated::Error::Internal(e.to_string()))?;
    let want = reference::deconv2d(x.view(), &spec, w.view())?;
    let got = gpu_forward(gpu, &GpuDeconv2d::new(gpu, spec, w.view())?, &x).await?;
    out.push(entry("deconv x8 bilinear", max_abs(&got, &want), 1e-5));

    // Argmax: labels must match exactly.
    let x = array4([1, 7, 10, 12], 14, 1.0);
    let want = reference::argmax(x.view());
    let t = gpu.upload(x.view())?;
    let got = gpu.argmax_async(&t).await?;
    let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    out.push(entry("argmax", wrong as f32, 0.0));

    // A whole width-reduced network (front-end and context module, CamVid's topology, widths
    // divided by 32) on one tile of 380x380 pixels, against the CPU plan; without the final
    // softmax, which would hide differences in saturated outputs. The error is relative to
    // the largest score.
    let full = Model::CamVid.build(&PresetOptions {
        width_divisor: 32,
        ..Default::default()
    })?;
    let net = full.sub_network(0..full.layers().len() - 1)?;
    let shape = Shape::new(1, 3, 380, 380);
    let x = array4(shape.dims(), 15, 100.0);
    let plan = Plan::new(gpu, &net, shape, &PlanOptions::default())?;
    let got = plan.forward_async(x.view()).await?;
    let want = CpuPlan::new(&net)?.forward(x.view())?;
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    out.push(entry(
        "dilation8_camvid / 32, one 380x380 tile (scores before softmax, relative)",
        max_abs(&got, &want) / scale,
        1e-4,
    ));
    drop(plan);

    // The same network within half the GPU memory it needs whole: a banded plan, its
    // front-end run band after band (every band's read-back awaited), against the same CPU
    // result; then profiled, every layer timed. Not banded is a failure.
    let whole = Plan::estimate_memory(&net, shape, &PlanOptions::default())?;
    let plan = Plan::new(gpu, &net, shape, &PlanOptions::with_max_memory(whole / 2))?;
    let bands = plan.bands();
    let got = plan.forward_async(x.view()).await?;
    out.push(banded(
        entry(
            "dilation8_camvid / 32, 380x380 within half its memory, in bands (relative)",
            max_abs(&got, &want) / scale,
            1e-4,
        ),
        bands,
    ));
    let (got, times) = plan.forward_profiled_async(x.view()).await?;
    let timed = times.layers.len() == net.layers().len();
    out.push(banded(
        entry(
            "the same in bands, profiled: every layer timed (relative)",
            if timed {
                max_abs(&got, &want) / scale
            } else {
                f32::INFINITY
            },
            1e-4,
        ),
        bands,
    ));
    Ok(out)
}

/// A check's entry with the number of bands its plan ran in; fewer than two fail it.
fn banded(mut entry: serde_json::Value, bands: usize) -> serde_json::Value {
    entry["bands"] = bands.into();
    if bands < 2 {
        entry["ok"] = false.into();
    }
    entry
}
