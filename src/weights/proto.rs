//! The subset of Caffe's `caffe.proto` (proto2) that holds trained parameters, as `prost`
//! messages. Field numbers follow `caffe.proto`; every other field of these messages is
//! skipped when decoding.
//!
//! [`read_caffemodel`](super::read_caffemodel) does not decode whole messages with these types
//! (that would hold a layer's encoded bytes and its decoded arrays at once); it walks the
//! encoding itself and decodes only [`BlobShape`] with them. They are public for callers who
//! want to build or inspect small `NetParameter`s directly.

/// `message BlobShape { repeated int64 dim = 1 [packed = true]; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobShape {
    /// Dimensions, outermost first.
    #[prost(int64, repeated, tag = "1")]
    pub dim: Vec<i64>,
}

/// `message BlobProto`: one parameter array of a layer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobProto {
    /// Shape (current form).
    #[prost(message, optional, tag = "7")]
    pub shape: Option<BlobShape>,
    /// Values in row-major order.
    #[prost(float, repeated, tag = "5")]
    pub data: Vec<f32>,
    /// Values in double precision (used instead of `data` by some writers).
    #[prost(double, repeated, tag = "8")]
    pub double_data: Vec<f64>,
    /// Legacy shape: first dimension.
    #[prost(int32, optional, tag = "1")]
    pub num: Option<i32>,
    /// Legacy shape: second dimension.
    #[prost(int32, optional, tag = "2")]
    pub channels: Option<i32>,
    /// Legacy shape: third dimension.
    #[prost(int32, optional, tag = "3")]
    pub height: Option<i32>,
    /// Legacy shape: fourth dimension.
    #[prost(int32, optional, tag = "4")]
    pub width: Option<i32>,
}

/// `message LayerParameter` (the current form, `NetParameter.layer`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LayerParameter {
    /// Layer name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Layer type, e.g. `"Convolution"`.
    #[prost(string, optional, tag = "2")]
    pub r#type: Option<String>,
    /// Parameter blobs: weight, then bias.
    #[prost(message, repeated, tag = "7")]
    pub blobs: Vec<BlobProto>,
}

/// `message V1LayerParameter` (the legacy form, `NetParameter.layers`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct V1LayerParameter {
    /// Layer name.
    #[prost(string, optional, tag = "4")]
    pub name: Option<String>,
    /// Layer type as the `V1LayerParameter.LayerType` enum (4 = CONVOLUTION,
    /// 14 = INNER_PRODUCT).
    #[prost(int32, optional, tag = "5")]
    pub r#type: Option<i32>,
    /// Parameter blobs: weight, then bias.
    #[prost(message, repeated, tag = "6")]
    pub blobs: Vec<BlobProto>,
    /// Even older nested form (`V0LayerParameter`).
    #[prost(message, optional, tag = "1")]
    pub layer: Option<V0LayerParameter>,
}

/// `message V0LayerParameter`, nested in the oldest files as `V1LayerParameter.layer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct V0LayerParameter {
    /// Layer name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Layer type, e.g. `"conv"`.
    #[prost(string, optional, tag = "2")]
    pub r#type: Option<String>,
    /// Parameter blobs: weight, then bias.
    #[prost(message, repeated, tag = "50")]
    pub blobs: Vec<BlobProto>,
}

/// `message NetParameter`: a whole network (prototxt) or its trained parameters (caffemodel).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetParameter {
    /// Network name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Layers, current form.
    #[prost(message, repeated, tag = "100")]
    pub layer: Vec<LayerParameter>,
    /// Layers, legacy form.
    #[prost(message, repeated, tag = "2")]
    pub layers: Vec<V1LayerParameter>,
}
