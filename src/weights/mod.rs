//! Network weights: a name-keyed [`WeightSet`] and the file formats it is read from and written
//! to.
//!
//! * Caffe `.caffemodel` (binary protobuf `NetParameter`, both the current `layer` field and the
//!   legacy `layers` field): [`read_caffemodel`], [`write_caffemodel`].
//! * safetensors, with tensors named `<layer>.weight` / `<layer>.bias` as PyTorch exports them:
//!   [`read_safetensors`], [`write_safetensors`].
//! * NumPy `.npy` arrays (NCHW `float32`) for exchanging inputs and outputs with Python:
//!   [`read_npy4`], [`write_npy`].
//!
//! Every reader treats its input as hostile: any malformed file gives an
//! [`Error`] (never a panic), and no length read from a file is trusted before
//! it has been checked against the bytes actually present, so a corrupt length cannot make
//! the reader allocate more than the file's size. Readers that take `&[u8]`
//! (`*_bytes`) parse in-memory buffers the same way. Every writer writes a temporary file in
//! the destination directory and renames it over the destination, so a failed write leaves
//! no partial file behind.
//!
//! Layer names are kept verbatim; mapping them onto a network's layers is the network's
//! business.
//!
//! ```no_run
//! use dilated::weights::{ExpectedLayer, WeightSet, write_safetensors};
//!
//! let weights = WeightSet::load("dilation8_pascal_voc.caffemodel")?;
//! weights.check(&[ExpectedLayer::new("conv1_1", [64, 3, 3, 3], true)])?;
//! let conv1 = weights.get("conv1_1").expect("checked above");
//! assert_eq!(conv1.weight.dim(), (64, 3, 3, 3));
//! write_safetensors("dilation8_pascal_voc.safetensors", &weights)?;
//! # Ok::<(), dilated::Error>(())
//! ```

mod caffe;
mod npy;
pub mod proto;
mod safetensors;
mod set;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub use caffe::{encode_caffemodel, read_caffemodel, read_caffemodel_bytes, write_caffemodel};
pub use npy::{read_npy4, read_npy4_bytes, write_npy};
pub use safetensors::{read_safetensors, read_safetensors_bytes, write_safetensors};
pub use set::{ExpectedLayer, LayerWeights, WeightSet};

use crate::error::{Error, Result};

/// Name used in errors for in-memory buffers.
pub(crate) const BYTES_PATH: &str = "<bytes>";

/// Writes `path` atomically: `write` fills a temporary file created in the same directory,
/// which is flushed, synced and renamed over `path` only if everything succeeded. On any
/// failure the temporary file is removed and `path` is left as it was.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    // Ordinary file permissions (0666 less the umask), not the temporary file's 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).map_err(io_err)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut w).map_err(io_err)?;
        w.flush().map_err(io_err)?;
    }
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// An error reading a `format` file: an early end becomes [`Error::InvalidFile`] (the file is
/// shorter than its own header says), anything else [`Error::Io`].
pub(crate) fn read_error(path: &str, format: &'static str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::InvalidFile {
            path: path.to_string(),
            format,
            reason: "the file ended early (was it changed while being read?)".into(),
        }
    } else {
        Error::Io {
            path: path.to_string(),
            source: e,
        }
    }
}

/// Opens `path` for reading, returning it and its length in bytes.
pub(crate) fn open(path: &Path) -> Result<(File, u64)> {
    let io_err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    Ok((file, len))
}

impl WeightSet {
    /// Reads weights from `path`, choosing the format by extension: `.caffemodel` or
    /// `.safetensors`.
    pub fn load(path: impl AsRef<Path>) -> Result<WeightSet> {
        let path = path.as_ref();
        match path.extension().and_then(|e| e.to_str()) {
            Some("caffemodel") => read_caffemodel(path),
            Some("safetensors") => read_safetensors(path),
            _ => Err(Error::Weights(format!(
                "{}: unknown weights format; expected a .caffemodel or .safetensors file",
                path.display()
            ))),
        }
    }
}
