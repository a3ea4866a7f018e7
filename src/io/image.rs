//! Image files: decoding PNG, JPEG or BMP into BGR arrays (from bytes, or with the `fs`
//! feature from a path), reading label PNGs (class ids as pixel values), and writing PNGs
//! atomically.

#[cfg(feature = "fs")]
use std::path::Path;

#[cfg(feature = "fs")]
use ndarray::Array2;
use ndarray::Array3;

use crate::error::{Error, Result};

/// Reads an image file (PNG, JPEG, BMP) as `[height, width, 3]` BGR values in 0..255.
#[cfg(feature = "fs")]
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
    decode(reader, &path.display().to_string())
}

/// [`load_image_bgr`] on a file's bytes in memory (PNG, JPEG, BMP, told apart by their
/// contents). Errors: [`Error::Image`] when the bytes are not such an image.
pub fn decode_image_bgr(bytes: &[u8]) -> Result<Array3<f32>> {
    let reader = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| Error::Io {
            path: super::BYTES_PATH.into(),
            source,
        })?;
    decode(reader, super::BYTES_PATH)
}

/// Decodes the image `reader` holds as BGR values; `path` names it in errors.
fn decode<R: std::io::BufRead + std::io::Seek>(
    reader: ::image::ImageReader<R>,
    path: &str,
) -> Result<Array3<f32>> {
    let img = reader
        .decode()
        .map_err(|e| Error::Image {
            path: path.to_string(),
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
#[cfg(feature = "fs")]
pub fn save_png(path: impl AsRef<Path>, img: &::image::RgbImage) -> Result<()> {
    write_png(path.as_ref(), |b| {
        img.write_to(b, ::image::ImageFormat::Png)
    })
}

/// Writes a label image atomically: an 8-bit grayscale PNG whose pixel values are the class
/// ids of `labels` (`[height, width]`), as [`load_label_png`] reads them.
#[cfg(feature = "fs")]
pub fn save_label_png(path: impl AsRef<Path>, labels: &Array2<u8>) -> Result<()> {
    let (h, w) = labels.dim();
    let img = ::image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        ::image::Luma([labels[[y as usize, x as usize]]])
    });
    write_png(path.as_ref(), |b| {
        img.write_to(b, ::image::ImageFormat::Png)
    })
}

/// Writes the PNG `encode` produces atomically.
#[cfg(feature = "fs")]
fn write_png(
    path: &Path,
    encode: impl FnOnce(&mut std::io::Cursor<Vec<u8>>) -> ::image::ImageResult<()>,
) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    encode(&mut bytes).map_err(|e| Error::Image {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    super::write_atomic(path, |w| std::io::Write::write_all(w, bytes.get_ref()))
}

/// Reads a label image: an 8-bit grayscale or palette-indexed PNG whose pixel values are class
/// ids (as the VOC and Cityscapes train-id files are; 255 usually means "ignore"), as
/// `[height, width]`. Palette indices are taken as they are, not turned into colours.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::Image`] if it is not a PNG of
/// one of those two kinds.
#[cfg(feature = "fs")]
pub fn load_label_png(path: impl AsRef<Path>) -> Result<Array2<u8>> {
    load_labels(path.as_ref(), None)
}

/// Reads a label image that may also be in colour: an 8-bit grayscale or palette-indexed PNG
/// of class ids as [`load_label_png`] reads it, or an 8-bit RGB or RGBA PNG whose colours are
/// those of `palette` (class id -> RGB, as [`crate::segment::palette`] gives and `dilated
/// segment` writes), turned back into class ids (alpha is not looked at; a colour listed twice
/// means its first class).
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::Image`] if it is not a PNG of
/// those kinds, [`Error::InvalidFile`] naming the first pixel whose colour is not in the
/// palette.
#[cfg(feature = "fs")]
pub fn load_label_png_with_palette(
    path: impl AsRef<Path>,
    palette: &[[u8; 3]],
) -> Result<Array2<u8>> {
    load_labels(path.as_ref(), Some(palette))
}

#[cfg(feature = "fs")]
fn load_labels(path: &Path, palette: Option<&[[u8; 3]]>) -> Result<Array2<u8>> {
    let bad = |reason: String| Error::Image {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let info = reader.info();
    let (color, depth) = (info.color_type, info.bit_depth);
    let channels = match color {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::Rgb if palette.is_some() => 3,
        png::ColorType::Rgba if palette.is_some() => 4,
        _ => 0,
    };
    if depth != png::BitDepth::Eight || channels == 0 {
        let kinds = if palette.is_some() {
            "an 8-bit grayscale or palette-indexed PNG of class ids, or an 8-bit RGB(A) PNG in \
             the model's colours"
        } else {
            "an 8-bit grayscale or palette-indexed PNG of class ids"
        };
        return Err(bad(format!(
            "a label image must be {kinds}; this one is {color:?} at {depth:?} bits"
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("the image is too large".into()))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let at = |y: usize, x: usize| y * frame.line_size + x * channels;
    let Some(palette) = palette.filter(|_| channels > 1) else {
        return Ok(Array2::from_shape_fn((h, w), |(y, x)| buf[at(y, x)]));
    };
    let mut class_of = std::collections::HashMap::new();
    for (class, colour) in palette.iter().enumerate().take(256) {
        class_of.entry(*colour).or_insert(class as u8);
    }
    let mut labels = Array2::<u8>::zeros((h, w));
    for y in 0..h {
        for x in 0..w {
            let i = at(y, x);
            let colour = [buf[i], buf[i + 1], buf[i + 2]];
            labels[[y, x]] = *class_of.get(&colour).ok_or_else(|| Error::InvalidFile {
                path: path.display().to_string(),
                format: "label PNG",
                reason: format!(
                    "the colour ({}, {}, {}) of pixel (x {x}, y {y}) is not one of the {} \
                     colours of the model's palette",
                    colour[0],
                    colour[1],
                    colour[2],
                    palette.len()
                ),
            })?;
        }
    }
    Ok(labels)
}
