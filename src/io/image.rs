//! Image files: decoding PNG, JPEG or BMP into BGR arrays, and writing PNGs atomically.

use std::path::Path;

use ndarray::Array3;

use crate::error::{Error, Result};

/// Reads an image file (PNG, JPEG, BMP) as `[height, width, 3]` BGR values in 0..255.
pub fn load_image_bgr(path: impl AsRef<Path>) -> Result<Array3<f32>> {
    let path = path.as_ref();
    let reader = ::image::ImageReader::open(path)
        .map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    let img = reader
        .decode()
        .map_err(|e| Error::Image {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(Array3::from_shape_fn(
        (h as usize, w as usize, 3),
        |(y, x, c)| img.get_pixel(x as u32, y as u32)[2 - c] as f32,
    ))
}

/// Writes a PNG atomically: the file appears only when complete.
pub fn save_png(path: impl AsRef<Path>, img: &::image::RgbImage) -> Result<()> {
    let path = path.as_ref();
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ::image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    super::write_atomic(path, |w| std::io::Write::write_all(w, bytes.get_ref()))
}
