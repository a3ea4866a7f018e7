//! The four presets, layer by layer, against the specification (`NETWORK.md`, which follows the
//! authors' released deploy prototxts): every convolution's name, output channels, kernel,
//! dilation, padding and ReLU, the pooling layers, the upsampling, the receptive fields and the
//! output sizes. Every expected value is a literal written from the specification, never
//! computed by the crate. (Costs and parameter counts are checked in `tests/networks.rs`.)

use dilated::net::{Layer, Model, Op, PresetOptions, Upsampling};
use dilated::{Conv2d, Deconv2d, MaxPool2d, Padding, Shape};

/// A convolution as the specification gives it: name, output channels, kernel, dilation,
/// padding (every side), ReLU after it.
type ConvRow = (&'static str, usize, usize, usize, usize, bool);

/// The front-end (modified VGG-16), the same in all four models, up to fc7; `None` is a
/// 2x2 stride-2 max pooling (Caffe's ceil rounding). All convolutions unpadded.
const FRONT_END: [Option<ConvRow>; 18] = [
    Some(("conv1_1", 64, 3, 1, 0, true)),
    Some(("conv1_2", 64, 3, 1, 0, true)),
    None,
    Some(("conv2_1", 128, 3, 1, 0, true)),
    Some(("conv2_2", 128, 3, 1, 0, true)),
    None,
    Some(("conv3_1", 256, 3, 1, 0, true)),
    Some(("conv3_2", 256, 3, 1, 0, true)),
    Some(("conv3_3", 256, 3, 1, 0, true)),
    None,
    Some(("conv4_1", 512, 3, 1, 0, true)),
    Some(("conv4_2", 512, 3, 1, 0, true)),
    Some(("conv4_3", 512, 3, 1, 0, true)),
    Some(("conv5_1", 512, 3, 2, 0, true)),
    Some(("conv5_2", 512, 3, 2, 0, true)),
    Some(("conv5_3", 512, 3, 2, 0, true)),
    Some(("fc6", 4096, 7, 4, 0, true)),
    Some(("fc7", 4096, 1, 1, 0, true)),
];

/// Receptive field (input pixels per side) after each entry of [`FRONT_END`], then after the
/// final 1x1. Worked out by hand from the table: each layer adds `(extent - 1) * stride so far`
/// with extent `(k - 1) * d + 1` (a 2x2 pool adds 1 * stride, then doubles the stride). The
/// last value is the specification's margin and output stride seen the other way round:
/// `2 * 186 + 8 = 380`, as `(H - 380) / 8 + 1 = (H - 372) / 8` outputs (900 -> 66).
const FRONT_END_RF: [usize; 19] = [
    3, 5, 6, 10, 14, 16, 24, 32, 40, 44, 60, 76, 92, 124, 156, 188, 380, 380, 380,
];

/// Everything the specification fixes about one model.
struct Spec {
    model: Model,
    name: &'static str,
    classes: usize,
    input: (usize, usize),
    mean_bgr: [f32; 3],
    /// The front-end's last 1x1 layer.
    final_layer: &'static str,
    /// The context module's layers, with the receptive field of each in pixels of the
    /// module's input (the specification's table: 3, 5, 9, ...).
    context: &'static [(ConvRow, usize)],
    /// Output (height, width) at the deploy input size.
    deploy_output: (usize, usize),
}

const SPECS: [Spec; 4] = [
    Spec {
        model: Model::PascalVoc,
        name: "dilation8_pascal_voc",
        classes: 21,
        input: (900, 900),
        mean_bgr: [102.93, 111.36, 116.52],
        final_layer: "fc-final",
        // Large module (2C, 2C, 4C, 8C, 16C, 32C, 32C, C with C = 21); the release pads the
        // first layer by 33 and the rest by 0.
        context: &[
            (("ct_conv1_1", 42, 3, 1, 33, true), 3),
            (("ct_conv1_2", 42, 3, 1, 0, true), 5),
            (("ct_conv2_1", 84, 3, 2, 0, true), 9),
            (("ct_conv3_1", 168, 3, 4, 0, true), 17),
            (("ct_conv4_1", 336, 3, 8, 0, true), 33),
            (("ct_conv5_1", 672, 3, 16, 0, true), 65),
            (("ct_fc1", 672, 3, 1, 0, true), 67),
            (("ct_final", 21, 1, 1, 0, false), 67),
        ],
        // "a 900x900 input gives a 66x66 output"
        deploy_output: (66, 66),
    },
    Spec {
        model: Model::CamVid,
        name: "dilation8_camvid",
        classes: 11,
        input: (900, 1100),
        mean_bgr: [110.70, 108.78, 105.41],
        final_layer: "final",
        // Basic module, each layer padded by its dilation.
        context: &[
            (("ctx_conv1_1", 11, 3, 1, 1, true), 3),
            (("ctx_conv1_2", 11, 3, 1, 1, true), 5),
            (("ctx_conv2_1", 11, 3, 2, 2, true), 9),
            (("ctx_conv3_1", 11, 3, 4, 4, true), 17),
            (("ctx_conv4_1", 11, 3, 8, 8, true), 33),
            (("ctx_conv5_1", 11, 3, 16, 16, true), 65),
            (("ctx_fc1", 11, 3, 1, 1, true), 67),
            (("ctx_final", 11, 1, 1, 0, false), 67),
        ],
        // (900 - 372) / 8 = 66, (1100 - 372) / 8 = 91
        deploy_output: (66, 91),
    },
    Spec {
        model: Model::Kitti,
        name: "dilation7_kitti",
        classes: 11,
        input: (852, 1640),
        mean_bgr: [96.19, 95.55, 91.35],
        final_layer: "final",
        // Basic module without the dilation-16 layer: dilations 1, 1, 2, 4, 8, 1 + 1x1, so
        // receptive fields 3, 5, 9, 17, 33, then 33 + 2 = 35.
        context: &[
            (("ctx_conv1_1", 11, 3, 1, 1, true), 3),
            (("ctx_conv1_2", 11, 3, 1, 1, true), 5),
            (("ctx_conv2_1", 11, 3, 2, 2, true), 9),
            (("ctx_conv3_1", 11, 3, 4, 4, true), 17),
            (("ctx_conv4_1", 11, 3, 8, 8, true), 33),
            (("ctx_fc1", 11, 3, 1, 1, true), 35),
            (("ctx_final", 11, 1, 1, 0, false), 35),
        ],
        // (852 - 372) / 8 = 60. The width is no multiple: Caffe's ceil rounding takes
        // 1640 -> 1636 -> pool 818 -> 814 -> pool 407 -> 401 -> pool ceil(399 / 2) + 1 = 201
        // -> conv4 195 -> conv5 183 -> fc6 159.
        deploy_output: (60, 159),
    },
    Spec {
        model: Model::Cityscapes,
        name: "dilation10_cityscapes",
        classes: 19,
        input: (1396, 1396),
        mean_bgr: [72.39, 82.91, 73.16],
        final_layer: "final",
        // Dilations 1, 1, 2, 4, 8, 16, 32, 64, 1 + 1x1: 65 + 64 = 129, + 128 = 257, + 2 = 259.
        context: &[
            (("ctx_conv1_1", 19, 3, 1, 1, true), 3),
            (("ctx_conv1_2", 19, 3, 1, 1, true), 5),
            (("ctx_conv2_1", 19, 3, 2, 2, true), 9),
            (("ctx_conv3_1", 19, 3, 4, 4, true), 17),
            (("ctx_conv4_1", 19, 3, 8, 8, true), 33),
            (("ctx_conv5_1", 19, 3, 16, 16, true), 65),
            (("ctx_conv6_1", 19, 3, 32, 32, true), 129),
            (("ctx_conv7_1", 19, 3, 64, 64, true), 257),
            (("ctx_fc1", 19, 3, 1, 1, true), 259),
            (("ctx_final", 19, 1, 1, 0, false), 259),
        ],
        // (1396 - 372) / 8 = 128, then the deconvolution (kernel 16, stride 8, pad 4):
        // (128 - 1) * 8 - 2 * 4 + 16 = 1024.
        deploy_output: (1024, 1024),
    },
];

fn assert_conv(layer: &Layer, row: ConvRow, in_channels: usize, what: &str) {
    let (name, out, k, d, pad, relu) = row;
    assert_eq!(layer.name, name, "{what}: layer name");
    let Op::Conv { spec, weight, bias } = &layer.op else {
        panic!("{what}: {name} is a {}, not a convolution", layer.op.kind());
    };
    let want = Conv2d {
        in_channels,
        out_channels: out,
        kernel: (k, k),
        dilation: (d, d),
        stride: (1, 1),
        padding: Padding::uniform(pad),
        bias: true,
        relu,
    };
    assert_eq!(*spec, want, "{what}: {name}");
    assert_eq!(
        weight.shape(),
        [out, in_channels, k, k],
        "{what}: {name} weight"
    );
    assert_eq!(
        bias.as_ref().map(|b| b.len()),
        Some(out),
        "{what}: {name} bias"
    );
}

fn assert_pool(layer: &Layer, name: &str, what: &str) {
    assert_eq!(layer.name, name, "{what}: layer name");
    let Op::MaxPool(p) = &layer.op else {
        panic!("{what}: {name} is a {}, not max pooling", layer.op.kind());
    };
    let want = MaxPool2d {
        kernel: (2, 2),
        stride: (2, 2),
        padding: Padding::uniform(0),
        ceil_mode: true,
    };
    assert_eq!(*p, want, "{what}: {name}");
}

#[test]
fn presets_follow_the_specification_layer_by_layer() {
    for spec in &SPECS {
        let what = spec.name;
        let info = spec.model.info();
        assert_eq!(info.name, spec.name);
        assert_eq!(Model::from_name(spec.name).unwrap(), spec.model);
        assert_eq!(info.classes, spec.classes, "{what}: classes");
        assert_eq!(info.input_size, spec.input, "{what}: deploy input");
        assert_eq!(info.mean_bgr, spec.mean_bgr, "{what}: BGR mean");
        assert_eq!(info.final_layer, spec.final_layer, "{what}: final layer");
        assert_eq!(info.margin, 186, "{what}: margin");

        let net = spec.model.build(&PresetOptions::default()).unwrap();
        assert_eq!(net.in_channels(), 3, "{what}: BGR input");
        let layers = net.layers();
        let mut i = 0;
        let mut c = 3;
        let mut pools = 0;
        for row in FRONT_END {
            match row {
                Some(row) => {
                    assert_conv(&layers[i], row, c, what);
                    c = row.1;
                }
                None => {
                    pools += 1;
                    assert_pool(&layers[i], &format!("pool{pools}"), what);
                }
            }
            i += 1;
        }
        let final_row = (spec.final_layer, spec.classes, 1, 1, 0, false);
        assert_conv(&layers[i], final_row, 4096, what);
        i += 1;
        c = spec.classes;
        for &(row, _) in spec.context {
            assert_conv(&layers[i], row, c, what);
            c = row.1;
            i += 1;
        }
        assert_eq!(
            c, spec.classes,
            "{what}: the context module ends with C channels"
        );
        // Then the upsampling and the softmax.
        if spec.model == Model::Cityscapes {
            assert_eq!(info.upsampling, Upsampling::Deconvolution, "{what}");
            let l = &layers[i];
            assert_eq!(l.name, "ctx_upsample", "{what}");
            let Op::Deconv { spec: d, weight } = &l.op else {
                panic!("{what}: ctx_upsample is a {}", l.op.kind());
            };
            let want = Deconv2d {
                channels: 19,
                kernel: 16,
                stride: 8,
                pad: 4,
            };
            assert_eq!(*d, want, "{what}: ctx_upsample");
            assert_eq!(
                weight.shape(),
                [19, 1, 16, 16],
                "{what}: one group per class"
            );
            i += 1;
        } else {
            // Softmax in the network, then the predictor's bilinear zoom by 8.
            assert_eq!(info.upsampling, Upsampling::Zoom(8), "{what}");
        }
        assert!(matches!(layers[i].op, Op::Softmax), "{what}: softmax last");
        assert_eq!(layers.len(), i + 1, "{what}: no other layers");
    }
}

#[test]
fn preset_receptive_fields_and_output_sizes_follow_the_specification() {
    for spec in &SPECS {
        let what = spec.name;
        // Fields and sizes do not depend on the widths: narrow front-end layers build faster.
        let net = spec
            .model
            .build(&PresetOptions {
                width_divisor: 16,
                ..Default::default()
            })
            .unwrap();
        let (h, w) = spec.input;
        let report = net.report(Shape::new(1, 3, h, w)).unwrap();
        // The front-end and its final 1x1.
        let front: Vec<usize> = report[..19].iter().map(|r| r.receptive_field).collect();
        assert_eq!(front, FRONT_END_RF, "{what}: front-end receptive fields");
        // Output stride 8 from pool3 on.
        assert_eq!(report[9].name, "pool3");
        for r in &report[9..19] {
            assert_eq!(r.stride, 8.0, "{what}: stride of {}", r.name);
        }
        // The context module: one pixel of its input is 8 image pixels, and its first pixel
        // is the front-end's whole field, so a field of `n` module pixels is
        // 380 + 8 (n - 1) image pixels.
        for (r, &(row, rf)) in report[19..].iter().zip(spec.context) {
            assert_eq!(r.name, row.0, "{what}");
            assert_eq!(r.stride, 8.0, "{what}: stride of {}", r.name);
            assert_eq!(
                r.receptive_field,
                380 + 8 * (rf - 1),
                "{what}: {} should see {rf} pixels of the context module's input",
                r.name
            );
        }
        let out = net.output_shape(Shape::new(1, 3, h, w)).unwrap();
        assert_eq!(
            (out.c, out.h, out.w),
            (spec.classes, spec.deploy_output.0, spec.deploy_output.1),
            "{what}: output at {h}x{w}"
        );
    }
}
