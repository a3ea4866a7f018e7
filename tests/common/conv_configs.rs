//! The seeded convolution configurations the kernel tests share: odd sizes, non-square
//! kernels, dilation up to 16, strides 1 to 3, asymmetric padding, channel counts that are not
//! multiples of any tile (1, 3, 17, 65), batches of 1 to 3, bias and ReLU on and off, and seven
//! fixed larger layers.

use dilated::{Conv2d, Padding, Shape};
use rand::Rng;
use rand::rngs::StdRng;

/// Configurations the kernel tests run.
pub const CONFIGS: usize = 72;
/// Most multiply-adds per configuration, so the f64 reference and the direct kernel stay quick.
const MAX_MACS: usize = 1_500_000;

fn pick(rng: &mut StdRng, options: &[usize]) -> usize {
    options[rng.random_range(0..options.len())]
}

/// Larger layers, so every kernel runs several tiles over pixels and channels.
fn fixed_spec(i: usize) -> Option<(Conv2d, Shape)> {
    Some(match i {
        0 => (
            Conv2d::new(17, 40, 3).dilation(2).pad(2).with_relu(true),
            Shape::new(2, 17, 33, 37),
        ),
        1 => (Conv2d::new(70, 33, 1), Shape::new(1, 70, 30, 29)),
        2 => (
            Conv2d::new(9, 34, 7).dilation(4).with_bias(false),
            Shape::new(1, 9, 40, 31),
        ),
        3 => (
            Conv2d::new(3, 65, 3)
                .stride(2)
                .padding(Padding::new(0, 1, 2, 3)),
            Shape::new(3, 3, 45, 50),
        ),
        // More output channels and pixels than one 128 x 128 tile of the tiled kernel.
        4 => (
            Conv2d::new(24, 136, 3).dilation(3).pad(3),
            Shape::new(1, 24, 19, 23),
        ),
        5 => (
            Conv2d::new(40, 136, 1).with_relu(true),
            Shape::new(2, 40, 12, 13),
        ),
        // fc6-like: a deep reduction (3136) over one tile, which the tiled kernel splits.
        6 => (
            Conv2d::new(64, 40, 7).dilation(2).with_relu(true),
            Shape::new(1, 64, 20, 18),
        ),
        _ => return None,
    })
}

/// Configuration `i` of [`CONFIGS`], drawn from `rng` (the last seven fixed).
pub fn conv_config(rng: &mut StdRng, i: usize) -> (Conv2d, Shape) {
    if let Some(fixed) = fixed_spec(i.wrapping_sub(CONFIGS - 7)) {
        return fixed;
    }
    let channels = [1, 3, 17, 65, 2, 5, 8, 32, 33];
    let in_c = pick(rng, &channels);
    let out_c = pick(rng, &channels);
    let (kh, kw) = if i.is_multiple_of(9) {
        (1, 1)
    } else if i.is_multiple_of(13) {
        (7, 7)
    } else {
        (rng.random_range(1..=5), rng.random_range(1..=5))
    };
    let dilation = if i.is_multiple_of(5) {
        (16, 16)
    } else {
        (pick(rng, &[1, 1, 2, 3, 4, 8]), pick(rng, &[1, 2, 4, 5, 16]))
    };
    let stride = if i.is_multiple_of(3) {
        (1, 1)
    } else {
        (rng.random_range(1..=3), rng.random_range(1..=3))
    };
    let padding = if i.is_multiple_of(9) && i.is_multiple_of(2) {
        Padding::uniform(0)
    } else {
        Padding::new(
            rng.random_range(0..=dilation.0 * (kh - 1) / 2 + 1),
            rng.random_range(0..=dilation.1 * (kw - 1) / 2 + 1),
            rng.random_range(0..=dilation.0 * (kh - 1) / 2 + 1),
            rng.random_range(0..=dilation.1 * (kw - 1) / 2 + 1),
        )
    };
    let spec = Conv2d::new(in_c, out_c, 1)
        .kernel(kh, kw)
        .dilation_hw(dilation.0, dilation.1)
        .stride_hw(stride.0, stride.1)
        .padding(padding)
        .with_bias(rng.random_bool(0.6))
        .with_relu(rng.random_bool(0.5));
    let (eh, ew) = spec.extent();
    // The input must hold the dilated kernel once padded.
    let min_h = eh.saturating_sub(padding.top + padding.bottom).max(1);
    let min_w = ew.saturating_sub(padding.left + padding.right).max(1);
    let batch = rng.random_range(1..=3);
    let mut h = min_h + rng.random_range(0..20);
    let mut w = min_w + rng.random_range(0..20);
    loop {
        let out = spec
            .output_shape(Shape::new(batch, in_c, h, w), "test")
            .expect("the input fits the kernel");
        if out.len() * in_c * kh * kw <= MAX_MACS || (h == min_h && w == min_w) {
            return (spec, Shape::new(batch, in_c, h, w));
        }
        h = (h - 1).max(min_h);
        w = (w - 1).max(min_w);
    }
}
