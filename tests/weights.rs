//! Weight and array files: round trips through every format, files encoded independently of
//! the writer, `WeightSet::check`, and errors that leave nothing behind (robustness against
//! truncated, corrupted and hostile input: `tests/hostile_files.rs`).

mod common;

use common::{assert_same_set, expected_of, random1, random4, rng, sample_set, tmpdir};

use std::path::{Path, PathBuf};

use dilated::Error;
use dilated::io::{read_npy4, read_npy4_bytes, write_npy};
use dilated::weights::{
    ExpectedLayer, LayerWeights, WeightSet, encode_caffemodel, encode_safetensors, proto,
    read_caffemodel, read_caffemodel_bytes, read_safetensors, read_safetensors_bytes,
    write_caffemodel, write_safetensors,
};
use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn, ShapeBuilder};
use prost::Message;
use rand::Rng;

#[test]
fn caffemodel_round_trip_in_both_forms() {
    let set = sample_set(1);
    let dir = tmpdir();
    for legacy in [false, true] {
        let path = dir.path().join(format!("m{legacy}.caffemodel"));
        write_caffemodel(&path, &set, legacy).unwrap();
        let back = read_caffemodel(&path).unwrap();
        // The reader keeps file order.
        assert_eq!(
            back.names().collect::<Vec<_>>(),
            set.names().collect::<Vec<_>>()
        );
        assert_same_set(&back, &set);
        back.check(&expected_of(&set)).unwrap();
        // In-memory encoding gives the same bytes as the file.
        let bytes = encode_caffemodel(&set, legacy).unwrap();
        assert_eq!(bytes, std::fs::read(&path).unwrap());
        assert_same_set(&read_caffemodel_bytes(&bytes).unwrap(), &set);
        // ... and decodes with plain prost into the expected messages.
        let net = proto::NetParameter::decode(bytes.as_slice()).unwrap();
        if legacy {
            assert!(net.layer.is_empty());
            assert_eq!(net.layers.len(), 4);
            let l = &net.layers[0];
            assert_eq!(l.name.as_deref(), Some("conv1_1"));
            let b = &l.blobs[1];
            assert_eq!(
                (b.num, b.channels, b.height, b.width),
                (Some(1), Some(1), Some(1), Some(8))
            );
        } else {
            assert!(net.layers.is_empty());
            assert_eq!(net.layer.len(), 4);
            let l = &net.layer[1];
            assert_eq!(l.r#type.as_deref(), Some("Convolution"));
            assert_eq!(l.blobs[0].shape.as_ref().unwrap().dim, vec![16, 8, 3, 3]);
            assert_eq!(l.blobs[1].shape.as_ref().unwrap().dim, vec![16]);
            assert_eq!(l.blobs[0].data.len(), 16 * 8 * 9);
        }
    }
}

// Messages with legacy shapes and *unpacked* floats, written with plain prost, to check the
// reader against an encoding that does not come from this crate's writer.
#[derive(Clone, PartialEq, prost::Message)]
struct UnpackedBlob {
    #[prost(int32, optional, tag = "1")]
    num: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    channels: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    height: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    width: Option<i32>,
    #[prost(float, repeated, packed = "false", tag = "5")]
    data: Vec<f32>,
    /// `diff`: present in snapshots, must be skipped.
    #[prost(float, repeated, tag = "6")]
    diff: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UnpackedV1Layer {
    #[prost(string, repeated, tag = "2")]
    bottom: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    top: Vec<String>,
    #[prost(string, optional, tag = "4")]
    name: Option<String>,
    #[prost(int32, optional, tag = "5")]
    r#type: Option<i32>,
    #[prost(message, repeated, tag = "6")]
    blobs: Vec<UnpackedBlob>,
    /// `blobs_lr`: must be skipped.
    #[prost(float, repeated, packed = "false", tag = "7")]
    blobs_lr: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UnpackedNet {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, repeated, tag = "3")]
    input: Vec<String>,
    #[prost(int32, repeated, tag = "4")]
    input_dim: Vec<i32>,
    #[prost(message, repeated, tag = "2")]
    layers: Vec<UnpackedV1Layer>,
}

fn unpacked_blob(shape: [i32; 4], data: &[f32]) -> UnpackedBlob {
    UnpackedBlob {
        num: Some(shape[0]),
        channels: Some(shape[1]),
        height: Some(shape[2]),
        width: Some(shape[3]),
        data: data.to_vec(),
        diff: vec![0.5; 3],
    }
}

#[test]
fn hand_encoded_legacy_file_with_unpacked_floats() {
    let mut r = rng(2);
    let w1 = random4(&mut r, [6, 3, 3, 3]);
    let b1 = random1(&mut r, 6);
    let w2 = random4(&mut r, [2, 6, 1, 1]);
    let net = UnpackedNet {
        name: Some("legacy".into()),
        input: vec!["data".into()],
        input_dim: vec![1, 3, 10, 10],
        layers: vec![
            UnpackedV1Layer {
                name: Some("conv1".into()),
                r#type: Some(4),
                bottom: vec!["data".into()],
                top: vec!["conv1".into()],
                blobs: vec![
                    unpacked_blob([6, 3, 3, 3], w1.as_slice().unwrap()),
                    unpacked_blob([1, 1, 1, 6], b1.as_slice().unwrap()),
                ],
                blobs_lr: vec![1.0, 2.0],
            },
            UnpackedV1Layer {
                name: Some("relu1".into()),
                r#type: Some(18),
                ..Default::default()
            },
            UnpackedV1Layer {
                name: Some("score".into()),
                r#type: Some(4),
                blobs: vec![unpacked_blob([2, 6, 1, 1], w2.as_slice().unwrap())],
                ..Default::default()
            },
        ],
    };
    let bytes = net.encode_to_vec();
    // Unpacked floats: each value has its own key byte (0x2d = field 5, fixed32).
    assert!(
        bytes
            .windows(5)
            .any(|w| w[0] == 0x2d && w[1..] == w1[[0, 0, 0, 0]].to_le_bytes())
    );
    let set = read_caffemodel_bytes(&bytes).unwrap();
    assert_eq!(set.names().collect::<Vec<_>>(), ["conv1", "score"]);
    let mut want = WeightSet::new();
    want.insert("conv1", LayerWeights::new("conv1", w1, Some(b1)).unwrap());
    want.insert("score", LayerWeights::new("score", w2, None).unwrap());
    assert_same_set(&set, &want);
}

#[test]
fn hand_encoded_current_file_with_2d_weights_doubles_and_v0_layers() {
    let mut r = rng(3);
    let fc_w = Array2::from_shape_simple_fn((7, 12), || r.random_range(-1.0f32..1.0));
    let fc_b = random1(&mut r, 7);
    let dbl: Vec<f64> = (0..4 * 2 * 2 * 2)
        .map(|_| r.random_range(-1.0f64..1.0))
        .collect();
    let blob = |dims: Vec<i64>, data: Vec<f32>| proto::BlobProto {
        shape: Some(proto::BlobShape { dim: dims }),
        data,
        ..Default::default()
    };
    let net = proto::NetParameter {
        name: Some("current".into()),
        layer: vec![
            proto::LayerParameter {
                name: Some("data".into()),
                r#type: Some("Input".into()),
                blobs: vec![],
            },
            proto::LayerParameter {
                name: Some("fc".into()),
                r#type: Some("InnerProduct".into()),
                blobs: vec![
                    blob(vec![7, 12], fc_w.iter().copied().collect()),
                    // A bias of any shape with `out` elements.
                    blob(vec![1, 7], fc_b.to_vec()),
                ],
            },
            proto::LayerParameter {
                name: Some("dbl".into()),
                r#type: Some("Convolution".into()),
                blobs: vec![proto::BlobProto {
                    shape: Some(proto::BlobShape {
                        dim: vec![4, 2, 2, 2],
                    }),
                    double_data: dbl.clone(),
                    ..Default::default()
                }],
            },
        ],
        layers: vec![proto::V1LayerParameter {
            layer: Some(proto::V0LayerParameter {
                name: Some("v0conv".into()),
                r#type: Some("conv".into()),
                blobs: vec![proto::BlobProto {
                    num: Some(1),
                    channels: Some(1),
                    height: Some(1),
                    width: Some(3),
                    data: vec![1.0, -2.0, 3.5],
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }],
    };
    let set = read_caffemodel_bytes(&net.encode_to_vec()).unwrap();
    // prost writes field 2 (`layers`) before field 100 (`layer`); the reader keeps file order.
    assert_eq!(set.names().collect::<Vec<_>>(), ["v0conv", "fc", "dbl"]);
    let fc = set.get("fc").unwrap();
    assert_eq!(fc.weight_shape(), [7, 12, 1, 1]);
    assert_eq!(
        fc.weight.iter().copied().collect::<Vec<_>>(),
        fc_w.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(fc.bias.as_ref().unwrap(), &fc_b);
    let d = set.get("dbl").unwrap();
    assert_eq!(d.weight_shape(), [4, 2, 2, 2]);
    let want: Vec<f32> = dbl.iter().map(|&x| x as f32).collect();
    assert_eq!(d.weight.iter().copied().collect::<Vec<_>>(), want);
    assert!(d.bias.is_none());
    let v0 = set.get("v0conv").unwrap();
    assert_eq!(v0.weight_shape(), [1, 1, 1, 3]);
    assert_eq!(v0.weight.as_slice().unwrap(), &[1.0, -2.0, 3.5]);
}

#[test]
fn caffemodel_errors_name_the_layer() {
    let bad_count = proto::NetParameter {
        layer: vec![proto::LayerParameter {
            name: Some("conv7".into()),
            r#type: None,
            blobs: vec![proto::BlobProto {
                shape: Some(proto::BlobShape {
                    dim: vec![2, 2, 3, 3],
                }),
                data: vec![0.25; 35],
                ..Default::default()
            }],
        }],
        layers: vec![],
        name: None,
    };
    let e = read_caffemodel_bytes(&bad_count.encode_to_vec()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::InvalidFile { .. }), "{msg}");
    assert!(
        msg.contains("conv7") && msg.contains("36") && msg.contains("35"),
        "{msg}"
    );

    let bad_bias = proto::NetParameter {
        layer: vec![proto::LayerParameter {
            name: Some("conv8".into()),
            r#type: None,
            blobs: vec![
                proto::BlobProto {
                    shape: Some(proto::BlobShape {
                        dim: vec![2, 1, 1, 1],
                    }),
                    data: vec![1.0, 2.0],
                    ..Default::default()
                },
                proto::BlobProto {
                    shape: Some(proto::BlobShape { dim: vec![3] }),
                    data: vec![1.0, 2.0, 3.0],
                    ..Default::default()
                },
            ],
        }],
        layers: vec![],
        name: None,
    };
    let msg = read_caffemodel_bytes(&bad_bias.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("conv8") && msg.contains("bias"), "{msg}");

    // Not a caffemodel at all.
    let msg = read_caffemodel_bytes(b"name: \"VGG\"\nlayer { }\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("caffemodel"), "{msg}");
    // Unreadable file.
    let e = read_caffemodel("/nonexistent/dir/model.caffemodel").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn caffemodel_to_safetensors_round_trip() {
    let set = sample_set(4);
    let dir = tmpdir();
    let cm = dir.path().join("m.caffemodel");
    let st = dir.path().join("m.safetensors");
    write_caffemodel(&cm, &set, true).unwrap();
    let from_caffe = WeightSet::load(&cm).unwrap();
    write_safetensors(&st, &from_caffe).unwrap();
    let from_st = WeightSet::load(&st).unwrap();
    assert_same_set(&from_st, &set);
    assert_same_set(&read_safetensors(&st).unwrap(), &from_st);
    // The layer order survives too (tensors are written in the set's order).
    assert_eq!(
        from_st.names().collect::<Vec<_>>(),
        set.names().collect::<Vec<_>>()
    );
    // Written files get ordinary permissions, like any file created here.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&st), mode(&plain));
        assert_eq!(mode(&cm), mode(&plain));
    }
    let bytes = std::fs::read(&st).unwrap();
    assert_same_set(&read_safetensors_bytes(&bytes).unwrap(), &set);
    // In-memory encoding gives the same bytes as the file.
    assert_eq!(encode_safetensors(&from_caffe).unwrap(), bytes);
    // PyTorch naming, and the file reads back with the safetensors crate itself.
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = t.names();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "conv1_1.bias",
            "conv1_1.weight",
            "ctx_conv2.bias",
            "ctx_conv2.weight",
            "fc-final.bias",
            "fc-final.weight",
            "no_bias.weight"
        ]
    );
    assert_eq!(
        t.tensor("ctx_conv2.weight").unwrap().shape(),
        &[16, 8, 3, 3]
    );
    assert!(matches!(
        WeightSet::load(dir.path().join("m.bin")),
        Err(Error::Weights(_))
    ));
}

#[test]
fn safetensors_dtype_rank_and_2d_weights() {
    use safetensors::tensor::{Dtype, TensorView};
    let f64_bytes: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f32_2d: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let f32_3d: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();

    let t = [(
        "a.weight",
        TensorView::new(Dtype::F64, vec![2, 1, 1, 1], &f64_bytes).unwrap(),
    )];
    let msg = read_safetensors_bytes(&safetensors::serialize(t, None).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("a.weight") && msg.contains("F64") && msg.contains("F32"),
        "{msg}"
    );

    let t = [(
        "lin.weight",
        TensorView::new(Dtype::F32, vec![2, 3], &f32_2d).unwrap(),
    )];
    let set = read_safetensors_bytes(&safetensors::serialize(t, None).unwrap()).unwrap();
    let lin = set.get("lin").unwrap();
    assert_eq!(lin.weight_shape(), [2, 3, 1, 1]);
    assert_eq!(
        lin.weight.as_slice().unwrap(),
        &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );

    let t = [(
        "c.weight",
        TensorView::new(Dtype::F32, vec![2, 2, 2], &f32_3d).unwrap(),
    )];
    let msg = read_safetensors_bytes(&safetensors::serialize(t, None).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("c.weight") && msg.contains("[2, 2, 2]"),
        "{msg}"
    );

    let t = [
        (
            "c.weight",
            TensorView::new(Dtype::F32, vec![2, 3, 1, 1], &f32_2d).unwrap(),
        ),
        (
            "c.bias",
            TensorView::new(Dtype::F32, vec![3], &f32_2d[..12]).unwrap(),
        ),
    ];
    let msg = read_safetensors_bytes(&safetensors::serialize(t, None).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("c.bias") && msg.contains("2 output channels"),
        "{msg}"
    );
}

#[test]
fn check_reports_missing_layers_and_wrong_shapes() {
    let set = sample_set(5);
    let mut expected = expected_of(&set);
    // Extra layers in the set are ignored.
    expected.pop();
    set.check(&expected).unwrap();

    let mut missing = expected.clone();
    missing.push(ExpectedLayer::new("fc6", [4096, 512, 7, 7], true));
    missing.push(ExpectedLayer::new("fc7", [4096, 4096, 1, 1], true));
    let e = set.check(&missing).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::MissingLayers { missing } if missing == &["fc6", "fc7"]),
        "{msg}"
    );
    assert!(msg.contains("fc6") && msg.contains("fc7"), "{msg}");

    let mut wrong = expected.clone();
    wrong[1].weight_shape = [16, 8, 5, 5];
    let e = set.check(&wrong).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("ctx_conv2") && msg.contains("[16, 8, 5, 5]") && msg.contains("[16, 8, 3, 3]"),
        "{msg}"
    );
    assert!(matches!(e, Error::WeightShape { .. }));

    let mut no_bias = expected.clone();
    no_bias[0].bias = false;
    let msg = set.check(&no_bias).unwrap_err().to_string();
    assert!(msg.contains("conv1_1") && msg.contains("bias"), "{msg}");

    let mut needs_bias = expected_of(&set);
    needs_bias[3].bias = true;
    let msg = set.check(&needs_bias).unwrap_err().to_string();
    assert!(msg.contains("no_bias") && msg.contains("bias"), "{msg}");
}

#[test]
fn weight_set_basics() {
    let mut set = sample_set(6);
    assert_eq!(set.len(), 4);
    assert_eq!(
        set.num_parameters(),
        8 * 27 + 8 + 16 * 72 + 16 + 5 * 16 + 5 + 20
    );
    let w = set.remove("ctx_conv2").unwrap();
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        ["conv1_1", "fc-final", "no_bias"]
    );
    assert!(set.get("fc-final").is_some() && set.get("ctx_conv2").is_none());
    assert!(set.insert("conv1_1", w.clone()).is_some());
    assert_eq!(set.get("conv1_1").unwrap(), &w);
    let e = LayerWeights::new("x", Array4::zeros((3, 1, 1, 1)), Some(Array1::zeros(2)));
    assert!(matches!(
        e,
        Err(Error::BiasLength {
            expected: 3,
            actual: 2,
            ..
        })
    ));
}

#[test]
fn npy_round_trip_and_errors() {
    let dir = tmpdir();
    let mut r = rng(7);
    let a = random4(&mut r, [2, 3, 4, 5]);
    let p = dir.path().join("a.npy");
    write_npy(&p, &a).unwrap();
    assert_eq!(read_npy4(&p).unwrap(), a);
    // A dynamic-rank array of rank 4, a non-contiguous view and a Fortran-order file.
    write_npy(&p, &a.clone().into_dyn()).unwrap();
    assert_eq!(read_npy4(&p).unwrap(), a);
    let t = a.view().permuted_axes([0, 1, 3, 2]);
    write_npy(&p, &t).unwrap();
    assert_eq!(read_npy4(&p).unwrap(), t);
    let f = Array4::from_shape_vec((2, 3, 4, 5).f(), a.iter().copied().collect()).unwrap();
    ndarray_npy::write_npy(&p, &f).unwrap();
    let back = read_npy4(&p).unwrap();
    assert_eq!(back, f);
    assert!(back.is_standard_layout());

    // Wrong rank.
    write_npy(&p, &ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4]))).unwrap();
    let msg = read_npy4(&p).unwrap_err().to_string();
    assert!(msg.contains("[2, 3, 4]") && msg.contains('4'), "{msg}");
    // Wrong dtype.
    ndarray_npy::write_npy(&p, &ndarray::Array4::<f64>::zeros((1, 1, 2, 2))).unwrap();
    let msg = read_npy4(&p).unwrap_err().to_string();
    assert!(msg.contains("f8") && msg.contains("float32"), "{msg}");
    // Truncated data and trailing bytes.
    write_npy(&p, &a).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert!(read_npy4_bytes(&bytes[..bytes.len() - 4]).is_err());
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    assert!(read_npy4_bytes(&longer).is_err());
    assert_eq!(read_npy4_bytes(&bytes).unwrap(), a);
}

#[test]
fn unwritable_paths_give_io_errors_and_leave_nothing_behind() {
    let set = sample_set(8);
    let a = Array4::<f32>::ones((1, 1, 2, 2));
    let dir = tmpdir();
    // A path whose "directory" is a regular file (fails even for root).
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let inside_file = file.join("out.caffemodel");
    assert!(matches!(
        write_caffemodel(&inside_file, &set, false),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        write_safetensors(file.join("o.safetensors"), &set),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        write_npy(file.join("o.npy"), &a),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        write_caffemodel("/nonexistent-dir/x/out.caffemodel", &set, true),
        Err(Error::Io { .. })
    ));

    // A destination that is a directory: the temporary file is written in full, the rename
    // fails, and the temporary file must be removed.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let target: PathBuf = sub.join("taken");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"k").unwrap();
    let e = write_caffemodel(&target, &set, false).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(write_safetensors(&target, &set).is_err());
    assert!(write_npy(&target, &a).is_err());
    assert_eq!(common::files_in(&sub), ["taken"]);
    assert_eq!(common::files_in(&target), ["keep"]);

    // Invalid weights are refused before any file is created.
    let mut bad = WeightSet::new();
    bad.insert(
        "x",
        LayerWeights {
            weight: Array4::zeros((2, 1, 1, 1)),
            bias: Some(Array1::zeros(3)),
        },
    );
    assert!(write_caffemodel(sub.join("bad.caffemodel"), &bad, false).is_err());
    assert!(write_safetensors(sub.join("bad.safetensors"), &bad).is_err());
    assert_eq!(common::files_in(&sub), ["taken"]);

    // A successful write replaces an existing file and leaves no temporary file.
    let out = sub.join("m.caffemodel");
    std::fs::write(&out, b"old").unwrap();
    write_caffemodel(&out, &set, false).unwrap();
    assert_eq!(common::files_in(&sub), ["m.caffemodel", "taken"]);
    assert_same_set(&read_caffemodel(&out).unwrap(), &set);
}
