//! The front-end (modified VGG-16) and presets for the four released models.

use crate::error::{Error, Result};
use crate::net::{ContextKind, ContextModule, ContextPadding, Network, NetworkBuilder};
use crate::spec::{Conv2d, Deconv2d, MaxPool2d};

/// How a model's class scores reach full image resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsampling {
    /// Softmax in the network, then the reference predictor's bilinear zoom by this factor.
    Zoom(usize),
    /// In-network per-class transposed convolution (kernel 16, stride 8, pad 4, bilinear
    /// weights), then softmax.
    Deconvolution,
}

/// A released model's facts.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Preset name, e.g. `dilation8_pascal_voc`.
    pub name: &'static str,
    /// Number of classes.
    pub classes: usize,
    /// Deploy input size (height, width), margins included.
    pub input_size: (usize, usize),
    /// BGR mean subtracted from 0..255 pixels.
    pub mean_bgr: [f32; 3],
    /// Context module kind.
    pub context: ContextKind,
    /// Dilations of the context module's 3x3 layers.
    pub dilations: &'static [usize],
    /// How the scores are upsampled.
    pub upsampling: Upsampling,
    /// Name of the front-end's last layer in the released weights.
    pub final_layer: &'static str,
    /// Prefix of the context layers in the released weights.
    pub context_prefix: &'static str,
    /// Pixels lost on each side by the unpadded front-end (the reflect-padding margin).
    pub margin: usize,
}

/// The four released models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// `dilation8_pascal_voc`: 21 classes, large context module.
    PascalVoc,
    /// `dilation8_camvid`: 11 classes, basic context module.
    CamVid,
    /// `dilation7_kitti`: 11 classes, basic context module without the dilation-16 layer.
    Kitti,
    /// `dilation10_cityscapes`: 19 classes, basic module to dilation 64, in-network upsampling.
    Cityscapes,
}

/// The front-end loses this many pixels per side.
pub const FRONT_END_MARGIN: usize = 186;

impl Model {
    /// Every preset.
    pub const ALL: [Model; 4] = [
        Model::PascalVoc,
        Model::CamVid,
        Model::Kitti,
        Model::Cityscapes,
    ];

    /// The preset's facts.
    pub fn info(self) -> ModelInfo {
        match self {
            Model::PascalVoc => ModelInfo {
                name: "dilation8_pascal_voc",
                classes: 21,
                input_size: (900, 900),
                mean_bgr: [102.93, 111.36, 116.52],
                context: ContextKind::Large,
                dilations: &[1, 1, 2, 4, 8, 16, 1],
                upsampling: Upsampling::Zoom(8),
                final_layer: "fc-final",
                context_prefix: "ct",
                margin: FRONT_END_MARGIN,
            },
            Model::CamVid => ModelInfo {
                name: "dilation8_camvid",
                classes: 11,
                input_size: (900, 1100),
                mean_bgr: [110.70, 108.78, 105.41],
                context: ContextKind::Basic,
                dilations: &[1, 1, 2, 4, 8, 16, 1],
                upsampling: Upsampling::Zoom(8),
                final_layer: "final",
                context_prefix: "ctx",
                margin: FRONT_END_MARGIN,
            },
            Model::Kitti => ModelInfo {
                name: "dilation7_kitti",
                classes: 11,
                input_size: (852, 1640),
                mean_bgr: [96.19, 95.55, 91.35],
                context: ContextKind::Basic,
                dilations: &[1, 1, 2, 4, 8, 1],
                upsampling: Upsampling::Zoom(8),
                final_layer: "final",
                context_prefix: "ctx",
                margin: FRONT_END_MARGIN,
            },
            Model::Cityscapes => ModelInfo {
                name: "dilation10_cityscapes",
                classes: 19,
                input_size: (1396, 1396),
                mean_bgr: [72.39, 82.91, 73.16],
                context: ContextKind::Basic,
                dilations: &[1, 1, 2, 4, 8, 16, 32, 64, 1],
                upsampling: Upsampling::Deconvolution,
                final_layer: "final",
                context_prefix: "ctx",
                margin: FRONT_END_MARGIN,
            },
        }
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// A preset by name (`dilation8_pascal_voc`, `dilation8_camvid`, `dilation7_kitti`,
    /// `dilation10_cityscapes`; the dataset part alone also works: `pascal_voc`, `camvid`, ...).
    pub fn from_name(name: &str) -> Result<Model> {
        let n = name.trim().to_lowercase();
        Model::ALL
            .into_iter()
            .find(|m| {
                let full = m.name();
                full == n
                    || full
                        .split_once('_')
                        .is_some_and(|(_, dataset)| dataset == n)
            })
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                known: Model::ALL.map(|m| m.name()).join(", "),
            })
    }

    /// The model's context module as the release has it (kind, dilations, layer names and
    /// padding; identity-initialised, with the large module's noise from `options`), on its
    /// own: what `dilated train context` trains on cached front-end scores.
    pub fn context_module(self, options: &PresetOptions) -> ContextModule {
        let info = self.info();
        let context = match info.context {
            ContextKind::Basic => ContextModule::basic(info.classes),
            ContextKind::Large => ContextModule::large(info.classes),
        }
        .dilations(info.dilations)
        .sigma(
            if info.context == ContextKind::Large {
                options.context_sigma
            } else {
                0.0
            },
            options.seed ^ 0xc0,
        )
        .prefix(info.context_prefix);
        let release_padding = if self == Model::PascalVoc {
            ContextPadding::FirstLayer
        } else {
            ContextPadding::Same
        };
        context.padding(options.context_padding.unwrap_or(release_padding))
    }

    /// Builds the deploy network: front-end, context module, and the model's upsampling or
    /// softmax. Front-end weights are He-initialised and the context module identity-initialised
    /// (seeded) until real weights are loaded.
    pub fn build(self, options: &PresetOptions) -> Result<Network> {
        let info = self.info();
        let context = self.context_module(options);
        let mut b = FrontEnd {
            classes: info.classes,
            width_divisor: options.width_divisor,
            final_layer: info.final_layer,
        }
        .builder(info.name, options.seed)?
        .append(context.build()?);
        b = match info.upsampling {
            Upsampling::Zoom(_) => b.softmax("prob"),
            Upsampling::Deconvolution => b
                .deconv_bilinear(
                    format!("{}_upsample", info.context_prefix),
                    Deconv2d::bilinear(info.classes, 8),
                )
                .softmax("prob"),
        };
        b.build()
    }
}

/// Options for building a preset.
#[derive(Clone, Debug)]
pub struct PresetOptions {
    /// Divides every front-end width (64 ... 4096) by this, for cheap tests and demos of the
    /// same topology; 1 is the released size. Class counts are never divided.
    pub width_divisor: usize,
    /// Seed of the initial weights.
    pub seed: u64,
    /// Noise of the large context module's identity initialisation.
    pub context_sigma: f32,
    /// Padding of the context module; `None` follows the released model (VOC pads its first
    /// layer by 33 and the rest by 0, the others pad every layer by its dilation).
    pub context_padding: Option<ContextPadding>,
}

impl Default for PresetOptions {
    fn default() -> Self {
        Self {
            width_divisor: 1,
            seed: 0,
            context_sigma: 0.01,
            context_padding: None,
        }
    }
}

/// The front-end: VGG-16 without pool4/pool5, conv5 dilated by 2, fc6 as a 7x7 convolution
/// dilated by 4, fc7 as a 1x1, and a final 1x1 to the classes; all unpadded.
#[derive(Clone, Debug)]
pub struct FrontEnd {
    /// Number of classes of the final layer.
    pub classes: usize,
    /// Divisor of every width but the classes.
    pub width_divisor: usize,
    /// Name of the last layer (`fc-final` for VOC, `final` otherwise).
    pub final_layer: &'static str,
}

impl FrontEnd {
    /// The front-end as a builder, He-initialised with `seed`.
    pub fn builder(&self, name: &str, seed: u64) -> Result<NetworkBuilder> {
        if self.width_divisor == 0 {
            return Err(Error::ZeroDimension {
                context: "front-end".into(),
                what: "width divisor",
            });
        }
        let w = |c: usize| (c / self.width_divisor).max(1);
        // (name, out channels, kernel, dilation); None marks a pooling layer.
        let layers: [Option<(&str, usize, usize, usize)>; 19] = [
            Some(("conv1_1", w(64), 3, 1)),
            Some(("conv1_2", w(64), 3, 1)),
            None,
            Some(("conv2_1", w(128), 3, 1)),
            Some(("conv2_2", w(128), 3, 1)),
            None,
            Some(("conv3_1", w(256), 3, 1)),
            Some(("conv3_2", w(256), 3, 1)),
            Some(("conv3_3", w(256), 3, 1)),
            None,
            Some(("conv4_1", w(512), 3, 1)),
            Some(("conv4_2", w(512), 3, 1)),
            Some(("conv4_3", w(512), 3, 1)),
            Some(("conv5_1", w(512), 3, 2)),
            Some(("conv5_2", w(512), 3, 2)),
            Some(("conv5_3", w(512), 3, 2)),
            Some(("fc6", w(4096), 7, 4)),
            Some(("fc7", w(4096), 1, 1)),
            Some((self.final_layer, self.classes, 1, 1)),
        ];
        let mut b = Network::builder(name, 3);
        let mut c_in = 3;
        let mut pool = 0;
        for (i, layer) in layers.iter().enumerate() {
            match *layer {
                None => {
                    pool += 1;
                    b = b.max_pool(format!("pool{pool}"), MaxPool2d::caffe(2, 2));
                }
                Some((name, c_out, k, d)) => {
                    let relu = name != self.final_layer;
                    let spec = Conv2d::new(c_in, c_out, k).dilation(d).with_relu(relu);
                    b = b.conv_he(name, spec, seed.wrapping_mul(1000).wrapping_add(i as u64));
                    c_in = c_out;
                }
            }
        }
        Ok(b)
    }

    /// The front-end alone as a network.
    pub fn build(&self, name: &str, seed: u64) -> Result<Network> {
        self.builder(name, seed)?.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Shape;

    #[test]
    fn names_resolve() {
        assert_eq!(
            Model::from_name("dilation10_cityscapes").unwrap(),
            Model::Cityscapes
        );
        assert_eq!(Model::from_name("camvid").unwrap(), Model::CamVid);
        let e = Model::from_name("dilation9_mars").unwrap_err().to_string();
        assert!(
            e.contains("dilation9_mars") && e.contains("dilation7_kitti"),
            "{e}"
        );
    }

    #[test]
    fn front_end_turns_900_into_66() {
        let net = FrontEnd {
            classes: 21,
            width_divisor: 16,
            final_layer: "fc-final",
        }
        .build("fe", 1)
        .unwrap();
        let out = net.output_shape(Shape::new(1, 3, 900, 900)).unwrap();
        assert_eq!((out.c, out.h, out.w), (21, 66, 66));
        assert_eq!(net.output_shape(Shape::new(1, 3, 373, 373)).unwrap().h, 1);
    }
}
