//! Weight and array readers against truncated, corrupted and hostile input: never a panic,
//! never an allocation sized by an untrusted length, and the checked-in corpus replayed.

mod common;

use std::path::Path;

use common::{random4, rng, same_layer, sample_set, tmpdir};
use dilated::Error;
use dilated::io::{read_npy4_bytes, write_npy};
use dilated::weights::{
    encode_caffemodel, proto, read_caffemodel_bytes, read_safetensors_bytes, write_safetensors,
};
use prost::Message;
use rand::Rng;
use rand::rngs::StdRng;

/// Truncations and random bit flips of valid files never panic. A truncated caffemodel may
/// still parse (a prefix ending on a layer boundary is a valid message), but then it must hold
/// a subset of the layers with identical values; truncated safetensors and npy files must fail.
#[test]
fn truncated_and_corrupted_files_never_panic() {
    let set = sample_set(9);
    let dir = tmpdir();
    let st_path = dir.path().join("m.safetensors");
    write_safetensors(&st_path, &set).unwrap();
    let st = std::fs::read(&st_path).unwrap();
    let npy_path = dir.path().join("a.npy");
    write_npy(&npy_path, &random4(&mut rng(10), [1, 3, 5, 4])).unwrap();
    let npy = std::fs::read(&npy_path).unwrap();
    let caffe = [
        encode_caffemodel(&set, false).unwrap(),
        encode_caffemodel(&set, true).unwrap(),
    ];

    let mut r = rng(11);
    let mut outcomes = [0usize; 2];
    for round in 0..300 {
        for c in &caffe {
            let cut = r.random_range(0..c.len());
            match read_caffemodel_bytes(&c[..cut]) {
                Ok(part) => {
                    outcomes[0] += 1;
                    assert!(part.len() < set.len());
                    for (name, w) in part.iter() {
                        assert!(same_layer(w, set.get(name).unwrap()), "{name} at cut {cut}");
                    }
                }
                Err(e) => {
                    outcomes[1] += 1;
                    assert!(matches!(e, Error::InvalidFile { .. }), "{e}");
                }
            }
            let _ = read_caffemodel_bytes(&flip(&mut r, c, 1 + round % 8));
        }
        let cut = r.random_range(0..st.len());
        assert!(read_safetensors_bytes(&st[..cut]).is_err());
        let _ = read_safetensors_bytes(&flip(&mut r, &st, 1 + round % 8));
        let cut = r.random_range(0..npy.len());
        assert!(read_npy4_bytes(&npy[..cut]).is_err());
        let _ = read_npy4_bytes(&flip(&mut r, &npy, 1 + round % 8));
    }
    assert!(outcomes[1] > 0, "{outcomes:?}");
}

/// `data` with `n` random bits flipped.
fn flip(r: &mut StdRng, data: &[u8], n: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..n {
        let i = r.random_range(0..d.len());
        d[i] ^= 1 << r.random_range(0..8);
    }
    d
}

/// Varint encoding, for hand-made hostile inputs.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn hostile_lengths_are_rejected_without_allocating() {
    // A layer claiming 2^60 bytes.
    let mut huge_layer = vec![0xa2, 0x06];
    huge_layer.extend(varint(1 << 60));
    huge_layer.extend([0u8; 16]);
    assert!(read_caffemodel_bytes(&huge_layer).is_err());
    // A packed data field claiming 4 GiB inside a small blob inside a small layer.
    let mut blob = vec![0x2a];
    blob.extend(varint(1 << 32));
    blob.extend([0u8; 8]);
    let mut layer = vec![0x0a, 0x01, b'c', 0x3a];
    layer.extend(varint(blob.len() as u64));
    layer.extend(&blob);
    let mut net = vec![0xa2, 0x06];
    net.extend(varint(layer.len() as u64));
    net.extend(&layer);
    let msg = read_caffemodel_bytes(&net).unwrap_err().to_string();
    assert!(msg.contains("4294967296"), "{msg}");
    // A shape with an enormous element count and no data.
    let p = proto::NetParameter {
        layer: vec![proto::LayerParameter {
            name: Some("big".into()),
            r#type: None,
            blobs: vec![proto::BlobProto {
                shape: Some(proto::BlobShape {
                    dim: vec![1 << 40, 1 << 40, 1, 1],
                }),
                ..Default::default()
            }],
        }],
        layers: vec![],
        name: None,
    };
    assert!(read_caffemodel_bytes(&p.encode_to_vec()).is_err());

    // safetensors: header length of 2^63, and a header describing 1 TB of data.
    let mut st = (1u64 << 63).to_le_bytes().to_vec();
    st.extend(b"{}");
    assert!(read_safetensors_bytes(&st).is_err());
    let header = br#"{"x.weight":{"dtype":"F32","shape":[262144,262144,4,1],"data_offsets":[0,1099511627776]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend(header);
    st.extend([0u8; 64]);
    assert!(read_safetensors_bytes(&st).is_err());

    // npy: a version-2 header length of 4 GiB, and a shape of 2^62 elements.
    let mut n = b"\x93NUMPY\x02\x00".to_vec();
    n.extend(u32::MAX.to_le_bytes());
    n.extend([b' '; 32]);
    assert!(read_npy4_bytes(&n).is_err());
    let dict =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 1073741824, 1, 1), }";
    let mut n = b"\x93NUMPY\x01\x00".to_vec();
    let mut h = dict.as_bytes().to_vec();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(b' ');
    }
    h.push(b'\n');
    n.extend((h.len() as u16).to_le_bytes());
    n.extend(&h);
    n.extend([0u8; 64]);
    let msg = read_npy4_bytes(&n).unwrap_err().to_string();
    assert!(msg.contains("needs"), "{msg}");

    // Unclosed brackets, which make the Python-literal parser backtrack exponentially, are
    // refused before parsing.
    for text in [
        "'x': [([([([([([(",
        "'shape': ((((((1,),),),),),)",
        "'x': (]",
    ] {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, {text}, }}\n");
        let mut n = b"\x93NUMPY\x01\x00".to_vec();
        n.extend((dict.len() as u16).to_le_bytes());
        n.extend(dict.as_bytes());
        let msg = read_npy4_bytes(&n).unwrap_err().to_string();
        assert!(msg.contains("brackets"), "{msg}");
    }
}

/// Every input saved under `tests/corpus/<target>/` (inputs that once crashed a reader, or
/// hand-made hostile cases) is read without panicking; those named `valid*` must be accepted
/// (so a reader refusing everything cannot pass), and there is one for each reader.
#[test]
fn corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut count = 0;
    let mut valid = Vec::new();
    for (target, read) in [
        (
            "caffemodel",
            (|b: &[u8]| read_caffemodel_bytes(b).map(|_| ())) as fn(&[u8]) -> _,
        ),
        ("safetensors", |b: &[u8]| {
            read_safetensors_bytes(b).map(|_| ())
        }),
        ("npy", |b: &[u8]| read_npy4_bytes(b).map(|_| ())),
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                let result: Result<(), dilated::Error> = read(&std::fs::read(&path).unwrap());
                count += 1;
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("valid") {
                    if let Err(e) = result {
                        panic!("{target}/{name} is refused: {e}");
                    }
                    valid.push(target);
                }
            }
        }
    }
    eprintln!("replayed {count} corpus inputs");
    assert!(count > 0, "no corpus found under {}", root.display());
    valid.dedup();
    assert_eq!(valid, ["caffemodel", "safetensors", "npy"], "valid inputs");
}
