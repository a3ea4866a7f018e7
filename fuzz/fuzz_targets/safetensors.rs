//! safetensors reader on arbitrary bytes: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dilated::weights::read_safetensors_bytes(data);
});
