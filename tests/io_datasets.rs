//! The files a training run reads: label PNGs (grayscale or palette-indexed class ids), cached
//! front-end scores as 3-D `.npy` arrays, and list files.

use std::io::BufWriter;

use dilated::Error;
use dilated::io::{load_label_png, read_list, read_npy3, write_npy};
use ndarray::{Array2, Array3, Array4};

fn labels() -> Array2<u8> {
    // Class ids 0..21 and the ignore label 255, in a pattern that tells rows from columns.
    Array2::from_shape_fn((7, 11), |(y, x)| {
        if (x + y) % 5 == 0 {
            255
        } else {
            ((3 * y + x) % 21) as u8
        }
    })
}

#[test]
fn grayscale_and_palette_label_pngs_read_as_class_ids() {
    let dir = tempfile::tempdir().unwrap();
    let want = labels();
    let (h, w) = want.dim();

    let gray = dir.path().join("gray.png");
    image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([want[[y as usize, x as usize]]])
    })
    .save(&gray)
    .unwrap();
    assert_eq!(load_label_png(&gray).unwrap(), want);

    // A palette PNG as VOC ships them: indices are classes, colours are for people.
    let indexed = dir.path().join("indexed.png");
    let file = std::fs::File::create(&indexed).unwrap();
    let mut encoder = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
    encoder.set_palette(palette);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(want.as_slice().unwrap()).unwrap();
    writer.finish().unwrap();
    assert_eq!(load_label_png(&indexed).unwrap(), want);

    // Colour PNGs are not label maps.
    let rgb = dir.path().join("rgb.png");
    image::RgbImage::new(4, 3).save(&rgb).unwrap();
    let err = load_label_png(&rgb).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("8-bit grayscale or palette-indexed"),
        "{err}"
    );
    assert!(matches!(
        load_label_png(dir.path().join("missing.png")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn features_read_as_three_dimensional_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.npy");
    let want = Array3::from_shape_fn((21, 5, 6), |(c, y, x)| (c * 100 + y * 10 + x) as f32 - 0.5);
    write_npy(&path, &want).unwrap();
    assert_eq!(read_npy3(&path).unwrap(), want);
    // A 4-D array is refused with the rank named.
    let four = dir.path().join("four.npy");
    write_npy(&four, &Array4::<f32>::zeros((1, 2, 3, 4))).unwrap();
    let err = read_npy3(&four).unwrap_err();
    assert!(err.to_string().contains("expected 3 (C, H, W)"), "{err}");
}

#[test]
fn list_files_give_one_path_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "a/1.npy\n  b/2.npy  \n\nc 3.npy\n").unwrap();
    let got = read_list(&list).unwrap();
    let want: Vec<std::path::PathBuf> = ["a/1.npy", "b/2.npy", "c 3.npy"]
        .iter()
        .map(Into::into)
        .collect();
    assert_eq!(got, want);
    assert!(matches!(
        read_list(dir.path().join("none.txt")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn images_decode_from_bytes_as_from_their_files() {
    // Every pixel different, so a swapped axis or channel shows.
    let img = image::RgbImage::from_fn(13, 6, |x, y| {
        image::Rgb([(20 * x) as u8, (40 * y + 3) as u8, (7 * x + 11 * y) as u8])
    });
    let want = Array3::from_shape_fn((6, 13, 3), |(y, x, c)| {
        let rgb = [20 * x, 40 * y + 3, 7 * x + 11 * y];
        rgb[2 - c] as f32
    });
    let dir = tempfile::tempdir().unwrap();
    for (format, name) in [
        (image::ImageFormat::Png, "a.png"),
        (image::ImageFormat::Bmp, "a.bmp"),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        let bytes = bytes.into_inner();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            dilated::io::decode_image_bgr(&bytes).unwrap(),
            want,
            "{name}"
        );
        assert_eq!(dilated::io::load_image_bgr(&path).unwrap(), want, "{name}");
    }
    let e = dilated::io::decode_image_bgr(b"not an image").unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e}");
}
