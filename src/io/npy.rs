//! NumPy `.npy` files of `float32` arrays, for exchanging inputs and outputs with Python.
//!
//! Reading checks the header (version, length, dtype, rank, and that the data has exactly the
//! size the shape implies) before `ndarray-npy` allocates anything, so a corrupt header cannot
//! make the reader allocate more than the file's size.

#[cfg(feature = "fs")]
use std::io::BufReader;
use std::io::{Cursor, Read, Seek, SeekFrom};
#[cfg(feature = "fs")]
use std::path::Path;

#[cfg(feature = "fs")]
use ndarray::{Array3, ArrayBase, Data, Dimension};
use ndarray::{Array4, ArrayD};
use ndarray_npy::ReadNpyExt;
#[cfg(feature = "fs")]
use ndarray_npy::WriteNpyExt;
use ndarray_npy::npy::header::Header;
use py_literal::Value;

use super::{BYTES_PATH, read_error};
#[cfg(feature = "fs")]
use super::{open, write_atomic};
use crate::error::{Error, Result};

const FORMAT: &str = "npy";
const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Longest header accepted (NumPy itself refuses headers over 10000 bytes by default).
const MAX_HEADER: u64 = 1 << 16;

/// Reads a 4-D (`N, C, H, W`) `float32` array from a `.npy` file (either byte order, C or
/// Fortran order; the result is in standard layout).
///
/// Errors: [`Error::Io`] if the file cannot be read; [`Error::InvalidFile`] for a bad magic
/// string, version or header, a dtype other than `float32`, a rank other than 4, or data
/// shorter or longer than the shape implies.
#[cfg(feature = "fs")]
pub fn read_npy4(path: impl AsRef<Path>) -> Result<Array4<f32>> {
    read_file(path.as_ref(), 4)?
        .into_dimensionality()
        .map_err(|e| Error::Internal(format!("npy rank: {e}")))
}

/// [`read_npy4`] on an in-memory buffer.
pub fn read_npy4_bytes(bytes: &[u8]) -> Result<Array4<f32>> {
    parse(Cursor::new(bytes), bytes.len() as u64, BYTES_PATH, 4)?
        .into_dimensionality()
        .map_err(|e| Error::Internal(format!("npy rank: {e}")))
}

/// Reads a 3-D (`C, H, W`) `float32` array from a `.npy` file, such as one image's cached
/// front-end scores; errors as [`read_npy4`]'s, for a rank other than 3.
#[cfg(feature = "fs")]
pub fn read_npy3(path: impl AsRef<Path>) -> Result<Array3<f32>> {
    read_file(path.as_ref(), 3)?
        .into_dimensionality()
        .map_err(|e| Error::Internal(format!("npy rank: {e}")))
}

#[cfg(feature = "fs")]
fn read_file(path: &Path, rank: usize) -> Result<ArrayD<f32>> {
    let (file, len) = open(path)?;
    parse(BufReader::new(file), len, &path.display().to_string(), rank)
}

/// Writes a `float32` array of any rank (e.g. an `Array4` in NCHW order, or an `ArrayD`) as a
/// `.npy` file, through a temporary file in the same directory renamed over `path`.
#[cfg(feature = "fs")]
pub fn write_npy<S, D>(path: impl AsRef<Path>, array: &ArrayBase<S, D>) -> Result<()>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    write_atomic(path.as_ref(), |w| {
        array.write_npy(w).map_err(|e| match e {
            ndarray_npy::WriteNpyError::Io(e) => e,
            other => std::io::Error::other(other),
        })
    })
}

fn invalid(path: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_string(),
        format: FORMAT,
        reason: reason.into(),
    }
}

/// Deepest bracket nesting accepted in a header (a `float32` header nests two deep:
/// `{... 'shape': (...)}`).
const MAX_NESTING: usize = 4;

/// Rejects headers with unbalanced or deeply nested brackets before they reach the Python
/// literal parser, whose backtracking takes time exponential in the number of unclosed
/// brackets (twenty nested `[(` take seconds).
fn screen_header(text: &[u8]) -> std::result::Result<(), String> {
    let mut stack: Vec<u8> = Vec::new();
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &c in text {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            b'\'' | b'"' => quote = Some(c),
            b'(' | b'[' | b'{' => {
                stack.push(c);
                if stack.len() > MAX_NESTING {
                    return Err(format!(
                        "header nests brackets more than {MAX_NESTING} deep"
                    ));
                }
            }
            b')' | b']' | b'}' => {
                let open = match c {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                if stack.pop() != Some(open) {
                    return Err("header has unbalanced brackets".to_string());
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("header has an unterminated string".to_string());
    }
    if !stack.is_empty() {
        return Err("header has unbalanced brackets".to_string());
    }
    Ok(())
}

fn parse<R: Read + Seek>(mut r: R, len: u64, path: &str, rank: usize) -> Result<ArrayD<f32>> {
    let io = |e: std::io::Error| read_error(path, FORMAT, e);
    if len < 10 {
        return Err(invalid(
            path,
            format!("{len} bytes, too short for a header"),
        ));
    }
    let mut start = [0u8; 8];
    r.read_exact(&mut start).map_err(io)?;
    if &start[..6] != MAGIC {
        return Err(invalid(path, "no NumPy magic string (not a .npy file)"));
    }
    let (prefix, header_len) = match start[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(io)?;
            (10u64, u64::from(u16::from_le_bytes(b)))
        }
        2 | 3 if len < 12 => {
            return Err(invalid(
                path,
                format!("{len} bytes, too short for a header"),
            ));
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(io)?;
            (12u64, u64::from(u32::from_le_bytes(b)))
        }
        v => return Err(invalid(path, format!("unsupported format version {v}"))),
    };
    if header_len > len - prefix {
        return Err(invalid(
            path,
            format!(
                "header of {header_len} bytes but only {} bytes follow",
                len - prefix
            ),
        ));
    }
    if header_len > MAX_HEADER {
        return Err(invalid(
            path,
            format!("header of {header_len} bytes (at most {MAX_HEADER} accepted)"),
        ));
    }
    let mut text = vec![0u8; header_len as usize];
    r.read_exact(&mut text).map_err(io)?;
    screen_header(&text).map_err(|reason| invalid(path, reason))?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let header =
        Header::from_reader(&mut r).map_err(|e| invalid(path, format!("invalid header: {e}")))?;
    match &header.type_descriptor {
        Value::String(s) if s == "<f4" || s == ">f4" => {}
        other => {
            return Err(invalid(
                path,
                format!("dtype {other}; only float32 ('<f4') arrays are read"),
            ));
        }
    }
    if header.shape.len() != rank {
        let axes = if rank == 3 { "C, H, W" } else { "N, C, H, W" };
        return Err(invalid(
            path,
            format!(
                "array of shape {:?} ({} dimensions); expected {rank} ({axes})",
                header.shape,
                header.shape.len()
            ),
        ));
    }
    let bytes = header
        .shape
        .iter()
        .try_fold(4u64, |a, &d| a.checked_mul(d as u64));
    let data_len = len - prefix - header_len;
    if bytes != Some(data_len) {
        return Err(invalid(
            path,
            format!(
                "shape {:?} needs {} bytes of data but the file has {data_len}",
                header.shape,
                bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string())
            ),
        ));
    }
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let a = ArrayD::<f32>::read_npy(r).map_err(|e| match e {
        ndarray_npy::ReadNpyError::Io(e) => io(e),
        other => invalid(path, other.to_string()),
    })?;
    Ok(if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    })
}
