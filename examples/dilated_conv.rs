//! One dilated convolution on the GPU, checked against the CPU reference.
//!
//!     cargo run --release --example dilated_conv

use dilated::gpu::GpuLayer;
use dilated::{Conv2d, Gpu, GpuConv2d, cpu};
use ndarray::{Array1, Array4};

fn main() -> Result<(), dilated::Error> {
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.name());

    // 3x3 kernel, dilation 4, "same" padding, bias and fused ReLU: 32 -> 64 channels at 64x64.
    let spec = Conv2d::new(32, 64, 3).dilation(4).pad(4).with_relu(true);
    let x = Array4::from_shape_fn((1, 32, 64, 64), |(_, c, y, x)| {
        ((c * 7 + y * 3 + x) % 17) as f32 / 8.0 - 1.0
    });
    let w = Array4::from_shape_fn(spec.weight_shape(), |(o, i, ky, kx)| {
        ((o + 2 * i + 3 * ky + kx) % 11) as f32 / 50.0 - 0.1
    });
    let b = Array1::from_shape_fn(64, |o| o as f32 / 100.0);

    let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view()))?;
    let y_gpu = gpu.download(&conv.forward(&gpu, &gpu.upload(x.view())?)?)?;
    let y_cpu = cpu::reference::conv2d(x.view(), &spec, w.view(), Some(b.view()))?;

    let max_ref = y_cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = y_gpu
        .iter()
        .zip(&y_cpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "output {:?}, max |gpu - cpu| / max |cpu| = {:.2e}",
        y_gpu.dim(),
        max_diff / max_ref
    );
    Ok(())
}
