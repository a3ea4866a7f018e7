//! safetensors files with tensors named `<layer>.weight` and `<layer>.bias`.
//!
//! The header is parsed and validated by the `safetensors` crate (its `Metadata`); the
//! tensors are then read one at a time straight from the file into their arrays, so loading
//! needs about the memory of the arrays, not of the file as well.

use std::collections::HashMap;
#[cfg(feature = "fs")]
use std::io::BufReader;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
#[cfg(feature = "fs")]
use std::path::Path;

use ::safetensors::tensor::{Dtype, Metadata, TensorInfo};
use ndarray::{Array1, Array4};

use super::{LayerWeights, WeightSet};
use crate::error::{Error, Result};
use crate::io::{BYTES_PATH, read_error};
#[cfg(feature = "fs")]
use crate::io::{open, write_atomic};

const FORMAT: &str = "safetensors";
/// The `safetensors` crate's own limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;
const CHUNK: usize = 1 << 16;

/// Reads layer weights from a safetensors file.
///
/// Tensors named `<layer>.weight` (4-D `[out, in, kh, kw]`, or 2-D `[out, in]` read as
/// `[out, in, 1, 1]`) and `<layer>.bias` (`out` elements) must be `F32`; other tensors (for
/// example `running_mean`) are ignored. Layers come in the order of their data in the file.
///
/// Errors: [`Error::Io`] if the file cannot be read; [`Error::InvalidFile`] naming the tensor
/// for a corrupt or truncated file, another dtype, an unsupported rank, a bias without a
/// weight or of the wrong length, or a file with no `.weight` tensor.
#[cfg(feature = "fs")]
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<WeightSet> {
    let path = path.as_ref();
    let (file, len) = open(path)?;
    parse(
        BufReader::with_capacity(1 << 20, file),
        len,
        &path.display().to_string(),
    )
}

/// [`read_safetensors`] on an in-memory buffer.
pub fn read_safetensors_bytes(bytes: &[u8]) -> Result<WeightSet> {
    parse(Cursor::new(bytes), bytes.len() as u64, BYTES_PATH)
}

/// Writes `weights` as a safetensors file (`<layer>.weight`, `<layer>.bias`, all `F32`, in the
/// set's order, with `"format": "pt"` metadata), through a temporary file in the same
/// directory renamed over `path`. The header is built and validated with the `safetensors`
/// crate's `Metadata`; tensor data is streamed from the arrays.
#[cfg(feature = "fs")]
pub fn write_safetensors(path: impl AsRef<Path>, weights: &WeightSet) -> Result<()> {
    let path = path.as_ref();
    let header = header(weights, &path.display().to_string())?;
    write_atomic(path, |w| write_file(w, &header, weights))
}

/// [`write_safetensors`] into memory.
pub fn encode_safetensors(weights: &WeightSet) -> Result<Vec<u8>> {
    let header = header(weights, BYTES_PATH)?;
    let mut out = Vec::new();
    write_file(&mut out, &header, weights).map_err(|source| Error::Io {
        path: BYTES_PATH.to_string(),
        source,
    })?;
    Ok(out)
}

/// The JSON header of `weights`, padded with spaces to a multiple of 8 bytes; `path` names the
/// file in errors.
fn header(weights: &WeightSet, path: &str) -> Result<Vec<u8>> {
    let mut infos: Vec<(String, TensorInfo)> = Vec::with_capacity(2 * weights.len());
    let mut offset = 0usize;
    let mut push = |name: String, shape: &[usize], len: usize| {
        let info = TensorInfo {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data_offsets: (offset, offset + 4 * len),
        };
        offset += 4 * len;
        infos.push((name, info));
    };
    for (name, w) in weights.iter() {
        w.validate(name)?;
        push(format!("{name}.weight"), w.weight.shape(), w.weight.len());
        if let Some(b) = &w.bias {
            push(format!("{name}.bias"), b.shape(), b.len());
        }
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let invalid_set = |e: &dyn std::fmt::Display| {
        Error::Weights(format!("{path}: cannot describe these weights: {e}"))
    };
    let metadata = Metadata::new(Some(meta), infos).map_err(|e| invalid_set(&e))?;
    let mut header = serde_json::to_vec(&metadata).map_err(|e| invalid_set(&e))?;
    // Pad the header with spaces so that the data starts 8-byte aligned, as the format's
    // reference writer does.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    Ok(header)
}

/// The header's length and bytes, then every tensor's data.
fn write_file(w: &mut impl Write, header: &[u8], weights: &WeightSet) -> io::Result<()> {
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header)?;
    let mut buf = Vec::with_capacity(CHUNK + 4);
    for (_, lw) in weights.iter() {
        let bias = lw.bias.iter().flat_map(|b| b.iter());
        for &v in lw.weight.iter().chain(bias) {
            buf.extend_from_slice(&v.to_le_bytes());
            if buf.len() >= CHUNK {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
    }
    w.write_all(&buf)
}

fn invalid(path: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_string(),
        format: FORMAT,
        reason: reason.into(),
    }
}

fn io_error(path: &str, e: io::Error) -> Error {
    read_error(path, FORMAT, e)
}

/// Reads `n_bytes` of little-endian f32 values.
fn read_f32s<R: Read>(r: &mut R, n_bytes: usize, path: &str) -> Result<Vec<f32>> {
    let count = n_bytes / 4;
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| invalid(path, format!("cannot allocate {count} values")))?;
    let mut buf = vec![0u8; CHUNK.min(n_bytes)];
    let mut left = n_bytes;
    while left > 0 {
        let k = left.min(CHUNK);
        r.read_exact(&mut buf[..k]).map_err(|e| io_error(path, e))?;
        out.extend(
            buf[..k]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        left -= k;
    }
    Ok(out)
}

#[derive(Default)]
struct Pending {
    weight: Option<Array4<f32>>,
    bias: Option<(Vec<usize>, Vec<f32>)>,
}

fn parse<R: Read + Seek>(mut r: R, len: u64, path: &str) -> Result<WeightSet> {
    let mut n8 = [0u8; 8];
    if len < 8 {
        return Err(invalid(
            path,
            format!("{len} bytes, too short for a header"),
        ));
    }
    r.read_exact(&mut n8).map_err(|e| io_error(path, e))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER || n > len - 8 {
        return Err(invalid(
            path,
            format!("header length {n} is larger than the file ({len} bytes) allows"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(|e| io_error(path, e))?;
    let meta: Metadata = serde_json::from_slice(&header)
        .map_err(|e| invalid(path, format!("invalid header: {e}")))?;
    drop(header);
    let data_start = 8 + n;
    if (meta.data_len() as u64).checked_add(data_start) != Some(len) {
        return Err(invalid(
            path,
            format!(
                "the header describes {} bytes of data but the file has {}",
                meta.data_len(),
                len - data_start
            ),
        ));
    }

    // Layers in the order of their tensors' data.
    let mut order: Vec<String> = Vec::new();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    for key in meta.offset_keys() {
        let (layer, is_weight) = if let Some(l) = key.strip_suffix(".weight") {
            (l, true)
        } else if let Some(l) = key.strip_suffix(".bias") {
            (l, false)
        } else {
            continue;
        };
        let Some(info) = meta.info(&key) else {
            continue;
        };
        if info.dtype != Dtype::F32 {
            return Err(invalid(
                path,
                format!(
                    "tensor {key:?} has dtype {:?}; only F32 is supported (convert with \
                     `tensor.float()` before saving)",
                    info.dtype
                ),
            ));
        }
        let (start, end) = info.data_offsets;
        r.seek(SeekFrom::Start(data_start + start as u64))
            .map_err(|e| io_error(path, e))?;
        let values = read_f32s(&mut r, end - start, path)?;
        let shape = info.shape.clone();
        let entry = pending.entry(layer.to_string()).or_insert_with(|| {
            order.push(layer.to_string());
            Pending::default()
        });
        if is_weight {
            let dims = match *shape.as_slice() {
                [o, i, h, w] => [o, i, h, w],
                [o, i] => [o, i, 1, 1],
                _ => {
                    return Err(invalid(
                        path,
                        format!(
                            "tensor {key:?} has shape {shape:?}; only 4-D (convolution) and \
                             2-D (linear) weights are supported"
                        ),
                    ));
                }
            };
            let a = Array4::from_shape_vec(dims, values)
                .map_err(|e| invalid(path, format!("tensor {key:?}: {e}")))?;
            entry.weight = Some(a);
        } else {
            entry.bias = Some((shape, values));
        }
    }

    let mut set = WeightSet::new();
    for layer in order {
        let Some(p) = pending.remove(&layer) else {
            continue;
        };
        let Some(weight) = p.weight else {
            return Err(invalid(
                path,
                format!("tensor \"{layer}.bias\" has no matching .weight"),
            ));
        };
        let bias = match p.bias {
            None => None,
            Some((shape, values)) => {
                let out = weight.dim().0;
                if values.len() != out {
                    return Err(invalid(
                        path,
                        format!(
                            "tensor \"{layer}.bias\" has shape {shape:?} ({} elements) but the \
                             weight has {out} output channels",
                            values.len()
                        ),
                    ));
                }
                Some(Array1::from(values))
            }
        };
        set.insert(layer, LayerWeights { weight, bias });
    }
    if set.is_empty() {
        return Err(invalid(path, "no tensor named <layer>.weight"));
    }
    Ok(set)
}
