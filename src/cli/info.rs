//! `dilated info`: every adapter wgpu sees, with the limits that matter here.

use dilated::Error;

/// Lists the adapters; an error when there is none.
pub fn execute() -> Result<(), Error> {
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
