//! Caffe `.caffemodel` files: binary protobuf `NetParameter` messages.
//!
//! The reader walks the protobuf encoding itself, one field at a time, from a buffered reader:
//! float data goes straight from the file into the array that keeps it, so reading a model
//! needs about the memory of its arrays and a fixed 1 MiB buffer (not the file's bytes as
//! well). Every length is checked against the bytes left in its enclosing message before
//! anything is allocated or skipped.

#[cfg(feature = "fs")]
use std::io::BufReader;
use std::io::{self, BufRead, Cursor, Seek};
#[cfg(feature = "fs")]
use std::path::Path;

use ndarray::{Array1, Array4};
use prost::Message;
use prost::encoding::WireType;

use super::proto::BlobShape;
use super::{LayerWeights, WeightSet};
use crate::error::{Error, Result};
use crate::io::BYTES_PATH;
#[cfg(feature = "fs")]
use crate::io::open;

const FORMAT: &str = "caffemodel";
/// Longest layer name accepted.
const MAX_NAME_BYTES: u64 = 1 << 16;
/// Longest encoded `BlobShape` accepted (32 dimensions take at most 330 bytes).
const MAX_SHAPE_BYTES: u64 = 1024;
/// Most dimensions accepted in a blob shape.
const MAX_DIMS: usize = 32;
/// Bytes converted per read.
pub(super) const CHUNK: usize = 1 << 16;

/// `NetParameter.layer` (LayerParameter).
pub(super) const NET_LAYER: u32 = 100;
/// `NetParameter.layers` (V1LayerParameter, legacy).
pub(super) const NET_LAYERS: u32 = 2;
/// `V1LayerParameter.type` value for convolution layers.
pub(super) const V1_CONVOLUTION: u64 = 4;
/// `V1LayerParameter.type` (field 5) of an inner-product layer (`INNER_PRODUCT`).
const V1_INNER_PRODUCT: u64 = 14;

/// Reads the parameters of every layer that has any from a `.caffemodel` file.
///
/// Both the current (`NetParameter.layer`, `LayerParameter`) and legacy
/// (`NetParameter.layers`, `V1LayerParameter`, including a nested `V0LayerParameter`) forms
/// are read. Layers without blobs (ReLU, pooling, dropout, loss, data) are skipped. For every
/// other layer blob 0 is the weight, reshaped to 4-D (`[out, in]` becomes `[out, in, 1, 1]`),
/// and blob 1, if present, the bias (any shape of `out` elements). Blob shapes are read from
/// `shape.dim` or from the legacy `num`/`channels`/`height`/`width`; values from packed or
/// unpacked `data` or from `double_data`.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::InvalidFile`] (naming the layer
/// where known) if it is truncated or corrupt, a layer has more than two blobs, element
/// counts do not match shapes, two layers share a name, or no layer has parameters.
///
/// A protobuf message has no end marker: a file cut exactly between two layers reads as a
/// model with fewer layers. [`WeightSet::check`] against the network's layers catches that.
#[cfg(feature = "fs")]
pub fn read_caffemodel(path: impl AsRef<Path>) -> Result<WeightSet> {
    let path = path.as_ref();
    let (file, len) = open(path)?;
    parse(BufReader::with_capacity(1 << 20, file), len)
        .map_err(|f| f.into_error(&path.display().to_string()))
}

/// [`read_caffemodel`] on an in-memory buffer.
pub fn read_caffemodel_bytes(bytes: &[u8]) -> Result<WeightSet> {
    parse(Cursor::new(bytes), bytes.len() as u64).map_err(|f| f.into_error(BYTES_PATH))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Why parsing stopped.
enum Fail {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

impl Fail {
    fn into_error(self, path: &str) -> Error {
        match self {
            Fail::Bad(reason) => Error::InvalidFile {
                path: path.to_string(),
                format: FORMAT,
                reason,
            },
            Fail::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => Error::InvalidFile {
                path: path.to_string(),
                format: FORMAT,
                reason: "the file ended early (was it changed while being read?)".to_string(),
            },
            Fail::Io(source) => Error::Io {
                path: path.to_string(),
                source,
            },
        }
    }

    /// Prefixes a `Bad` message with where it happened.
    fn context(self, what: impl FnOnce() -> String) -> Self {
        match self {
            Fail::Bad(m) => Fail::Bad(format!("{}: {m}", what())),
            io => io,
        }
    }
}

type PResult<T> = std::result::Result<T, Fail>;

fn bad<T>(msg: impl Into<String>) -> PResult<T> {
    Err(Fail::Bad(msg.into()))
}

/// Which layer message is being read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Layer,
    V1,
    V0,
}

impl Kind {
    pub(super) fn name_tag(self) -> u32 {
        match self {
            Kind::Layer | Kind::V0 => 1,
            Kind::V1 => 4,
        }
    }

    pub(super) fn blobs_tag(self) -> u32 {
        match self {
            Kind::Layer => 7,
            Kind::V1 => 6,
            Kind::V0 => 50,
        }
    }
}

/// One `BlobProto` as read, before its shape is checked.
#[derive(Default)]
struct RawBlob {
    dims: Option<Vec<i64>>,
    legacy: [Option<i64>; 4],
    data: Vec<f32>,
    double_data: Vec<f32>,
}

#[derive(Default)]
struct RawLayer {
    name: Option<String>,
    blobs: Vec<RawBlob>,
    /// A V1 `INNER_PRODUCT` layer, whose legacy weight blob is `1 x 1 x out x in`.
    inner_product: bool,
}

/// A protobuf reader over a byte stream that knows how many bytes remain.
struct Walker<R> {
    r: R,
    pos: u64,
    scratch: Vec<u8>,
}

impl<R: BufRead + Seek> Walker<R> {
    /// Fails unless `n` more bytes lie before `end`.
    fn need(&self, n: u64, end: u64, what: &str) -> PResult<()> {
        let left = end.saturating_sub(self.pos);
        if n > left {
            return bad(format!(
                "{what} of {n} bytes at offset {} runs past the end of its message \
                 ({left} bytes left): the file is truncated or corrupt",
                self.pos
            ));
        }
        Ok(())
    }

    fn byte(&mut self, end: u64) -> PResult<u8> {
        self.need(1, end, "a field")?;
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self, end: u64) -> PResult<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte(end)?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return bad(format!("varint overflows 64 bits at offset {}", self.pos));
                }
                return Ok(value);
            }
        }
        bad(format!(
            "varint longer than 10 bytes at offset {}",
            self.pos
        ))
    }

    fn key(&mut self, end: u64) -> PResult<(u32, WireType)> {
        let at = self.pos;
        let key = self.varint(end)?;
        let Ok(key) = u32::try_from(key) else {
            return bad(format!("invalid field key {key} at offset {at}"));
        };
        let Ok(wire) = WireType::try_from(u64::from(key & 7)) else {
            return bad(format!("invalid wire type {} at offset {at}", key & 7));
        };
        let tag = key >> 3;
        if tag == 0 {
            return bad(format!("field number 0 at offset {at}"));
        }
        Ok((tag, wire))
    }

    /// Reads a length prefix and returns where the delimited bytes end.
    fn delimited(&mut self, end: u64, what: &str) -> PResult<u64> {
        let n = self.varint(end)?;
        self.need(n, end, what)?;
        Ok(self.pos + n)
    }

    fn advance(&mut self, n: u64, end: u64) -> PResult<()> {
        self.need(n, end, "a skipped field")?;
        let Ok(step) = i64::try_from(n) else {
            return bad("skipped field too long");
        };
        self.r.seek_relative(step)?;
        self.pos += n;
        Ok(())
    }

    fn skip(&mut self, wire: WireType, end: u64) -> PResult<()> {
        match wire {
            WireType::Varint => self.varint(end).map(|_| ()),
            WireType::ThirtyTwoBit => self.advance(4, end),
            WireType::SixtyFourBit => self.advance(8, end),
            WireType::LengthDelimited => {
                let n = self.varint(end)?;
                self.advance(n, end)
            }
            WireType::StartGroup | WireType::EndGroup => bad(format!(
                "protobuf groups (deprecated, never used by Caffe) at offset {}",
                self.pos
            )),
        }
    }

    /// Reads `n` bytes, `n` having been checked against `end`.
    fn bytes(&mut self, n: u64, end: u64, what: &str) -> PResult<Vec<u8>> {
        self.need(n, end, what)?;
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v)?;
        self.pos += n;
        Ok(v)
    }

    /// Appends `n_bytes / W` little-endian values of `W` bytes, converted by `conv`.
    fn values<const W: usize>(
        &mut self,
        n_bytes: u64,
        end: u64,
        out: &mut Vec<f32>,
        conv: fn([u8; W]) -> f32,
    ) -> PResult<()> {
        self.need(n_bytes, end, "packed values")?;
        if !n_bytes.is_multiple_of(W as u64) {
            return bad(format!(
                "packed values of {n_bytes} bytes, not a multiple of {W}"
            ));
        }
        let count = (n_bytes / W as u64) as usize;
        if count == 1 {
            out.try_reserve(1)
        } else {
            out.try_reserve_exact(count)
        }
        .map_err(|_| Fail::Bad(format!("cannot allocate {count} values")))?;
        self.scratch.resize(CHUNK, 0);
        let mut left = n_bytes as usize;
        while left > 0 {
            let k = left.min(CHUNK);
            let buf = &mut self.scratch[..k];
            self.r.read_exact(buf)?;
            out.extend(buf.chunks_exact(W).map(|c| {
                let mut a = [0u8; W];
                a.copy_from_slice(c);
                conv(a)
            }));
            left -= k;
        }
        self.pos += n_bytes;
        Ok(())
    }

    fn string(&mut self, end: u64) -> PResult<String> {
        let n = self.varint(end)?;
        if n > MAX_NAME_BYTES {
            self.need(n, end, "a name")?;
            return bad(format!(
                "a name of {n} bytes (at most {MAX_NAME_BYTES} accepted)"
            ));
        }
        let bytes = self.bytes(n, end, "a name")?;
        String::from_utf8(bytes).or_else(|_| bad("a name that is not valid UTF-8"))
    }

    fn blob(&mut self, end: u64) -> PResult<RawBlob> {
        let mut b = RawBlob::default();
        while self.pos < end {
            let (tag, wire) = self.key(end)?;
            match (tag, wire) {
                (7, WireType::LengthDelimited) => {
                    let n = self.varint(end)?;
                    self.need(n, end, "the blob shape")?;
                    if n > MAX_SHAPE_BYTES {
                        return bad(format!("a blob shape of {n} bytes"));
                    }
                    let bytes = self.bytes(n, end, "the blob shape")?;
                    let shape = BlobShape::decode(bytes.as_slice())
                        .map_err(|e| Fail::Bad(format!("invalid blob shape: {e}")))?;
                    if shape.dim.len() > MAX_DIMS {
                        return bad(format!("a blob shape of {} dimensions", shape.dim.len()));
                    }
                    b.dims = Some(shape.dim);
                }
                (1..=4, WireType::Varint) => {
                    // int32 fields: negative values are sign-extended to 64 bits.
                    let v = self.varint(end)? as u32 as i32;
                    b.legacy[tag as usize - 1] = Some(i64::from(v));
                }
                (5, WireType::LengthDelimited) => {
                    let n = self.varint(end)?;
                    self.values::<4>(n, end, &mut b.data, f32::from_le_bytes)?;
                }
                (5, WireType::ThirtyTwoBit) => {
                    self.values::<4>(4, end, &mut b.data, f32::from_le_bytes)?;
                }
                (8, WireType::LengthDelimited) => {
                    let n = self.varint(end)?;
                    self.values::<8>(n, end, &mut b.double_data, |a| f64::from_le_bytes(a) as f32)?;
                }
                (8, WireType::SixtyFourBit) => {
                    self.values::<8>(8, end, &mut b.double_data, |a| f64::from_le_bytes(a) as f32)?;
                }
                (1..=5 | 7 | 8, _) => {
                    return bad(format!("blob field {tag} has the wrong wire type {wire:?}"));
                }
                _ => self.skip(wire, end)?,
            }
        }
        Ok(b)
    }

    fn layer(&mut self, kind: Kind, end: u64) -> PResult<RawLayer> {
        let mut layer = RawLayer::default();
        let mut nested: Option<RawLayer> = None;
        while self.pos < end {
            let (tag, wire) = self.key(end)?;
            let is = |t: u32| tag == t;
            let known = is(kind.name_tag()) || is(kind.blobs_tag()) || (kind == Kind::V1 && is(1));
            if known && wire != WireType::LengthDelimited {
                return bad(format!(
                    "layer field {tag} has the wrong wire type {wire:?}"
                ));
            }
            if is(kind.name_tag()) {
                layer.name = Some(self.string(end)?);
            } else if is(kind.blobs_tag()) {
                let i = layer.blobs.len();
                let blob_end = self.delimited(end, "a blob")?;
                if i == 2 {
                    return bad(
                        "more than two parameter blobs (only weight and bias are supported; \
                         layers such as BatchNorm or Scale are not)",
                    );
                }
                let blob = self
                    .blob(blob_end)
                    .map_err(|f| f.context(|| format!("blob {i}")))?;
                layer.blobs.push(blob);
            } else if kind == Kind::V1 && is(5) && wire == WireType::Varint {
                layer.inner_product = self.varint(end)? == V1_INNER_PRODUCT;
            } else if kind == Kind::V1 && is(1) {
                let v0_end = self.delimited(end, "a V0 layer")?;
                nested = Some(self.layer(Kind::V0, v0_end)?);
            } else {
                self.skip(wire, end)?;
            }
        }
        if let Some(v0) = nested {
            if layer.name.is_none() {
                layer.name = v0.name;
            }
            if layer.blobs.is_empty() {
                layer.blobs = v0.blobs;
            } else if !v0.blobs.is_empty() {
                return bad("blobs both in the layer and in its nested V0 layer");
            }
        }
        Ok(layer)
    }
}

/// Shape and values of a blob, checked against each other.
fn resolve(blob: RawBlob, what: &str) -> PResult<(Vec<usize>, Vec<f32>)> {
    let dims: Vec<i64> = match blob.dims {
        Some(d) => d,
        None if blob.legacy.iter().any(Option::is_some) => {
            blob.legacy.iter().map(|d| d.unwrap_or(0)).collect()
        }
        None => return bad(format!("{what} has no shape")),
    };
    let mut shape = Vec::with_capacity(dims.len());
    for &d in &dims {
        match usize::try_from(d) {
            Ok(d) => shape.push(d),
            Err(_) => return bad(format!("{what} has a negative dimension in shape {dims:?}")),
        }
    }
    let Some(count) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return bad(format!("{what} has shape {shape:?}, whose size overflows"));
    };
    if !blob.data.is_empty() && !blob.double_data.is_empty() {
        return bad(format!("{what} has both float and double data"));
    }
    let values = if blob.data.is_empty() {
        blob.double_data
    } else {
        blob.data
    };
    if values.len() != count {
        return bad(format!(
            "{what} has shape {shape:?} ({count} elements) but {} values",
            values.len()
        ));
    }
    Ok((shape, values))
}

/// Turns a layer's blobs into weights; `None` for a layer without blobs.
fn convert(layer: RawLayer) -> PResult<Option<(String, LayerWeights)>> {
    if layer.blobs.is_empty() {
        return Ok(None);
    }
    let name = match layer.name {
        Some(n) if !n.is_empty() => n,
        _ => return bad("a layer with parameter blobs has no name"),
    };
    let ctx = |f: Fail| f.context(|| format!("layer {name:?}"));
    let mut blobs = layer.blobs.into_iter();
    let (Some(weight), bias) = (blobs.next(), blobs.next()) else {
        return Ok(None);
    };
    let legacy = weight.dims.is_none();
    let (shape, values) = resolve(weight, "the weight blob").map_err(ctx)?;
    let dims = match *shape.as_slice() {
        // Caffe reads legacy shapes from the end: an inner product's `1 x 1 x out x in` is
        // its `out x in` matrix.
        [1, 1, o, i] if legacy && layer.inner_product => [o, i, 1, 1],
        [o, i, h, w] => [o, i, h, w],
        [o, i] => [o, i, 1, 1],
        _ => {
            return bad(format!(
                "layer {name:?}: the weight blob has shape {shape:?}; only 4-D (convolution) \
                 and 2-D (inner product) weights are supported"
            ));
        }
    };
    let weight = Array4::from_shape_vec(dims, values)
        .map_err(|e| Fail::Bad(format!("layer {name:?}: weight: {e}")))?;
    let bias = match bias {
        None => None,
        Some(b) => {
            let (shape, values) = resolve(b, "the bias blob").map_err(ctx)?;
            if values.len() != dims[0] {
                return bad(format!(
                    "layer {name:?}: the bias blob has shape {shape:?} ({} elements) but the \
                     weight has {} output channels",
                    values.len(),
                    dims[0]
                ));
            }
            Some(Array1::from(values))
        }
    };
    Ok(Some((name, LayerWeights { weight, bias })))
}

fn parse<R: BufRead + Seek>(r: R, len: u64) -> PResult<WeightSet> {
    let mut w = Walker {
        r,
        pos: 0,
        scratch: Vec::new(),
    };
    let mut set = WeightSet::new();
    let mut index = 0usize;
    while w.pos < len {
        let (tag, wire) = w.key(len)?;
        let kind = match tag {
            NET_LAYER => Kind::Layer,
            NET_LAYERS => Kind::V1,
            _ => {
                w.skip(wire, len)?;
                continue;
            }
        };
        if wire != WireType::LengthDelimited {
            return bad(format!(
                "NetParameter field {tag} has the wrong wire type {wire:?}"
            ));
        }
        let end = w.delimited(len, "a layer")?;
        let start = w.pos;
        let layer = w
            .layer(kind, end)
            .map_err(|f| f.context(|| format!("layer #{index} (at offset {start})")))?;
        index += 1;
        if let Some((name, weights)) = convert(layer)? {
            if set.get(&name).is_some() {
                return bad(format!("two layers with parameters are named {name:?}"));
            }
            set.insert(name, weights);
        }
    }
    if set.is_empty() {
        return bad("no layer with parameters (is this a caffemodel?)");
    }
    Ok(set)
}
