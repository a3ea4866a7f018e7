//! What this crate keeps between runs in the user's cache directory, per adapter: the driver's
//! compiled pipelines (wgpu's [`wgpu::PipelineCache`], where the adapter offers it) and the
//! convolution kernels chosen by measurement (see [`crate::gpu::tune`]).
//!
//! Both files are named after a key of the adapter (name, vendor, device id, driver, backend)
//! and this crate's version, and hold the full key, so data from another adapter, driver or
//! version is never used. Files are written atomically (a temporary file renamed over the old
//! one); unreadable, corrupt or stale files are ignored and rewritten, never an error.
//!
//! The files need the `fs` feature (a default); without it only [`adapter_key`] is here and
//! nothing is kept between runs.

#[cfg(feature = "fs")]
use std::path::{Path, PathBuf};

/// Environment variable naming the cache directory; empty or `off` disables the caches.
#[cfg(feature = "fs")]
pub const CACHE_DIR_ENV: &str = "DILATED_CACHE_DIR";

/// The cache directory from the environment: [`CACHE_DIR_ENV`] when set (`None` when it is
/// empty or `off`), else `dilated` in the user's cache directory (`$XDG_CACHE_HOME`, else
/// `~/.cache` on Linux and other Unix systems, `~/Library/Caches` on macOS,
/// `%LOCALAPPDATA%` on Windows); `None` when none of those is known.
#[cfg(feature = "fs")]
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        let off = dir.is_empty() || dir.eq_ignore_ascii_case("off");
        return (!off).then(|| PathBuf::from(dir));
    }
    let base = if cfg!(windows) {
        var("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| Path::new(&h).join("Library").join("Caches"))
    } else {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
    };
    base.map(|b| b.join("dilated"))
}

/// The key the cached data of an adapter is stored under: adapter name, vendor and device ids,
/// driver, driver details, backend, and this crate's version.
pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} | vendor {:#06x} device {:#06x} | driver {} {} | {:?} | dilated {}",
        info.name,
        info.vendor,
        info.device,
        info.driver,
        info.driver_info,
        info.backend,
        env!("CARGO_PKG_VERSION")
    )
}

/// 64-bit FNV-1a hash: names the cache files after their key and checks their contents.
#[cfg(feature = "fs")]
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The path of a cache file: `<dir>/<stem>-<hash of key>.<ext>`.
#[cfg(feature = "fs")]
pub(crate) fn cache_file(dir: &Path, stem: &str, key: &str, ext: &str) -> PathBuf {
    dir.join(format!("{stem}-{:016x}.{ext}", fnv1a(key.as_bytes())))
}

/// First bytes of a pipeline cache file.
#[cfg(feature = "fs")]
const MAGIC: &[u8; 8] = b"DILPIPE1";

/// A pipeline cache file: the magic, the key's length and bytes, the data's length and FNV-1a
/// hash (little-endian `u64`s), then the data wgpu returned.
#[cfg(feature = "fs")]
pub(crate) fn encode_pipeline_data(key: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + key.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u64).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of a pipeline cache file written by [`encode_pipeline_data`] for `key`, or why it
/// cannot be used (another key, truncated, extended or corrupted).
#[cfg(feature = "fs")]
pub(crate) fn decode_pipeline_data<'a>(
    key: &str,
    file: &'a [u8],
) -> std::result::Result<&'a [u8], &'static str> {
    let rest = file
        .strip_prefix(MAGIC)
        .ok_or("not a pipeline cache file")?;
    let take_u64 = |b: &'a [u8]| -> std::result::Result<(u64, &'a [u8]), &'static str> {
        let (n, rest) = b.split_at_checked(8).ok_or("truncated")?;
        let n = u64::from_le_bytes(n.try_into().map_err(|_| "truncated")?);
        Ok((n, rest))
    };
    let (key_len, rest) = take_u64(rest)?;
    let key_len = usize::try_from(key_len).map_err(|_| "truncated")?;
    let (stored_key, rest) = rest.split_at_checked(key_len).ok_or("truncated")?;
    if stored_key != key.as_bytes() {
        return Err("made for another adapter, driver or version");
    }
    let (len, rest) = take_u64(rest)?;
    let (hash, data) = take_u64(rest)?;
    if data.len() as u64 != len {
        return Err("truncated or extended");
    }
    if fnv1a(data) != hash {
        return Err("corrupted");
    }
    Ok(data)
}

#[cfg(all(test, feature = "fs"))]
mod tests {
    use super::*;

    #[test]
    fn pipeline_data_round_trips_and_damage_is_detected() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let file = encode_pipeline_data("adapter A", &data);
        assert_eq!(decode_pipeline_data("adapter A", &file), Ok(&data[..]));
        assert!(decode_pipeline_data("adapter B", &file).is_err());
        for cut in [0, 5, 8, 20, file.len() - 1] {
            assert!(
                decode_pipeline_data("adapter A", &file[..cut]).is_err(),
                "{cut}"
            );
        }
        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            decode_pipeline_data("adapter A", &flipped),
            Err("corrupted")
        );
        let mut longer = file;
        longer.push(0);
        assert!(decode_pipeline_data("adapter A", &longer).is_err());
        // A huge key length must not be trusted.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_pipeline_data("adapter A", &huge).is_err());
    }

    #[test]
    fn files_are_named_after_the_key() {
        let dir = Path::new("/cache");
        let a = cache_file(dir, "pipelines", "key a", "bin");
        let b = cache_file(dir, "pipelines", "key b", "bin");
        assert_ne!(a, b);
        assert!(a.starts_with(dir));
        assert_eq!(a.extension().and_then(|e| e.to_str()), Some("bin"));
    }
}
