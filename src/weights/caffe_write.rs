//! Writing `.caffemodel` files (current and legacy V1 forms), for converting weights to the
//! format Caffe reads and for tests of the reader.

use std::io::{self, Write};
#[cfg(feature = "fs")]
use std::path::Path;

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::WeightSet;
use super::caffe::{CHUNK, Kind, NET_LAYER, NET_LAYERS, V1_CONVOLUTION};
use crate::error::{Error, Result};
use crate::io::BYTES_PATH;
#[cfg(feature = "fs")]
use crate::io::write_atomic;

/// Writes `weights` as a `.caffemodel`: in the current form (`NetParameter.layer`, type
/// `"Convolution"`, shapes in `BlobShape`, bias of shape `[out]`) or, if `legacy`, in the V1
/// form (`NetParameter.layers`, type `CONVOLUTION`, shapes in `num`/`channels`/`height`/`width`,
/// bias of shape `1 x 1 x 1 x out`). The file is written to a temporary file in the same
/// directory, then renamed over `path`.
#[cfg(feature = "fs")]
pub fn write_caffemodel(path: impl AsRef<Path>, weights: &WeightSet, legacy: bool) -> Result<()> {
    let path = path.as_ref();
    validate_for_writing(weights, legacy)?;
    write_atomic(path, |w| write_net(w, weights, legacy))
}

/// [`write_caffemodel`] into memory.
pub fn encode_caffemodel(weights: &WeightSet, legacy: bool) -> Result<Vec<u8>> {
    validate_for_writing(weights, legacy)?;
    let mut out = Vec::new();
    write_net(&mut out, weights, legacy).map_err(|source| Error::Io {
        path: BYTES_PATH.to_string(),
        source,
    })?;
    Ok(out)
}

fn validate_for_writing(weights: &WeightSet, legacy: bool) -> Result<()> {
    for (name, w) in weights.iter() {
        w.validate(name)?;
        if name.is_empty() {
            return Err(Error::Weights(
                "a layer with an empty name cannot be written".into(),
            ));
        }
        if legacy && w.weight_shape().iter().any(|&d| i32::try_from(d).is_err()) {
            return Err(Error::Layer {
                layer: name.to_string(),
                reason: format!(
                    "shape {:?} does not fit the legacy format's int32 dimensions",
                    w.weight_shape()
                ),
            });
        }
    }
    Ok(())
}

/// `key + length + payload` for a length-delimited field.
fn delimited_len(tag: u32, payload: usize) -> usize {
    key_len(tag) + encoded_len_varint(payload as u64) + payload
}

/// Shape fields of a blob of `dims` (4 legacy dims, or any rank).
fn shape_fields(dims: &[usize], legacy: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    if legacy {
        for (i, &d) in dims.iter().enumerate() {
            encode_key(i as u32 + 1, WireType::Varint, &mut buf);
            encode_varint(d as u64, &mut buf);
        }
    } else {
        let dims_len: usize = dims.iter().map(|&d| encoded_len_varint(d as u64)).sum();
        let shape_len = if dims.is_empty() {
            0
        } else {
            delimited_len(1, dims_len)
        };
        encode_key(7, WireType::LengthDelimited, &mut buf);
        encode_varint(shape_len as u64, &mut buf);
        if !dims.is_empty() {
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint(dims_len as u64, &mut buf);
            for &d in dims {
                encode_varint(d as u64, &mut buf);
            }
        }
    }
    buf
}

/// Encoded length of a blob: its shape fields plus packed `data`.
fn blob_len(shape: &[u8], n: usize) -> usize {
    shape.len() + if n == 0 { 0 } else { delimited_len(5, 4 * n) }
}

fn write_blob<W: Write>(
    w: &mut W,
    blob_tag: u32,
    shape: &[u8],
    values: impl Iterator<Item = f32>,
    n: usize,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK + 8);
    encode_key(blob_tag, WireType::LengthDelimited, &mut buf);
    encode_varint(blob_len(shape, n) as u64, &mut buf);
    buf.extend_from_slice(shape);
    if n > 0 {
        encode_key(5, WireType::LengthDelimited, &mut buf);
        encode_varint(4 * n as u64, &mut buf);
        for v in values {
            buf.extend_from_slice(&v.to_le_bytes());
            if buf.len() >= CHUNK {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
    }
    w.write_all(&buf)
}

fn write_net<W: Write>(w: &mut W, weights: &WeightSet, legacy: bool) -> io::Result<()> {
    let (layer_tag, name_tag, blobs_tag) = if legacy {
        (NET_LAYERS, Kind::V1.name_tag(), Kind::V1.blobs_tag())
    } else {
        (NET_LAYER, Kind::Layer.name_tag(), Kind::Layer.blobs_tag())
    };
    const TYPE: &str = "Convolution";
    for (name, lw) in weights.iter() {
        let wdims = lw.weight_shape();
        let w_shape = shape_fields(&wdims, legacy);
        let b_shape = lw.bias.as_ref().map(|b| {
            if legacy {
                shape_fields(&[1, 1, 1, b.len()], true)
            } else {
                shape_fields(&[b.len()], false)
            }
        });
        let type_len = if legacy {
            key_len(5) + encoded_len_varint(V1_CONVOLUTION)
        } else {
            delimited_len(2, TYPE.len())
        };
        let mut layer_len = delimited_len(name_tag, name.len())
            + type_len
            + delimited_len(blobs_tag, blob_len(&w_shape, lw.weight.len()));
        if let (Some(s), Some(b)) = (&b_shape, &lw.bias) {
            layer_len += delimited_len(blobs_tag, blob_len(s, b.len()));
        }

        let mut head = Vec::new();
        encode_key(layer_tag, WireType::LengthDelimited, &mut head);
        encode_varint(layer_len as u64, &mut head);
        encode_key(name_tag, WireType::LengthDelimited, &mut head);
        encode_varint(name.len() as u64, &mut head);
        head.extend_from_slice(name.as_bytes());
        if legacy {
            encode_key(5, WireType::Varint, &mut head);
            encode_varint(V1_CONVOLUTION, &mut head);
        } else {
            encode_key(2, WireType::LengthDelimited, &mut head);
            encode_varint(TYPE.len() as u64, &mut head);
            head.extend_from_slice(TYPE.as_bytes());
        }
        w.write_all(&head)?;
        write_blob(
            w,
            blobs_tag,
            &w_shape,
            lw.weight.iter().copied(),
            lw.weight.len(),
        )?;
        if let (Some(s), Some(b)) = (&b_shape, &lw.bias) {
            write_blob(w, blobs_tag, s, b.iter().copied(), b.len())?;
        }
    }
    Ok(())
}
