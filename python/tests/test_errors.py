"""Errors: every failure of the library is a `dilated.DilatedError` with the message the
command-line tool prints for the same mistake; bad arrays are refused with a message, never a
crash."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest

import dilated
from conftest import DIVISOR, TILE, cli_error, quiet_model


def test_exception_classes() -> None:
    assert issubclass(dilated.DilatedError, RuntimeError)
    assert issubclass(dilated.GpuError, dilated.DilatedError)
    assert dilated.DilatedError.__module__ == "dilated"


def test_unknown_model_has_the_cli_message(images: Dict[str, Tuple[np.ndarray, Path]]) -> None:
    _, png = images["small"]
    with pytest.raises(dilated.DilatedError) as raised:
        dilated.Model("dilation9_mars", device="cpu")
    assert raised.value.kind == "UnknownModel"
    assert str(raised.value) == cli_error(
        "segment", str(png), "-o", "/nonexistent/x.png", "--model", "dilation9_mars", "--cpu"
    )
    assert "known models: dilation8_pascal_voc" in str(raised.value)


def test_missing_weights_file_has_the_cli_message(
    images: Dict[str, Tuple[np.ndarray, Path]], tmp_path: Path
) -> None:
    _, png = images["small"]
    missing = tmp_path / "missing.caffemodel"
    with pytest.raises(dilated.DilatedError) as raised:
        dilated.Model("camvid", missing, width_divisor=DIVISOR, device="cpu")
    assert str(missing) in str(raised.value)
    assert str(raised.value) == cli_error(
        "segment", str(png), "-o", str(tmp_path / "x.png"), "--model", "camvid",
        "--width-divisor", str(DIVISOR), "--weights", str(missing), "--cpu",
    )  # fmt: skip


def test_weights_of_another_width_have_the_cli_message(
    weights: Dict[str, Path], images: Dict[str, Tuple[np.ndarray, Path]], tmp_path: Path
) -> None:
    _, png = images["small"]
    w = weights["dilation8_camvid"]
    with pytest.raises(dilated.DilatedError) as raised:
        dilated.Model("camvid", w, width_divisor=16, device="cpu")
    assert raised.value.kind == "WeightShape"
    assert "conv1_1" in str(raised.value)
    assert str(raised.value) == cli_error(
        "segment", str(png), "-o", str(tmp_path / "x.png"), "--model", "camvid",
        "--width-divisor", "16", "--weights", str(w), "--cpu",
    )  # fmt: skip


def test_weights_of_an_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(dilated.DilatedError, match="unknown weights format"):
        dilated.Model("camvid", path, width_divisor=DIVISOR, device="cpu")


def test_bad_tile_has_the_cli_message(images: Dict[str, Tuple[np.ndarray, Path]]) -> None:
    _, png = images["small"]
    for device, flag in (("cpu", "--cpu"), ("gpu", "--gpu")):
        with pytest.raises(dilated.DilatedError) as raised:
            quiet_model("camvid", width_divisor=DIVISOR, device=device, tile=(400, 436))
        assert str(raised.value) == cli_error(
            "segment", str(png), "-o", "/nonexistent/x.png", "--model", "camvid",
            "--width-divisor", str(DIVISOR), "--tile", "400x436", flag,
        )  # fmt: skip


def test_zero_width_divisor() -> None:
    with pytest.raises(dilated.DilatedError, match="width divisor must be at least 1"):
        quiet_model("camvid", width_divisor=0, device="cpu")


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="device must be"):
        quiet_model("camvid", width_divisor=DIVISOR, device="tpu")
    with pytest.raises(ValueError, match="adapter"):
        quiet_model("camvid", width_divisor=DIVISOR, device="cpu", adapter=0)
    with pytest.raises(dilated.DilatedError, match="memory size"):
        quiet_model("camvid", width_divisor=DIVISOR, max_memory="lots")


def test_adapter_past_the_end_is_a_gpu_error() -> None:
    past = len(dilated.adapters())
    with pytest.raises(dilated.GpuError) as raised:
        quiet_model("camvid", width_divisor=DIVISOR, device="gpu", adapter=past)
    assert raised.value.kind == "NoAdapter"
    assert f"at index {past}" in str(raised.value)
    with pytest.raises(dilated.GpuError, match="whose name contains"):
        quiet_model("camvid", width_divisor=DIVISOR, device="gpu", adapter="no such adapter")


def test_auto_without_the_adapter_runs_on_the_cpu_and_says_why() -> None:
    with pytest.warns(RuntimeWarning, match="no GPU .*running on the CPU"):
        m = quiet_model("camvid", width_divisor=DIVISOR, device="auto", adapter=999)
    assert m.device == "cpu"
    assert "at index 999" in (m.info()["no_gpu_reason"] or "")


@pytest.fixture(scope="module")
def model(weights: Dict[str, Path]) -> dilated.Model:
    """A small CPU model."""
    return dilated.Model("camvid", weights["dilation8_camvid"], width_divisor=DIVISOR,
                         device="cpu", tile=TILE)  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((20, 20, 4), np.uint8),
        np.zeros((20, 20), np.uint8),
        np.zeros((20, 20, 3), np.float32),
        np.zeros((20, 20, 3), np.int64),
        [[[1, 2, 3]]],
    ],
    ids=["rgba", "gray", "float", "int64", "list"],
)
def test_images_of_the_wrong_shape_or_dtype(model: dilated.Model, bad: object) -> None:
    with pytest.raises(dilated.DilatedError, match="expected an HxWx3 uint8 RGB array") as e:
        model.segment(bad)
    assert e.value.kind == "InvalidSpec"


def test_empty_image_has_the_library_message(model: dilated.Model) -> None:
    with pytest.raises(dilated.DilatedError, match="expected a non-empty HxWx3 image, got 0x5x3"):
        model.segment(np.zeros((0, 5, 3), np.uint8))


def test_forward_input_errors(model: dilated.Model, tmp_path: Path) -> None:
    with pytest.raises(dilated.DilatedError, match="expected an NCHW float32 array"):
        model.forward(np.zeros((1, 3, 400, 400), np.float64))
    with pytest.raises(dilated.DilatedError, match="expected an NCHW float32 array"):
        model.forward(np.zeros((3, 400, 400), np.float32))
    four = np.zeros((1, 4, 400, 400), np.float32)
    np.save(tmp_path / "x.npy", four)
    with pytest.raises(dilated.DilatedError) as raised:
        model.forward(four)
    assert str(raised.value) == cli_error(
        "run", "--model", "camvid", "--width-divisor", str(DIVISOR), "--weights",
        str(model.weights), "--input", str(tmp_path / "x.npy"), "--output",
        str(tmp_path / "y.npy"), "--cpu",
    )  # fmt: skip
    with pytest.raises(dilated.DilatedError):
        model.forward(np.zeros((1, 3, 100, 100), np.float32))


def test_png_writing_errors(model: dilated.Model, tmp_path: Path) -> None:
    labels = np.zeros((10, 12), np.uint8)
    with pytest.raises(dilated.DilatedError, match="shape mismatch in overlay"):
        dilated.save_labels_png(tmp_path / "a.png", labels, model,
                                overlay_image=np.zeros((10, 11, 3), np.uint8))  # fmt: skip
    with pytest.raises(dilated.DilatedError, match="Nx3 uint8 array of RGB colours"):
        dilated.save_labels_png(tmp_path / "a.png", labels, np.zeros((4, 4), np.uint8))
    with pytest.raises(dilated.DilatedError, match="unknown model"):
        dilated.save_labels_png(tmp_path / "a.png", labels, "mars")
    with pytest.raises(dilated.DilatedError, match="HxW integer array"):
        dilated.save_labels_png(tmp_path / "a.png", labels.astype(np.float32), model)
    with pytest.raises(dilated.DilatedError) as raised:
        dilated.save_labels_png(tmp_path / "no" / "such" / "dir.png", labels, model)
    assert raised.value.kind == "Io"
    assert not list(tmp_path.iterdir())


def test_png_of_other_integer_labels(model: dilated.Model, tmp_path: Path) -> None:
    labels = np.arange(12 * 10).reshape(10, 12) % 13
    dilated.save_labels_png(tmp_path / "a.png", labels.astype(np.uint8), model)
    dilated.save_labels_png(tmp_path / "b.png", labels.astype(np.int64), model)
    dilated.save_labels_png(tmp_path / "c.png", labels.astype(np.uint8), model.palette)
    same = (tmp_path / "a.png").read_bytes()
    assert (tmp_path / "b.png").read_bytes() == same == (tmp_path / "c.png").read_bytes()


def test_undecodable_image_bytes() -> None:
    with pytest.raises(dilated.DilatedError, match="not a readable image"):
        dilated.decode_image(b"not an image")
