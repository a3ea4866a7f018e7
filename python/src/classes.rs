//! The class names of the four datasets, in the order of the released models' outputs and of
//! [`dilated::segment::palette`].

use dilated::net::Model;

/// PASCAL VOC 2012: background and the 20 object classes.
const PASCAL_VOC: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The 11 CamVid classes (KITTI's labelled frames use the same ones), in the order of the
/// models' palette: building (128,0,0), tree (128,128,0), sky (128,128,128), ...
const CAMVID: [&str; 11] = [
    "building",
    "tree",
    "sky",
    "car",
    "sign",
    "road",
    "pedestrian",
    "fence",
    "pole",
    "sidewalk",
    "bicyclist",
];

/// The 19 Cityscapes training classes.
const CITYSCAPES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// The class names of `model`'s dataset, one per output channel.
pub fn class_names(model: Model) -> &'static [&'static str] {
    match model {
        Model::PascalVoc => &PASCAL_VOC,
        Model::CamVid | Model::Kitti => &CAMVID,
        Model::Cityscapes => &CITYSCAPES,
    }
}
