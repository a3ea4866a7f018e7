//! NumPy arrays: [`read_npy4`], [`read_npy4_bytes`], [`write_npy`]. Images: [`load_image_bgr`],
//! [`decode_image_bgr`], [`load_label_png`], [`load_label_png_with_palette`], [`save_png`];
//! figures drawn on them in [`figure`](crate::io::figure). Any other file: [`write_file`].
//! Shared with the weight formats in [`crate::weights`]: opening a file with its length,
//! mapping read errors, and atomic writes.
//!
//! Readers treat their input as hostile: a malformed file gives an [`Error`], never a panic.
//! Every writer writes a temporary file in the destination directory and renames it over the
//! destination, so a failed write leaves no partial file behind.
//!
//! Whatever takes a path needs the `fs` feature (a default); the readers of in-memory bytes
//! ([`read_npy4_bytes`], [`decode_image_bgr`]) and the figures do not.
//!
//! [`read_npy4`]: crate::io::read_npy4
//! [`read_npy4_bytes`]: crate::io::read_npy4_bytes
//! [`write_npy`]: crate::io::write_npy
//! [`load_image_bgr`]: crate::io::load_image_bgr
//! [`decode_image_bgr`]: crate::io::decode_image_bgr
//! [`save_png`]: crate::io::save_png
//! [`load_label_png`]: crate::io::load_label_png
//! [`load_label_png_with_palette`]: crate::io::load_label_png_with_palette
//! [`write_file`]: crate::io::write_file
//! [`Error`]: crate::Error

pub mod figure;
mod image;
mod npy;

#[cfg(feature = "fs")]
use std::fs::File;
#[cfg(feature = "fs")]
use std::io::{BufWriter, Write};
#[cfg(feature = "fs")]
use std::path::Path;

pub use self::image::decode_image_bgr;
#[cfg(feature = "fs")]
pub use self::image::{
    load_image_bgr, load_label_png, load_label_png_with_palette, save_label_png, save_png,
};
pub use npy::read_npy4_bytes;
#[cfg(feature = "fs")]
pub use npy::{read_npy3, read_npy4, write_npy};

use crate::error::Error;
#[cfg(feature = "fs")]
use crate::error::Result;

/// Name used in errors for in-memory buffers.
pub(crate) const BYTES_PATH: &str = "<bytes>";

/// Writes `path` atomically: `write` fills a temporary file created in the same directory,
/// which is flushed, synced and renamed over `path` only if everything succeeded. On any
/// failure the temporary file is removed and `path` is left as it was.
#[cfg(feature = "fs")]
pub fn write_atomic(
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

/// Writes `bytes` to `path` atomically: the file appears only when complete, and a failed
/// write leaves whatever was there before.
#[cfg(feature = "fs")]
pub fn write_file(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic(path.as_ref(), |w| w.write_all(bytes))
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
#[cfg(feature = "fs")]
pub(crate) fn open(path: &Path) -> Result<(File, u64)> {
    let io_err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    Ok((file, len))
}

/// Reads a list file: one path per line (the authors' convention for image, label and feature
/// lists), blank lines and surrounding whitespace ignored, paths as written.
#[cfg(feature = "fs")]
pub fn read_list(path: impl AsRef<Path>) -> Result<Vec<std::path::PathBuf>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(std::path::PathBuf::from)
        .collect())
}
