//! `dilated info`: the CPU's features and caches as the fast CPU path sees them, and every
//! adapter wgpu sees, with the limits that matter here.

use dilated::Error;

/// Prints the CPU and lists the adapters; an error when there is no adapter.
pub fn execute() -> Result<(), Error> {
    println!("{}\n", dilated::cpu::fast::CpuInfo::get());
    let adapters = dilated::gpu::list_adapters(wgpu::Backends::all());
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: String::new(),
        });
    }
    for a in adapters {
        println!("{a}\n");
    }
    Ok(())
}
