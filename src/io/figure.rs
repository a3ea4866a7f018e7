//! Figures as RGB images: a [`Canvas`] to draw text, lines and heatmaps on (text and lines
//! through [`embedded_graphics`] and its built-in monospaced fonts), and [`Panel`]s, plot areas
//! that map data coordinates (map pixels, or a curve's x and y) onto it. Saved with
//! [`crate::io::save_png`], atomically (with the `fs` feature).
//!
//! ```
//! use dilated::io::figure::{BLACK, Canvas, Colour, Font, Panel, Scale};
//! use ndarray::Array2;
//!
//! let mut canvas = Canvas::new(200, 120, [255, 255, 255]);
//! let map = Array2::from_shape_fn((9, 9), |(y, x)| 1.0 / (1.0 + (y as f64 - 4.0).abs() + (x as f64 - 4.0).abs()));
//! let panel = Panel::image(&map, (10, 20, 90, 90));
//! panel.heatmap(&mut canvas, &map, Scale::Sqrt);
//! panel.rectangle(&mut canvas, (2.0, 2.0), (5.0, 5.0), [0, 255, 255], 1);
//! canvas.text("a map", (55, 2), Font::Small, BLACK, true);
//! let curve = Panel::new((110, 20, 80, 90), (0.0, 10.0), (0.0, 1.0));
//! curve.polyline(&mut canvas, &[(0.0, 1.0), (5.0, 0.3), (10.0, 0.1)], [200, 0, 0], 2);
//! assert_eq!(canvas.image().dimensions(), (200, 120));
//! ```

use std::convert::Infallible;
#[cfg(feature = "fs")]
use std::path::Path;

use embedded_graphics::Drawable;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::{FONT_6X13, FONT_9X15_BOLD, FONT_10X20};
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::{DrawTarget, OriginDimensions, Pixel, Point, Primitive, Size};
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use ndarray::{Array2, ArrayView2};

#[cfg(feature = "fs")]
use crate::error::Result;

/// An RGB colour.
pub type Colour = [u8; 3];

/// Black.
pub const BLACK: Colour = [0, 0, 0];
/// White.
pub const WHITE: Colour = [255, 255, 255];
/// Mid grey, for frames and secondary text.
pub const GREY: Colour = [110, 110, 110];

/// The built-in fonts, by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Font {
    /// 6x13 pixels per character: captions.
    Small,
    /// 9x15 bold: panel titles.
    Bold,
    /// 10x20: the figure's title.
    Large,
}

impl Font {
    fn mono(self) -> &'static embedded_graphics::mono_font::MonoFont<'static> {
        match self {
            Font::Small => &FONT_6X13,
            Font::Bold => &FONT_9X15_BOLD,
            Font::Large => &FONT_10X20,
        }
    }

    /// Height of a line of text in pixels.
    pub fn line_height(self) -> u32 {
        self.mono().character_size.height
    }

    /// Width of `text` in pixels.
    pub fn width(self, text: &str) -> u32 {
        let m = self.mono();
        text.chars().count() as u32 * (m.character_size.width + m.character_spacing)
    }
}

/// How values map to colours: all relative to the largest value, 0 black, the largest bright.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// `v / max`.
    Linear,
    /// `sqrt(v / max)`: weak values show more than on a linear scale.
    Sqrt,
    /// `log10(v / max)` over this many decades; values below them are black.
    Log(f64),
}

impl Scale {
    /// The position in 0..=1 on the colour map of `v` given the largest value `max`.
    pub fn position(self, v: f64, max: f64) -> f64 {
        // NaN, zero and negative values are black.
        if max.is_nan() || v.is_nan() || max <= 0.0 || v <= 0.0 {
            return 0.0;
        }
        let r = (v / max).min(1.0);
        match self {
            Scale::Linear => r,
            Scale::Sqrt => r.sqrt(),
            Scale::Log(decades) => (1.0 + r.log10() / decades.max(f64::MIN_POSITIVE)).max(0.0),
        }
    }

    /// How the scale reads in a caption, e.g. `sqrt(v / max)`.
    pub fn describe(self) -> String {
        match self {
            Scale::Linear => "v / max".into(),
            Scale::Sqrt => "sqrt(v / max)".into(),
            Scale::Log(d) => format!("log10(v / max) over {d} decades"),
        }
    }
}

/// Anchors of the heat colour map, from black through purple, red and orange to pale yellow.
const HEAT: [Colour; 8] = [
    [0, 0, 4],
    [40, 11, 84],
    [101, 21, 110],
    [159, 42, 99],
    [212, 72, 66],
    [245, 125, 21],
    [250, 193, 39],
    [252, 255, 164],
];

/// The heat colour map at `t` in 0..=1 (clamped; NaN is black).
pub fn heat(t: f64) -> Colour {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (HEAT.len() - 1) as f64;
    let i = (x.floor() as usize).min(HEAT.len() - 2);
    let f = x - i as f64;
    std::array::from_fn(|c| {
        (HEAT[i][c] as f64 * (1.0 - f) + HEAT[i + 1][c] as f64 * f).round() as u8
    })
}

/// An RGB image to draw on; pixels outside it are dropped.
pub struct Canvas {
    image: image::RgbImage,
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.image.width(), self.image.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> std::result::Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<Rgb888>>,
    {
        for Pixel(p, c) in pixels {
            self.put(p.x, p.y, [c.r(), c.g(), c.b()]);
        }
        Ok(())
    }
}

/// Draws `d`, whose errors cannot happen on a [`Canvas`].
fn draw<D: Drawable<Color = Rgb888>>(d: &D, canvas: &mut Canvas) {
    match d.draw(canvas) {
        Ok(_) => {}
        Err(never) => match never {},
    }
}

fn rgb(c: Colour) -> Rgb888 {
    Rgb888::new(c[0], c[1], c[2])
}

impl Canvas {
    /// A `width` x `height` canvas filled with `background`.
    pub fn new(width: u32, height: u32, background: Colour) -> Self {
        Self {
            image: image::RgbImage::from_pixel(width, height, image::Rgb(background)),
        }
    }

    /// The picture so far.
    pub fn image(&self) -> &image::RgbImage {
        &self.image
    }

    /// The finished picture.
    pub fn into_image(self) -> image::RgbImage {
        self.image
    }

    /// Sets one pixel, if it is on the canvas.
    pub fn put(&mut self, x: i32, y: i32, colour: Colour) {
        if x >= 0 && y >= 0 && (x as u32) < self.image.width() && (y as u32) < self.image.height() {
            self.image.put_pixel(x as u32, y as u32, image::Rgb(colour));
        }
    }

    /// Writes one line of `text` (ASCII; other characters show as `?`) with its top at `at.1`,
    /// starting at `at.0`, or centred on it when `centred`.
    pub fn text(&mut self, text: &str, at: (i32, i32), font: Font, colour: Colour, centred: bool) {
        let style = MonoTextStyle::new(font.mono(), rgb(colour));
        let layout = TextStyleBuilder::new()
            .baseline(Baseline::Top)
            .alignment(if centred {
                Alignment::Center
            } else {
                Alignment::Left
            })
            .build();
        draw(
            &Text::with_text_style(text, Point::new(at.0, at.1), style, layout),
            self,
        );
    }

    /// A straight line `thickness` pixels wide.
    pub fn line(&mut self, from: (i32, i32), to: (i32, i32), colour: Colour, thickness: u32) {
        draw(
            &Line::new(Point::new(from.0, from.1), Point::new(to.0, to.1))
                .into_styled(PrimitiveStyle::with_stroke(rgb(colour), thickness)),
            self,
        );
    }

    /// The outline of the rectangle `(x, y, width, height)`, drawn inside it.
    pub fn outline(&mut self, area: (i32, i32, u32, u32), colour: Colour, thickness: u32) {
        draw(
            &Rectangle::new(Point::new(area.0, area.1), Size::new(area.2, area.3))
                .into_styled(PrimitiveStyle::with_stroke(rgb(colour), thickness)),
            self,
        );
    }

    /// A horizontal colour bar of `scale` in `area` `(x, y, width, height)`, framed, with
    /// `low` and `high` written under its ends.
    pub fn colour_bar(&mut self, area: (i32, i32, u32, u32), low: &str, high: &str) {
        let (x, y, w, h) = area;
        for i in 0..w {
            let c = heat(i as f64 / (w.max(2) - 1) as f64);
            for j in 0..h {
                self.put(x + i as i32, y + j as i32, c);
            }
        }
        self.outline(area, GREY, 1);
        let below = y + h as i32 + 2;
        self.text(low, (x, below), Font::Small, BLACK, false);
        let hw = Font::Small.width(high) as i32;
        self.text(high, (x + w as i32 - hw, below), Font::Small, BLACK, false);
    }

    /// Saves the picture as a PNG, atomically.
    #[cfg(feature = "fs")]
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        super::save_png(path, &self.image)
    }
}

/// A plot area on a canvas, `(x, y, width, height)` in canvas pixels, showing data x in
/// `x_range` left to right and data y in `y_range`, bottom to top for curves
/// ([`Panel::new`]) or top to bottom for maps ([`Panel::image`], where the data coordinates are
/// the map's pixels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Panel {
    /// The area on the canvas: left, top, width, height.
    pub area: (i32, i32, u32, u32),
    /// Data x at the left and right edges.
    pub x_range: (f64, f64),
    /// Data y at the top and bottom edges.
    pub y_range: (f64, f64),
}

impl Panel {
    /// A panel for curves: `y_range.0` at the bottom, `y_range.1` at the top.
    pub fn new(area: (i32, i32, u32, u32), x_range: (f64, f64), y_range: (f64, f64)) -> Self {
        Self {
            area,
            x_range,
            y_range: (y_range.1, y_range.0),
        }
    }

    /// A panel showing `map`: its pixel (row, column) covers data `[row, row + 1) x [column,
    /// column + 1)`, row 0 at the top.
    pub fn image(map: &Array2<f64>, area: (i32, i32, u32, u32)) -> Self {
        let (h, w) = map.dim();
        Self {
            area,
            x_range: (0.0, w as f64),
            y_range: (0.0, h as f64),
        }
    }

    /// Canvas position of data point (`x`, `y`), not rounded.
    pub fn to_canvas(&self, x: f64, y: f64) -> (f64, f64) {
        let (ax, ay, aw, ah) = self.area;
        let fx = (x - self.x_range.0) / (self.x_range.1 - self.x_range.0);
        let fy = (y - self.y_range.0) / (self.y_range.1 - self.y_range.0);
        (ax as f64 + fx * aw as f64, ay as f64 + fy * ah as f64)
    }

    /// Canvas pixels per data unit across.
    pub fn zoom(&self) -> f64 {
        self.area.2 as f64 / (self.x_range.1 - self.x_range.0).abs()
    }

    /// Fills the area with `map` in the heat colours on `scale`, relative to the largest value
    /// shown. Each canvas pixel shows the mean of the map pixels it covers (the nearest one
    /// where the map is smaller than the area), so narrow peaks keep their mass when a large
    /// map is shrunk.
    pub fn heatmap(&self, canvas: &mut Canvas, map: &Array2<f64>, scale: Scale) {
        let shown = resample(map.view(), self.area.3 as usize, self.area.2 as usize);
        let max = shown
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        for ((y, x), &v) in shown.indexed_iter() {
            canvas.put(
                self.area.0 + x as i32,
                self.area.1 + y as i32,
                heat(scale.position(v, max)),
            );
        }
    }

    /// The outline of a rectangle of data coordinates with corner `(y, x)` (top left on a map)
    /// and size `(height, width)`, drawn on its edge pixels.
    pub fn rectangle(
        &self,
        canvas: &mut Canvas,
        corner: (f64, f64),
        size: (f64, f64),
        colour: Colour,
        thickness: u32,
    ) {
        let (x0, y0) = self.to_canvas(corner.1, corner.0);
        let (x1, y1) = self.to_canvas(corner.1 + size.1, corner.0 + size.0);
        let (l, t) = (x0.min(x1).round() as i32, y0.min(y1).round() as i32);
        let (r, b) = (x0.max(x1).round() as i32, y0.max(y1).round() as i32);
        canvas.outline(
            (l, t, (r - l).max(1) as u32, (b - t).max(1) as u32),
            colour,
            thickness,
        );
    }

    /// A polyline through data points `(x, y)`; non-finite points break it.
    pub fn polyline(
        &self,
        canvas: &mut Canvas,
        points: &[(f64, f64)],
        colour: Colour,
        thickness: u32,
    ) {
        let on_canvas = |&(x, y): &(f64, f64)| {
            let (cx, cy) = self.to_canvas(x, y);
            (cx.is_finite() && cy.is_finite()).then(|| (cx.round() as i32, cy.round() as i32))
        };
        for pair in points.windows(2) {
            if let (Some(a), Some(b)) = (on_canvas(&pair[0]), on_canvas(&pair[1])) {
                canvas.line(a, b, colour, thickness);
            }
        }
    }

    /// A frame around the area, just outside it.
    pub fn frame(&self, canvas: &mut Canvas, colour: Colour) {
        let (x, y, w, h) = self.area;
        canvas.outline((x - 1, y - 1, w + 2, h + 2), colour, 1);
    }
}

/// `map` shown at `height` x `width`: each output pixel the mean of the map pixels it covers,
/// or the nearest one where the map is smaller.
fn resample(map: ArrayView2<f64>, height: usize, width: usize) -> Array2<f64> {
    let (h, w) = map.dim();
    if h == 0 || w == 0 {
        return Array2::zeros((height, width));
    }
    let span = |i: usize, n: usize, out: usize| {
        let a = i * n / out;
        let b = ((i + 1) * n).div_ceil(out).clamp(a + 1, n.max(a + 1));
        (a.min(n - 1), b.min(n))
    };
    let rows: Vec<(usize, usize)> = (0..height).map(|i| span(i, h, height)).collect();
    let cols: Vec<(usize, usize)> = (0..width).map(|i| span(i, w, width)).collect();
    Array2::from_shape_fn((height, width), |(y, x)| {
        let ((y0, y1), (x0, x1)) = (rows[y], cols[x]);
        let block = map.slice(ndarray::s![y0..y1.max(y0 + 1), x0..x1.max(x0 + 1)]);
        block.sum() / block.len() as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_the_mean_and_enlarges_by_repetition() {
        let map = Array2::from_shape_fn((4, 4), |(y, x)| (y * 4 + x) as f64);
        let small = resample(map.view(), 2, 2);
        assert_eq!(small, ndarray::arr2(&[[2.5, 4.5], [10.5, 12.5]]));
        let big = resample(map.view(), 8, 8);
        assert_eq!(big[[0, 0]], 0.0);
        assert_eq!(big[[1, 1]], 0.0);
        assert_eq!(big[[7, 7]], 15.0);
        assert_eq!(big[[2, 6]], 7.0);
    }

    #[test]
    fn scales_and_colours() {
        assert_eq!(Scale::Linear.position(0.25, 1.0), 0.25);
        assert_eq!(Scale::Sqrt.position(0.25, 1.0), 0.5);
        assert!((Scale::Log(4.0).position(0.01, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(Scale::Log(2.0).position(1e-5, 1.0), 0.0);
        assert_eq!(Scale::Sqrt.position(1.0, 0.0), 0.0);
        assert_eq!(heat(0.0), HEAT[0]);
        assert_eq!(heat(1.0), HEAT[7]);
        assert_eq!(heat(f64::NAN), HEAT[0]);
    }

    #[test]
    fn text_and_outlines_land_on_the_canvas() {
        let mut c = Canvas::new(60, 30, WHITE);
        c.text("Hi", (2, 2), Font::Small, BLACK, false);
        assert!(c.image().pixels().any(|p| p.0 == BLACK));
        c.outline((40, 5, 10, 10), [255, 0, 0], 1);
        assert_eq!(c.image().get_pixel(40, 5).0, [255, 0, 0]);
        assert_eq!(c.image().get_pixel(49, 14).0, [255, 0, 0]);
        assert_eq!(c.image().get_pixel(45, 10).0, WHITE);
        // Off the canvas: dropped.
        c.line((-10, -10), (100, 100), BLACK, 3);
    }
}
