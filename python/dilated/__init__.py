"""The dilated-convolution segmentation networks of Yu & Koltun (ICLR 2016) on any GPU
(through wgpu: Vulkan, Metal, DX12, OpenGL) or on the CPU, with NumPy arrays in and out.

>>> import dilated
>>> m = dilated.Model("dilation8_camvid", weights="dilation8_camvid.caffemodel")  # doctest: +SKIP
>>> labels = m.segment(dilated.load_image("photo.png"))  # doctest: +SKIP
>>> dilated.save_labels_png("labels.png", labels, m)  # doctest: +SKIP

Results are those of the command-line tool: ``Model.segment`` equals ``dilated segment`` and
``Model.forward`` equals ``dilated run`` on the same inputs, and ``save_labels_png`` writes
the same PNG bytes. Errors of the library are raised as :class:`DilatedError` (a
``RuntimeError``) with its message; GPU failures as :class:`GpuError`, a subclass.
"""

from ._dilated import (
    DilatedError,
    GpuError,
    Model,
    __version__,
    adapters,
    class_names,
    decode_image,
    load_image,
    models,
    palette,
    save_labels_png,
)

__all__ = [
    "DilatedError",
    "GpuError",
    "Model",
    "__version__",
    "adapters",
    "class_names",
    "decode_image",
    "load_image",
    "models",
    "palette",
    "save_labels_png",
]
