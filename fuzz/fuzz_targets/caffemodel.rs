//! `.caffemodel` reader on arbitrary bytes: never panics; whatever it accepts survives a write
//! and re-read unchanged.
#![no_main]

use dilated::weights::{encode_caffemodel, read_caffemodel_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = read_caffemodel_bytes(data) {
        let bytes = encode_caffemodel(&set, false).expect("a set that was read can be written");
        let again = read_caffemodel_bytes(&bytes).expect("a written set reads back");
        assert_eq!(again.len(), set.len());
        for ((n1, w1), (n2, w2)) in set.iter().zip(again.iter()) {
            assert_eq!(n1, n2);
            assert_eq!(w1.weight.dim(), w2.weight.dim());
            assert!(w1.weight.iter().zip(w2.weight.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert_eq!(w1.bias.as_ref().map(|b| b.len()), w2.bias.as_ref().map(|b| b.len()));
        }
    }
});
