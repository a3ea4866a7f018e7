//! `.caffemodel` files encoded by Google's protobuf library from Caffe's published schema
//! (`tests/fixtures/make_caffemodel.py`), read through the public reader and compared bit for
//! bit with the arrays NumPy saved next to them. Neither the files nor the arrays come from
//! this crate, so a mistake shared by its writer and reader cannot hide here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dilated::net::{Network, Op};
use dilated::weights::{WeightSet, read_caffemodel, read_caffemodel_bytes};
use dilated::{Conv2d, Deconv2d, MaxPool2d};
use ndarray::ArrayD;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caffemodel")
}

/// `tests/fixtures/caffemodel/<fixture>/<layer>.<what>.npy`, as NumPy wrote it.
fn npy(fixture: &str, layer: &str, what: &str) -> ArrayD<f32> {
    let path = fixtures().join(fixture).join(format!("{layer}.{what}.npy"));
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bits<'a>(values: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    values.into_iter().map(|v| v.to_bits()).collect()
}

/// Little-endian bytes of the values, as a packed protobuf `float` field holds them.
fn packed(a: &ArrayD<f32>) -> Vec<u8> {
    a.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Layers with a saved array in a fixture's folder (weights; gradients are `*_diff`).
fn layers_with_arrays(fixture: &str) -> BTreeSet<String> {
    std::fs::read_dir(fixtures().join(fixture))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".weight.npy").map(str::to_string)
        })
        .collect()
}

/// A layer the fixture must yield: name, weight shape as the reader returns it, bias or not.
type Want = (&'static str, [usize; 4], bool);

/// Reads `<fixture>.caffemodel` three ways (path, bytes, `WeightSet::load`), checks that they
/// agree and that the set holds exactly `want`, in file order, each array equal bit for bit
/// to NumPy's.
fn read_and_compare(fixture: &str, want: &[Want]) -> (WeightSet, Vec<u8>) {
    let path = fixtures().join(format!("{fixture}.caffemodel"));
    let bytes = std::fs::read(&path).unwrap();
    let set = read_caffemodel(&path).unwrap();
    assert_eq!(read_caffemodel_bytes(&bytes).unwrap(), set);
    assert_eq!(WeightSet::load(&path).unwrap(), set);

    let names: Vec<&str> = want.iter().map(|w| w.0).collect();
    assert_eq!(set.names().collect::<Vec<_>>(), names, "{fixture}: layers");
    // The test and the fixture's arrays cover the same layers.
    assert_eq!(
        layers_with_arrays(fixture),
        names.iter().map(|n| n.to_string()).collect(),
        "{fixture}: layers with saved arrays"
    );
    for &(name, shape, has_bias) in want {
        let got = set.get(name).unwrap();
        assert_eq!(got.weight_shape(), shape, "{fixture}: {name} weight shape");
        let weight = npy(fixture, name, "weight");
        assert_eq!(weight.len(), got.weight.len(), "{fixture}: {name}");
        assert_eq!(
            bits(&got.weight),
            bits(&weight),
            "{fixture}: {name} weight differs from NumPy's"
        );
        match (&got.bias, has_bias) {
            (Some(b), true) => {
                let bias = npy(fixture, name, "bias");
                assert_eq!(bias.ndim(), 1);
                assert_eq!(bits(b), bits(&bias), "{fixture}: {name} bias differs");
            }
            (None, false) => {}
            (b, _) => panic!("{fixture}: {name}: bias {b:?}, expected one: {has_bias}"),
        }
    }
    (set, bytes)
}

/// For every layer saved with gradients: the file really holds them (packed `diff`), and the
/// weights read are not them.
fn assert_diff_skipped(fixture: &str, set: &WeightSet, bytes: &[u8], layers: &[&str]) {
    for &layer in layers {
        for what in ["weight", "bias"] {
            let diff = npy(fixture, layer, &format!("{what}_diff"));
            assert!(
                contains(bytes, &packed(&diff)),
                "{fixture}: {layer} carries no {what} diff: the fixture does not test it"
            );
            let got = set.get(layer).unwrap();
            let read = match what {
                "weight" => bits(&got.weight),
                _ => bits(got.bias.as_ref().unwrap()),
            };
            assert_ne!(
                read,
                bits(&diff),
                "{fixture}: {layer} {what} read from diff"
            );
        }
    }
}

/// Layers named in the file (so present in it) that have no parameters are not in the set.
fn assert_skipped(fixture: &str, set: &WeightSet, bytes: &[u8], layers: &[&str]) {
    for &layer in layers {
        assert!(
            contains(bytes, layer.as_bytes()),
            "{fixture}: no layer {layer} in the file"
        );
        assert!(
            set.get(layer).is_none(),
            "{fixture}: {layer} read as weights"
        );
    }
}

/// The weights a network layer holds, as bits.
fn layer_bits(net: &Network, name: &str) -> (Vec<u32>, Option<Vec<u32>>) {
    match &net.layer(name).unwrap().op {
        Op::Conv { weight, bias, .. } => (bits(weight), bias.as_ref().map(bits)),
        Op::Deconv { weight, .. } => (bits(weight), None),
        other => panic!("{name} is a {}", other.kind()),
    }
}

#[test]
fn current_form_fixture_reads_as_numpy_saved_it() {
    let fixture = "current";
    let (set, bytes) = read_and_compare(
        fixture,
        &[
            ("conv1_1", [4, 3, 3, 3], true),
            ("ctx_conv1_1", [4, 4, 3, 3], true),
            ("ctx_final", [2, 4, 1, 1], true),
            ("ctx_upsample", [2, 1, 16, 16], false),
        ],
    );
    assert_diff_skipped(
        fixture,
        &set,
        &bytes,
        &["conv1_1", "ctx_conv1_1", "ctx_final"],
    );
    // An Input layer (whose input_param holds a BlobShape), ReLU, Pooling, Dropout, a loss
    // and a Softmax: none has blobs.
    assert_skipped(
        fixture,
        &set,
        &bytes,
        &[
            "data",
            "relu1_1",
            "pool1",
            "ctx_relu1_1",
            "drop",
            "loss",
            "prob",
        ],
    );
    // conv1_1 starts with -0.0, the smallest subnormal, the largest finite float and a value
    // with every mantissa bit set.
    let w = &set.get("conv1_1").unwrap().weight;
    assert_eq!(
        bits(w.iter().take(4)),
        [0x8000_0000, 0x0000_0001, 0x7f7f_ffff, 0x3fff_ffff]
    );
    // The upsampling weights are Caffe's bilinear filler as NumPy computes it; the crate's
    // own filler gives the same values.
    assert_eq!(
        bits(&set.get("ctx_upsample").unwrap().weight),
        bits(&Deconv2d::bilinear(2, 8).bilinear_weights())
    );

    // The network the file was written for takes every layer by name.
    let mut net = Network::builder("tiny_dilated", 3)
        .conv_he("conv1_1", Conv2d::new(3, 4, 3).with_relu(true), 1)
        .max_pool("pool1", MaxPool2d::caffe(2, 2))
        .conv_he(
            "ctx_conv1_1",
            Conv2d::new(4, 4, 3).dilation(2).pad(2).with_relu(true),
            2,
        )
        .conv_he("ctx_final", Conv2d::new(4, 2, 1), 3)
        .deconv(
            "ctx_upsample",
            Deconv2d::bilinear(2, 8),
            ndarray::Array4::zeros([2, 1, 16, 16]),
        )
        .build()
        .unwrap();
    net.load_weights(&set).unwrap();
    for name in ["conv1_1", "ctx_conv1_1", "ctx_final"] {
        let (w, b) = layer_bits(&net, name);
        assert_eq!(
            w,
            bits(&npy(fixture, name, "weight")),
            "{name} in the network"
        );
        assert_eq!(b, Some(bits(&npy(fixture, name, "bias"))), "{name} bias");
    }
    let (w, _) = layer_bits(&net, "ctx_upsample");
    assert_eq!(w, bits(&npy(fixture, "ctx_upsample", "weight")));
}

#[test]
fn legacy_form_fixture_reads_as_numpy_saved_it() {
    let fixture = "legacy";
    // Biases are stored 1 x 1 x 1 x out in this form and come back as `out` values.
    let (set, bytes) = read_and_compare(
        fixture,
        &[
            ("conv1_1", [4, 3, 3, 3], true),
            ("conv1_2", [5, 4, 3, 3], true),
            ("fc-final", [2, 5, 1, 1], true),
        ],
    );
    assert_diff_skipped(fixture, &set, &bytes, &["conv1_2"]);
    assert_skipped(
        fixture,
        &set,
        &bytes,
        &["relu1_1", "relu1_2", "pool1", "drop1", "loss"],
    );
    let w = &set.get("conv1_1").unwrap().weight;
    assert_eq!(
        bits(w.iter().take(4)),
        [0x8000_0000, 0x0000_0001, 0x7f7f_ffff, 0x3fff_ffff]
    );
    let mut net = Network::builder("tiny_legacy", 3)
        .conv_he("conv1_1", Conv2d::new(3, 4, 3).with_relu(true), 1)
        .conv_he("conv1_2", Conv2d::new(4, 5, 3).with_relu(true), 2)
        .max_pool("pool1", MaxPool2d::caffe(2, 2))
        .conv_he("fc-final", Conv2d::new(5, 2, 1), 3)
        .build()
        .unwrap();
    net.load_weights(&set).unwrap();
    for name in ["conv1_1", "conv1_2", "fc-final"] {
        let (w, b) = layer_bits(&net, name);
        assert_eq!(
            w,
            bits(&npy(fixture, name, "weight")),
            "{name} in the network"
        );
        assert_eq!(b, Some(bits(&npy(fixture, name, "bias"))), "{name} bias");
    }
}

/// Caffe shapes a legacy INNER_PRODUCT weight 1 x 1 x out x in and matches legacy shapes from
/// the last axis, so it loads as the `[out, in]` weight (as VGG-16's released V1 file does).
/// The reader takes the four legacy dimensions literally: a `[1, 1, 5, 6]` weight with one
/// output channel, which then rejects the 5-element bias, so the whole file fails to read.
#[test]
fn legacy_inner_product_reads_as_out_by_in() {
    let fixture = "legacy_inner_product";
    let path = fixtures().join(format!("{fixture}.caffemodel"));
    let set = read_caffemodel(&path).unwrap_or_else(|e| panic!("{e}"));
    let fc = set.get("fc").unwrap();
    let weight = npy(fixture, "fc", "weight");
    assert_eq!(weight.shape(), [5, 6]);
    assert_eq!(fc.weight_shape(), [5, 6, 1, 1]);
    assert_eq!(bits(&fc.weight), bits(&weight));
    assert_eq!(
        bits(fc.bias.as_ref().unwrap()),
        bits(&npy(fixture, "fc", "bias"))
    );
}
