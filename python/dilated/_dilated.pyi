"""Type stubs of the compiled module ``dilated._dilated`` (re-exported by ``dilated``)."""

import os
from typing import Any, Literal, Optional, Tuple, TypedDict, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
# An [height, width, 3] uint8 RGB array, or anything numpy.asarray turns into one (a PIL image).
_ImageLike = Union[npt.NDArray[np.uint8], Any]

class AdapterInfo(TypedDict, total=False):
    """One adapter, as ``adapters()`` lists it (``Model.adapter`` has no ``index``)."""

    index: int
    name: str
    backend: str
    device_type: str
    driver: str
    driver_info: str
    vendor: int
    device: int
    pci_bus_id: str
    max_buffer_size: int
    max_storage_buffer_binding_size: int
    subgroups: bool
    timestamps: bool
    shader_f16: bool

class LayerInfo(TypedDict):
    """One layer of ``Model.info()["layers"]``."""

    name: str
    kind: str
    output_shape: Tuple[int, int, int, int]
    receptive_field: int
    stride: float
    flops: int
    params: int
    activation_bytes: int

class ModelInfo(TypedDict):
    """What ``Model.info()`` returns."""

    model: str
    classes: int
    input_size: Tuple[int, int]
    tile: Tuple[int, int]
    margin: int
    mean_bgr: list[float]
    upsampling: str
    width_divisor: int
    weights: Optional[str]
    random_weights: bool
    device: Literal["gpu", "cpu"]
    requested_device: Literal["auto", "gpu", "cpu"]
    adapter: Optional[AdapterInfo]
    no_gpu_reason: Optional[str]
    gpu_memory: Optional[int]
    params: int
    flops: int
    layers: list[LayerInfo]

class DilatedError(RuntimeError):
    """An error reported by the dilated library, with its message.

    ``kind`` names the error, e.g. "UnknownModel", "Weights", "InvalidSpec", "NoAdapter".
    """

    kind: str

class GpuError(DilatedError):
    """A failure of the GPU rather than of the request (no adapter, lost device, out of
    memory, beyond the device's limits); the same work may succeed on the CPU."""

def adapters() -> list[AdapterInfo]:
    """Every adapter ``Model(adapter=index)`` counts, in that order."""

def models() -> list[str]:
    """The names of the four presets."""

def palette(model: str) -> npt.NDArray[np.uint8]:
    """The ``[classes, 3]`` RGB palette of a preset."""

def class_names(model: str) -> list[str]:
    """The class names of a preset's dataset, one per class id."""

def load_image(path: _Path) -> npt.NDArray[np.uint8]:
    """Reads a PNG, JPEG or BMP file as ``[height, width, 3]`` RGB, as ``dilated segment`` does."""

def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    """Decodes PNG, JPEG or BMP bytes as ``[height, width, 3]`` RGB, as ``dilated segment`` does."""

def save_labels_png(
    path: _Path,
    labels: npt.NDArray[np.integer[Any]],
    palette: Union["Model", str, npt.NDArray[np.uint8]],
    overlay_image: Optional[_ImageLike] = None,
) -> None:
    """Writes class ids as a palette PNG, byte for byte as ``dilated segment`` writes it
    (blended half and half over ``overlay_image`` when given, as ``--overlay`` does)."""

class Model:
    """A segmentation network with its weights, bound to a GPU or the CPU."""

    def __init__(
        self,
        name: str,
        weights: Optional[_Path] = None,
        *,
        width_divisor: int = 1,
        device: str = "auto",  # "auto", "gpu" or "cpu"
        adapter: Union[int, str, None] = None,
        tile: Optional[Tuple[int, int]] = None,
        max_memory: Union[int, str, None] = None,
        precision: str = "f32",  # "f32" or "f16" (GPU storage)
        cpu_precision: str = "f32",  # "f32" or "bf16"
        seed: int = 0,
    ) -> None: ...
    @overload
    def segment(
        self, image: _ImageLike, probs: Literal[False] = False
    ) -> npt.NDArray[np.uint8]: ...
    @overload
    def segment(
        self, image: _ImageLike, probs: Literal[True]
    ) -> Tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]: ...
    def forward(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw network output for an NCHW float32 input (BGR, mean subtracted)."""
    def save_weights(self, path: _Path) -> None:
        """Writes the weights as ``.safetensors`` or ``.caffemodel``."""
    def info(self, size: Optional[Tuple[int, int]] = None) -> ModelInfo:
        """The model's facts and per-layer report for an input of ``size``."""
    @property
    def name(self) -> str: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def palette(self) -> npt.NDArray[np.uint8]: ...
    @property
    def device(self) -> Literal["gpu", "cpu"]: ...
    @property
    def adapter(self) -> Optional[AdapterInfo]: ...
    @property
    def weights(self) -> Optional[str]: ...
    @property
    def random_weights(self) -> bool: ...
    @property
    def width_divisor(self) -> int: ...
    @property
    def tile(self) -> Tuple[int, int]: ...

