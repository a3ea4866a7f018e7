//! Network weights: a name-keyed [`WeightSet`] and the file formats it is read from and written
//! to.
//!
//! * Caffe `.caffemodel` (binary protobuf `NetParameter`, both the current `layer` field and the
//!   legacy `layers` field): [`read_caffemodel`], [`write_caffemodel`]; in memory
//!   [`read_caffemodel_bytes`], [`encode_caffemodel`].
//! * safetensors, with tensors named `<layer>.weight` / `<layer>.bias` as PyTorch exports them:
//!   [`read_safetensors`], [`write_safetensors`]; in memory [`read_safetensors_bytes`],
//!   [`encode_safetensors`].
//!
//! The readers and writers of paths, and [`WeightSet::load`], need the `fs` feature (a
//! default); those of bytes do not.
//!
//! Every reader treats its input as hostile: any malformed file gives an
//! [`crate::Error`] (never a panic), and no length read from a file is trusted before
//! it has been checked against the bytes actually present, so a corrupt length cannot make
//! the reader allocate more than the file's size. Readers that take `&[u8]`
//! (`*_bytes`) parse in-memory buffers the same way. Every writer writes a temporary file in
//! the destination directory and renames it over the destination, so a failed write leaves
//! no partial file behind.
//!
//! NumPy `.npy` arrays, used for inputs and outputs rather than weights, are read and written
//! by [`crate::io`]; [`read_npy4`](crate::io::read_npy4) and [`write_npy`](crate::io::write_npy) are re-exported here as well.
//!
//! Layer names are kept verbatim; mapping them onto a network's layers is the network's
//! business.
//!
//! ```no_run
//! use dilated::weights::{ExpectedLayer, WeightSet, write_safetensors};
//!
//! let weights = WeightSet::load("dilation8_pascal_voc.caffemodel")?;
//! weights.check(&[ExpectedLayer::new("conv1_1", [64, 3, 3, 3], true)])?;
//! let conv1 = weights.get("conv1_1").expect("checked above");
//! assert_eq!(conv1.weight.dim(), (64, 3, 3, 3));
//! write_safetensors("dilation8_pascal_voc.safetensors", &weights)?;
//! # Ok::<(), dilated::Error>(())
//! ```

mod caffe;
mod caffe_write;
pub mod proto;
mod safetensors;
mod set;

#[cfg(feature = "fs")]
use std::path::Path;

#[cfg(feature = "fs")]
pub use caffe::read_caffemodel;
pub use caffe::read_caffemodel_bytes;
pub use caffe_write::encode_caffemodel;
#[cfg(feature = "fs")]
pub use caffe_write::write_caffemodel;
pub use safetensors::{encode_safetensors, read_safetensors_bytes};
#[cfg(feature = "fs")]
pub use safetensors::{read_safetensors, write_safetensors};
pub use set::{ExpectedLayer, LayerWeights, WeightSet};

#[cfg(feature = "fs")]
use crate::error::{Error, Result};

#[cfg(feature = "fs")]
impl WeightSet {
    /// Reads weights from `path`, choosing the format by extension: `.caffemodel` or
    /// `.safetensors`.
    pub fn load(path: impl AsRef<Path>) -> Result<WeightSet> {
        let path = path.as_ref();
        match path.extension().and_then(|e| e.to_str()) {
            Some("caffemodel") => read_caffemodel(path),
            Some("safetensors") => read_safetensors(path),
            _ => Err(Error::Weights(format!(
                "{}: unknown weights format; expected a .caffemodel or .safetensors file",
                path.display()
            ))),
        }
    }
}
