//! The Python module `dilated._dilated`, re-exported by the package `dilated`: the
//! dilated-convolution segmentation networks of Yu & Koltun on any GPU wgpu reaches, or on
//! the CPU, with NumPy arrays in and out.
//!
//! Every call that computes releases the interpreter (`Python::detach`), so Python threads
//! overlap; every error of the `dilated` crate becomes a `dilated.DilatedError` (a
//! `RuntimeError`) with the crate's message, and GPU failures a `dilated.GpuError`, a subclass.
//! Bad input never panics: shapes and dtypes are checked here or by the crate.

mod engine;

use std::ffi::CString;
use std::path::PathBuf;

use dilated::Error;
use dilated::gpu::AdapterReport;
use dilated::gpu::candidate_adapters;
use dilated::net::{Model as Preset, Upsampling};
use dilated::segment::{colorize, overlay, palette as preset_palette};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use numpy::{
    PyArray, PyArray2, PyArray3, PyArray4, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyRuntimeWarning, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::engine::{Device, Engine, Settings};

create_exception!(
    dilated,
    DilatedError,
    PyRuntimeError,
    "An error reported by the dilated library, with its message. `kind` names the error \
     (e.g. \"UnknownModel\", \"Weights\", \"InvalidSpec\", \"NoAdapter\")."
);

create_exception!(
    dilated,
    GpuError,
    DilatedError,
    "A failure of the GPU rather than of the request: no adapter, no device, a lost device, \
     out of GPU memory, beyond the device's limits. The same work may succeed on the CPU."
);

/// The crate's error as a Python exception: [`GpuError`] for GPU failures, [`DilatedError`]
/// otherwise, with the crate's message and the variant's name as `kind`.
fn py_err(py: Python<'_>, error: Error) -> PyErr {
    let debug = format!("{error:?}");
    let kind = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string();
    let err = if error.is_gpu_failure() {
        GpuError::new_err(error.to_string())
    } else {
        DilatedError::new_err(error.to_string())
    };
    // Setting an attribute on a fresh exception instance cannot fail in practice; if it did,
    // the exception would still carry its message.
    let _ = err.value(py).setattr("kind", kind);
    err
}

/// An invalid argument, worded as the crate words invalid specifications.
fn invalid(context: &str, reason: String) -> Error {
    Error::InvalidSpec {
        context: context.into(),
        reason,
    }
}

/// Raises a Python warning of category `W` (an exception only where filters turn it into one).
fn warn<W: pyo3::PyTypeInfo>(py: Python<'_>, message: &str) -> PyResult<()> {
    let text = CString::new(message.replace('\0', " "))
        .unwrap_or_else(|_| CString::from(c"(unprintable warning)"));
    PyErr::warn(py, py.get_type::<W>().as_any(), &text, 1)
}

/// `obj` as a NumPy array: arrays as they are, anything else through `numpy.asarray` (a PIL
/// image, nested lists).
fn as_array<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return Ok(array.clone());
    }
    let converted = obj.py().import("numpy")?.call_method1("asarray", (obj,))?;
    Ok(converted.cast_into::<PyUntypedArray>()?)
}

/// The dtype's name and the shape, for error messages.
fn describe(array: &Bound<'_, PyUntypedArray>) -> String {
    format!("dtype {} and shape {:?}", array.dtype(), array.shape())
}

/// Borrows an `[height, width, 3]` uint8 array (RGB) without copying it.
fn rgb_image<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<numpy::PyReadonlyArray3<'py, u8>> {
    let array = as_array(obj)?;
    let ok = array.ndim() == 3
        && array.shape()[2] == 3
        && array.dtype().is_equiv_to(&numpy::dtype::<u8>(py));
    if !ok {
        let reason = format!(
            "expected an HxWx3 uint8 RGB array, got {}",
            describe(&array)
        );
        return Err(py_err(py, invalid(what, reason)));
    }
    let typed = array.cast_into::<PyArray3<u8>>()?;
    typed
        .try_readonly()
        .map_err(|e| py_err(py, invalid(what, e.to_string())))
}

/// `[height, width, 3]` RGB bytes as the BGR values the crate reads images into
/// ([`dilated::io::load_image_bgr`]).
fn rgb_to_bgr(rgb: ArrayView3<u8>) -> Array3<f32> {
    let (h, w, _) = rgb.dim();
    Array3::from_shape_fn((h, w, 3), |(y, x, c)| rgb[[y, x, 2 - c]] as f32)
}

/// BGR values from the crate's image reader back to RGB bytes (they are whole numbers in
/// 0..=255, so nothing is lost).
fn bgr_to_rgb(bgr: &Array3<f32>) -> Array3<u8> {
    let (h, w, _) = bgr.dim();
    Array3::from_shape_fn((h, w, 3), |(y, x, c)| bgr[[y, x, 2 - c]] as u8)
}

/// An RGB image as a NumPy array, moved (not copied) into Python.
fn image_to_py(py: Python<'_>, image: image::RgbImage) -> PyResult<Bound<'_, PyArray3<u8>>> {
    let (w, h) = image.dimensions();
    let array = Array3::from_shape_vec((h as usize, w as usize, 3), image.into_raw())
        .map_err(|e| py_err(py, Error::Internal(format!("image buffer: {e}"))))?;
    Ok(PyArray::from_owned_array(py, array))
}

/// The dict `dilated.adapters()` lists for one adapter.
fn adapter_dict<'py>(
    py: Python<'py>,
    index: Option<usize>,
    report: &AdapterReport,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let i = &report.info;
    if let Some(index) = index {
        d.set_item("index", index)?;
    }
    d.set_item("name", &i.name)?;
    d.set_item("backend", format!("{:?}", i.backend))?;
    d.set_item("device_type", format!("{:?}", i.device_type))?;
    d.set_item("driver", &i.driver)?;
    d.set_item("driver_info", &i.driver_info)?;
    d.set_item("vendor", i.vendor)?;
    d.set_item("device", i.device)?;
    d.set_item("pci_bus_id", &i.device_pci_bus_id)?;
    d.set_item("max_buffer_size", report.limits.max_buffer_size)?;
    d.set_item(
        "max_storage_buffer_binding_size",
        report.limits.max_storage_buffer_binding_size,
    )?;
    d.set_item("subgroups", report.subgroups)?;
    d.set_item("timestamps", report.timestamps)?;
    d.set_item("shader_f16", report.shader_f16)?;
    Ok(d)
}

/// Every adapter a model's `adapter=` index counts, in that order, as dicts with the keys
/// `index`, `name`, `backend` (e.g. "Vulkan"), `device_type` ("DiscreteGpu", "IntegratedGpu",
/// "VirtualGpu", "Cpu" for software adapters such as lavapipe, "Other"), `driver`,
/// `driver_info`, `vendor`, `device`, `pci_bus_id` (e.g. "0000:01:00.0", empty where the
/// driver does not say), `max_buffer_size`, `max_storage_buffer_binding_size`, `subgroups`,
/// `timestamps` and `shader_f16`.
///
/// The adapters are those on the backends `WGPU_BACKEND` names (default: Vulkan, Metal and
/// DX12, or OpenGL when those have none), in wgpu's enumeration order.
#[pyfunction]
fn adapters(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let options = dilated::GpuOptions::from_env();
    let reports = py.detach(|| candidate_adapters(&options));
    let list = PyList::empty(py);
    for (index, report) in reports.iter().enumerate() {
        list.append(adapter_dict(py, Some(index), report)?)?;
    }
    Ok(list)
}

/// The names of the four presets.
#[pyfunction]
fn models() -> Vec<&'static str> {
    Preset::ALL.iter().map(|m| m.name()).collect()
}

/// A preset by name, as a Python error when unknown.
fn preset(py: Python<'_>, name: &str) -> PyResult<Preset> {
    Preset::from_name(name).map_err(|e| py_err(py, e))
}

/// The dataset palette of `model` (a preset name) as a `[classes, 3]` uint8 RGB array: the
/// colours `dilated segment` paints each class in.
#[pyfunction]
fn palette<'py>(py: Python<'py>, model: &str) -> PyResult<Bound<'py, PyArray2<u8>>> {
    Ok(palette_array(py, preset(py, model)?))
}

/// A preset's palette as a NumPy array.
fn palette_array(py: Python<'_>, model: Preset) -> Bound<'_, PyArray2<u8>> {
    let colours = preset_palette(model);
    let array = Array2::from_shape_fn((colours.len(), 3), |(i, c)| colours[i][c]);
    PyArray::from_owned_array(py, array)
}

/// The class names of `model`'s dataset (a preset name), one per class id.
#[pyfunction]
fn class_names(py: Python<'_>, model: &str) -> PyResult<Vec<&'static str>> {
    Ok(dilated::segment::class_names(preset(py, model)?).to_vec())
}

/// Reads an image file (PNG, JPEG or BMP) as an `[height, width, 3]` uint8 RGB array, decoded
/// exactly as `dilated segment` decodes it.
#[pyfunction]
fn load_image(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyArray3<u8>>> {
    let rgb = py
        .detach(|| dilated::io::load_image_bgr(&path).map(|bgr| bgr_to_rgb(&bgr)))
        .map_err(|e| py_err(py, e))?;
    Ok(PyArray::from_owned_array(py, rgb))
}

/// Decodes an image file's bytes (PNG, JPEG or BMP) as an `[height, width, 3]` uint8 RGB
/// array with the decoder `dilated segment` uses.
#[pyfunction]
fn decode_image<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let bytes = data.as_bytes();
    let decoded = py.detach(|| {
        let image_error = |reason: String| Error::Image {
            path: "<bytes>".into(),
            reason,
        };
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| image_error(e.to_string()))?
            .decode()
            .map(|img| img.to_rgb8())
            .map_err(|e| image_error(e.to_string()))
    });
    image_to_py(py, decoded.map_err(|e| py_err(py, e))?)
}

/// Class ids of any integer dtype as `u32`; negative ids become ids past every palette
/// (painted white, as out-of-range ids are).
fn label_ids(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Array2<u32>> {
    let array = as_array(obj)?;
    let kind = array.dtype().kind();
    if array.ndim() != 2 || !(kind == b'u' || kind == b'i') {
        let reason = format!("expected an HxW integer array, got {}", describe(&array));
        return Err(py_err(py, invalid("labels", reason)));
    }
    if array.dtype().is_equiv_to(&numpy::dtype::<u8>(py)) {
        let typed = array.cast_into::<PyArray2<u8>>()?;
        let view = typed
            .try_readonly()
            .map_err(|e| py_err(py, invalid("labels", e.to_string())))?;
        return Ok(view.as_array().mapv(u32::from));
    }
    let wide = array.call_method1("astype", ("int64",))?;
    let typed = wide.cast_into::<PyArray2<i64>>()?;
    let view = typed
        .try_readonly()
        .map_err(|e| py_err(py, invalid("labels", e.to_string())))?;
    Ok(view
        .as_array()
        .mapv(|v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// Colours from a `[n, 3]` uint8-compatible array.
fn colours_from_array(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<[u8; 3]>> {
    let array = as_array(obj)?;
    let ok = array.ndim() == 2
        && array.shape()[1] == 3
        && array.dtype().is_equiv_to(&numpy::dtype::<u8>(py));
    if !ok {
        let reason = format!(
            "expected a model, a model name or an Nx3 uint8 array of RGB colours, got {}",
            describe(&array)
        );
        return Err(py_err(py, invalid("palette", reason)));
    }
    let typed = array.cast_into::<PyArray2<u8>>()?;
    let view = typed
        .try_readonly()
        .map_err(|e| py_err(py, invalid("palette", e.to_string())))?;
    Ok(view
        .as_array()
        .rows()
        .into_iter()
        .map(|row| [row[0], row[1], row[2]])
        .collect())
}

/// Writes `labels` (`[height, width]` class ids) as a PNG in `palette`'s colours, byte for
/// byte as `dilated segment` writes it: `palette` is a `Model`, a preset name, or an `[n, 3]`
/// uint8 array of RGB colours (ids without a colour are white). With `overlay_image` (the
/// `[height, width, 3]` uint8 RGB image that was segmented) the colours are blended half
/// and half over it, as `dilated segment --overlay` does. The file appears only when complete.
#[pyfunction]
#[pyo3(signature = (path, labels, palette, overlay_image=None))]
fn save_labels_png(
    py: Python<'_>,
    path: PathBuf,
    labels: &Bound<'_, PyAny>,
    palette: &Bound<'_, PyAny>,
    overlay_image: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let colours = if let Ok(model) = palette.cast::<Model>() {
        preset_palette(model.get().engine.preset())
    } else if let Ok(name) = palette.extract::<String>() {
        preset_palette(preset(py, &name)?)
    } else {
        colours_from_array(py, palette)?
    };
    let ids = label_ids(py, labels)?;
    let image = match overlay_image {
        Some(obj) => Some(rgb_image(py, obj, "overlay image")?),
        None => None,
    };
    let image_view = image.as_ref().map(|i| i.as_array());
    py.detach(|| write_labels(&path, ids.view(), &colours, image_view))
        .map_err(|e| py_err(py, e))
}

/// Colours the labels (blended over the image when given) and writes the PNG, as the
/// command-line tool does.
fn write_labels(
    path: &std::path::Path,
    labels: ArrayView2<u32>,
    colours: &[[u8; 3]],
    image: Option<ArrayView3<u8>>,
) -> Result<(), Error> {
    let labels = labels.to_owned();
    let coloured = colorize(&labels, colours);
    let picture = match image {
        Some(rgb) => {
            let (h, w) = labels.dim();
            let (ih, iw, _) = rgb.dim();
            if (ih, iw) != (h, w) {
                return Err(Error::ShapeMismatch {
                    context: "overlay".into(),
                    left_name: "labels",
                    left: vec![h, w],
                    right_name: "image",
                    right: vec![ih, iw],
                });
            }
            overlay(&rgb_to_bgr(rgb), &coloured, 0.5)
        }
        None => coloured,
    };
    dilated::io::save_png(path, &picture)
}

/// An adapter chosen by position in `dilated.adapters()` or by a substring of its name.
#[derive(FromPyObject)]
enum AdapterChoice {
    /// Position in `dilated.adapters()`.
    Index(usize),
    /// Case-insensitive substring of the adapter's name.
    Name(String),
}

/// A memory size: bytes, or text such as "512M" or "1.5G".
#[derive(FromPyObject)]
enum MemorySize {
    /// Bytes.
    Bytes(u64),
    /// Text with a binary unit.
    Text(String),
}

/// A segmentation network (one of the four released presets) with its weights, bound to a
/// GPU or the CPU.
///
/// `Model(name, weights=None, *, width_divisor=1, device="auto", adapter=None, tile=None,
/// max_memory=None, precision="f32", cpu_precision="f32", seed=0)`:
///
/// - `name`: `dilation8_pascal_voc`, `dilation8_camvid`, `dilation7_kitti` or
///   `dilation10_cityscapes` (or the dataset part alone: `pascal_voc`, `camvid`, ...).
/// - `weights`: a `.caffemodel` (as the authors publish them) or `.safetensors` file. Without
///   one the network keeps its random initial weights (those of `dilated segment` without
///   `--weights`): a `UserWarning` says so and `random_weights` is true; the labels are then
///   meaningless.
/// - `width_divisor`: divides every front-end width (1 = the released size; weights must
///   match).
/// - `device`: `"auto"` (the GPU, else the CPU, with a `RuntimeWarning` saying why: the
///   command-line tool's default), `"gpu"` (GPU failures are errors) or `"cpu"`.
/// - `adapter`: the GPU adapter, by index into `dilated.adapters()` or by a substring of its
///   name (default: `WGPU_ADAPTER_NAME`, else wgpu's high-performance choice).
/// - `tile`: `(height, width)` of the tiles `segment` runs (default: the model's deploy input
///   size; each side 372 plus a multiple of 8), as `dilated segment --tile`.
/// - `max_memory`: a GPU memory budget in bytes or as text ("512M", "1.5G"), as
///   `--max-memory`; results are unchanged.
/// - `precision`: `"f32"` or `"f16"`, how the GPU stores weights and activations, as
///   `--precision` (f16 halves the GPU memory and needs an adapter with `SHADER_F16`).
/// - `cpu_precision`: `"f32"` or `"bf16"` for the network's convolutions when it runs on the
///   CPU, as `--cpu-precision` (bf16 needs AVX-512 BF16 and changes results by about 1e-2
///   relative; refused, when the CPU runs, on CPUs without it).
/// - `seed`: seed of the random initial weights (`dilated` uses 0).
///
/// Loading and compiling release the interpreter, and so does every computation; one model
/// may be used from several threads at once (GPU passes are serialised, CPU passes overlap).
#[pyclass(frozen, module = "dilated")]
struct Model {
    engine: Engine,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (
        name,
        weights=None,
        *,
        width_divisor=1,
        device="auto",
        adapter=None,
        tile=None,
        max_memory=None,
        precision="f32",
        cpu_precision="f32",
        seed=0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        weights: Option<PathBuf>,
        width_divisor: usize,
        device: &str,
        adapter: Option<AdapterChoice>,
        tile: Option<(usize, usize)>,
        max_memory: Option<MemorySize>,
        precision: &str,
        cpu_precision: &str,
        seed: u64,
    ) -> PyResult<Self> {
        let precision: dilated::Precision = precision
            .parse()
            .map_err(|e: dilated::Error| PyValueError::new_err(e.to_string()))?;
        let cpu_precision: dilated::cpu::fast::CpuPrecision = cpu_precision
            .parse()
            .map_err(|e: dilated::Error| PyValueError::new_err(e.to_string()))?;
        let device = Device::parse(device).map_err(PyValueError::new_err)?;
        let mut gpu = dilated::GpuOptions::from_env();
        match adapter {
            Some(_) if device == Device::Cpu => {
                return Err(PyValueError::new_err(
                    "adapter= chooses a GPU adapter; it cannot be combined with device=\"cpu\"",
                ));
            }
            Some(AdapterChoice::Index(index)) => gpu.adapter_index = Some(index),
            Some(AdapterChoice::Name(name)) => gpu.adapter_name = Some(name),
            None => {}
        }
        let max_memory = match max_memory {
            None => None,
            Some(MemorySize::Bytes(bytes)) => Some(bytes),
            Some(MemorySize::Text(text)) => {
                Some(dilated::plan::parse_memory_size(&text).map_err(|e| py_err(py, e))?)
            }
        };
        let settings = Settings {
            preset: preset(py, name)?,
            weights,
            width_divisor,
            seed,
            device,
            gpu,
            tile,
            plan: dilated::PlanOptions {
                max_memory,
                precision,
                cpu_precision,
                ..Default::default()
            },
        };
        let engine = py
            .detach(|| Engine::open(settings))
            .map_err(|e| py_err(py, e))?;
        if engine.weights().is_none() {
            warn::<PyUserWarning>(
                py,
                "no weights given: using randomly initialised weights; the labels are meaningless",
            )?;
        }
        for warning in engine.warnings() {
            warn::<PyRuntimeWarning>(py, warning)?;
        }
        if let Some(why) = engine.no_gpu() {
            warn::<PyRuntimeWarning>(py, &format!("no GPU ({why}); running on the CPU"))?;
        }
        Ok(Self { engine })
    }

    /// Segments an `[height, width, 3]` uint8 RGB image (a NumPy array, or anything
    /// `numpy.asarray` turns into one, such as a PIL image) exactly as `dilated segment` does:
    /// returns the `[height, width]` uint8 class ids or, with `probs=True`, the pair
    /// `(labels, probabilities)` with the `[classes, height, width]` float32 probabilities.
    #[pyo3(signature = (image, probs=false))]
    fn segment<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        probs: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let image = rgb_image(py, image, "image")?;
        let view = image.as_array();
        let ran = py
            .detach(|| {
                let bgr = rgb_to_bgr(view);
                self.engine.segment(bgr.view(), probs)
            })
            .map_err(|e| py_err(py, e))?;
        self.warn_fallback(py, ran.on_gpu, ran.fallback_reason.as_deref(), "segmenting")?;
        let result = ran.output;
        // Class ids fit a byte: the presets have at most 21 classes.
        let labels = PyArray::from_owned_array(py, result.labels.mapv(|l| l as u8));
        match (probs, result.probabilities) {
            (true, Some(p)) => {
                let p = PyArray::from_owned_array(py, p);
                Ok((labels, p).into_pyobject(py)?.into_any())
            }
            (true, None) => Err(py_err(
                py,
                Error::Internal("the probabilities were asked for but not computed".into()),
            )),
            (false, _) => Ok(labels.into_any()),
        }
    }

    /// Runs the network on an NCHW float32 array (3 channels, BGR, mean subtracted; read
    /// without copying) and returns its raw output (after the model's softmax and, for
    /// Cityscapes, its upsampling), exactly as `dilated run` does.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray4<f32>>> {
        let array = as_array(x)?;
        let ok = array.ndim() == 4 && array.dtype().is_equiv_to(&numpy::dtype::<f32>(py));
        if !ok {
            let reason = format!("expected an NCHW float32 array, got {}", describe(&array));
            return Err(py_err(py, invalid("input", reason)));
        }
        let typed = array.cast_into::<PyArray4<f32>>()?;
        let input = typed
            .try_readonly()
            .map_err(|e| py_err(py, invalid("input", e.to_string())))?;
        let view = input.as_array();
        let (ran, bad) = py
            .detach(|| {
                let bad = view.iter().filter(|v| !v.is_finite()).count();
                self.engine.forward(view).map(|ran| (ran, bad))
            })
            .map_err(|e| py_err(py, e))?;
        if bad > 0 {
            warn::<PyRuntimeWarning>(
                py,
                &format!(
                    "the input has {bad} NaN or infinite values; they propagate into the output"
                ),
            )?;
        }
        self.warn_fallback(py, ran.on_gpu, ran.fallback_reason.as_deref(), "running")?;
        Ok(PyArray::from_owned_array(py, ran.output))
    }

    /// Writes the network's weights as `.safetensors` or `.caffemodel` (by extension): the
    /// loaded ones, or the random initial ones.
    fn save_weights(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.engine.save_weights(&path))
            .map_err(|e| py_err(py, e))
    }

    /// The model's facts and per-layer report for an input of `size` = `(height, width)`
    /// (default: the tile size) as a dict: `model`, `classes`, `input_size`, `tile`, `margin`,
    /// `mean_bgr`, `upsampling`, `width_divisor`, `weights`, `random_weights`, `device`
    /// (where it runs: "gpu" or "cpu"), `requested_device`, `adapter`, `no_gpu_reason`,
    /// `gpu_memory`, `params`, `flops` and `layers` (one dict per layer: `name`, `kind`,
    /// `output_shape`, `receptive_field`, `stride`, `flops`, `params`, `activation_bytes`).
    #[pyo3(signature = (size=None))]
    fn info<'py>(
        &self,
        py: Python<'py>,
        size: Option<(usize, usize)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let e = &self.engine;
        let info = e.info();
        let report = e.report(size).map_err(|err| py_err(py, err))?;
        let d = PyDict::new(py);
        d.set_item("model", info.name)?;
        d.set_item("classes", info.classes)?;
        d.set_item("input_size", info.input_size)?;
        d.set_item("tile", e.tile())?;
        d.set_item("margin", info.margin)?;
        d.set_item("mean_bgr", info.mean_bgr.to_vec())?;
        d.set_item(
            "upsampling",
            match info.upsampling {
                Upsampling::Zoom(f) => format!("bilinear zoom x{f}"),
                Upsampling::Deconvolution => "deconvolution".to_string(),
            },
        )?;
        d.set_item("width_divisor", e.width_divisor())?;
        d.set_item("weights", self.weights())?;
        d.set_item("random_weights", e.weights().is_none())?;
        d.set_item("device", self.device())?;
        d.set_item(
            "requested_device",
            match e.device() {
                Device::Auto => "auto",
                Device::Gpu => "gpu",
                Device::Cpu => "cpu",
            },
        )?;
        d.set_item("adapter", self.adapter(py)?)?;
        d.set_item("no_gpu_reason", e.no_gpu())?;
        d.set_item("gpu_memory", e.gpu_memory())?;
        d.set_item("params", e.network().params())?;
        d.set_item("flops", report.iter().map(|l| l.flops).sum::<u64>())?;
        let layers = PyList::empty(py);
        for l in &report {
            let layer = PyDict::new(py);
            layer.set_item("name", &l.name)?;
            layer.set_item("kind", l.kind)?;
            let [n, c, h, w] = l.output.dims();
            layer.set_item("output_shape", (n, c, h, w))?;
            layer.set_item("receptive_field", l.receptive_field)?;
            layer.set_item("stride", l.stride)?;
            layer.set_item("flops", l.flops)?;
            layer.set_item("params", l.params)?;
            layer.set_item("activation_bytes", l.activation_bytes)?;
            layers.append(layer)?;
        }
        d.set_item("layers", layers)?;
        Ok(d)
    }

    /// The preset's name, e.g. "dilation10_cityscapes".
    #[getter]
    fn name(&self) -> &'static str {
        self.engine.info().name
    }

    /// The class names, one per class id.
    #[getter]
    fn classes(&self) -> Vec<&'static str> {
        dilated::segment::class_names(self.engine.preset()).to_vec()
    }

    /// The dataset's colours, a `[classes, 3]` uint8 RGB array (class id -> colour).
    #[getter]
    fn palette<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<u8>> {
        palette_array(py, self.engine.preset())
    }

    /// Where the model runs: "gpu" or "cpu".
    #[getter]
    fn device(&self) -> &'static str {
        if self.engine.gpu().is_some() {
            "gpu"
        } else {
            "cpu"
        }
    }

    /// The GPU adapter the model runs on (a dict as `dilated.adapters()` lists, without
    /// `index`), or None on the CPU.
    #[getter]
    fn adapter<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.engine
            .gpu()
            .map(|gpu| adapter_dict(py, None, gpu.adapter()))
            .transpose()
    }

    /// The weights file as given, or None for random initial weights.
    #[getter]
    fn weights(&self) -> Option<String> {
        self.engine
            .weights()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// True when no weights were loaded: the labels mean nothing.
    #[getter]
    fn random_weights(&self) -> bool {
        self.engine.weights().is_none()
    }

    /// The width divisor.
    #[getter]
    fn width_divisor(&self) -> usize {
        self.engine.width_divisor()
    }

    /// The tile size `(height, width)` `segment` runs the network on.
    #[getter]
    fn tile(&self) -> (usize, usize) {
        self.engine.tile()
    }

    /// The preset, weights, width divisor and where the model runs.
    fn __repr__(&self) -> String {
        let weights = match self.engine.weights() {
            Some(p) => format!("{:?}", p.display().to_string()),
            None => "None (random weights)".to_string(),
        };
        format!(
            "Model({:?}, weights={weights}, width_divisor={}, device={:?})",
            self.engine.info().name,
            self.engine.width_divisor(),
            self.device()
        )
    }
}

impl Model {
    /// Warns when a run that was meant for the GPU ran on the CPU because the GPU failed (a
    /// model without a GPU said so once, when it was made).
    fn warn_fallback(
        &self,
        py: Python<'_>,
        on_gpu: bool,
        reason: Option<&str>,
        doing: &str,
    ) -> PyResult<()> {
        match (on_gpu, reason, self.engine.gpu()) {
            (false, Some(why), Some(_)) => warn::<PyRuntimeWarning>(
                py,
                &format!("the GPU run failed ({why}); {doing} on the CPU"),
            ),
            _ => Ok(()),
        }
    }
}

/// The dilated-convolution segmentation networks of Yu & Koltun on any GPU (wgpu: Vulkan,
/// Metal, DX12, OpenGL) or on the CPU.
#[pymodule(name = "_dilated")]
mod module {
    #[pymodule_export]
    use super::{
        DilatedError, GpuError, Model, adapters, class_names, decode_image, load_image, models,
        palette, save_labels_png,
    };

    use pyo3::prelude::*;

    /// Adds the version.
    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
