"""The Python API against the command-line tool: the same labels, probabilities, PNG bytes and
raw scores on the same inputs, on the GPU and on the CPU."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from PIL import Image

import dilated
from conftest import (
    DIVISOR,
    MODELS,
    TILE,
    TILE_ARG,
    check_adapter,
    device_flag,
    ids,
    image,
    quiet_model,
    run_cli,
    write_png,
)


def test_adapters_are_listed_with_their_facts() -> None:
    found = dilated.adapters()
    assert found, "no adapter: the GPU tests need one (CI installs lavapipe)"
    assert [a["index"] for a in found] == list(range(len(found)))
    for a in found:
        for key in ("name", "backend", "device_type", "driver", "pci_bus_id"):
            assert isinstance(a[key], str), key
        assert a["max_storage_buffer_binding_size"] > 0
    want = os.environ.get("DILATED_TEST_ADAPTER")
    if want:
        assert any(want.lower() in a["name"].lower() for a in found), found


def test_presets_palettes_and_class_names() -> None:
    assert dilated.models() == [
        "dilation8_pascal_voc",
        "dilation8_camvid",
        "dilation7_kitti",
        "dilation10_cityscapes",
    ]
    for name, classes in zip(dilated.models(), (21, 11, 11, 19)):
        p = dilated.palette(name)
        assert p.shape == (classes, 3) and p.dtype == np.uint8
        assert len(dilated.class_names(name)) == classes
    assert dilated.palette("pascal_voc")[15].tolist() == [192, 128, 128]
    assert dilated.class_names("pascal_voc")[15] == "person"
    assert dilated.class_names("camvid")[5] == "road"
    assert dilated.palette("camvid")[5].tolist() == [128, 64, 128]
    assert dilated.class_names("cityscapes")[:3] == ["road", "sidewalk", "building"]


@pytest.mark.parametrize("device", ["gpu", "cpu"])
@pytest.mark.parametrize("name", MODELS, ids=ids(MODELS))
def test_segment_equals_the_command_line(
    name: str,
    device: str,
    weights: Dict[str, Path],
    images: Dict[str, Tuple[np.ndarray, Path]],
    tmp_path: Path,
) -> None:
    m = dilated.Model(name, weights[name], width_divisor=DIVISOR, device=device, tile=TILE)
    if device == "gpu":
        check_adapter(m)
    assert m.device == device and not m.random_weights
    for key, (rgb, png) in images.items():
        labels, probs = m.segment(rgb, probs=True)
        assert labels.shape == rgb.shape[:2] and labels.dtype == np.uint8
        assert probs.shape == (len(m.classes), *rgb.shape[:2]) and probs.dtype == np.float32
        assert np.array_equal(m.segment(rgb), labels)
        out, npy = tmp_path / f"{key}-cli.png", tmp_path / f"{key}-cli.npy"
        run_cli(
            "segment", str(png), "-o", str(out), "--model", name,
            "--width-divisor", str(DIVISOR), "--weights", str(weights[name]),
            "--tile", TILE_ARG, "--probs", str(npy), *device_flag(device),
        )  # fmt: skip
        assert np.array_equal(probs, np.load(npy)), f"{key}: probabilities differ"
        mine = tmp_path / f"{key}-py.png"
        dilated.save_labels_png(mine, labels, m)
        assert mine.read_bytes() == out.read_bytes(), f"{key}: PNG bytes differ"
        decoded = np.asarray(Image.open(out).convert("RGB"))
        assert np.array_equal(decoded, m.palette[labels]), f"{key}: label colours differ"
        assert np.array_equal(labels, probs.argmax(axis=0)), f"{key}: labels are not the argmax"


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_overlay_png_equals_the_command_line(
    device: str,
    weights: Dict[str, Path],
    images: Dict[str, Tuple[np.ndarray, Path]],
    tmp_path: Path,
) -> None:
    name = "dilation8_camvid"
    rgb, png = images["tiled"]
    m = dilated.Model(name, weights[name], width_divisor=DIVISOR, device=device, tile=TILE)
    out = tmp_path / "cli.png"
    run_cli(
        "segment", str(png), "-o", str(out), "--model", name, "--width-divisor", str(DIVISOR),
        "--weights", str(weights[name]), "--tile", TILE_ARG, "--overlay", *device_flag(device),
    )  # fmt: skip
    mine = tmp_path / "py.png"
    dilated.save_labels_png(mine, m.segment(rgb), "camvid", overlay_image=rgb)
    assert mine.read_bytes() == out.read_bytes()


def test_default_tile_and_device_equal_the_command_line(
    weights: Dict[str, Path], images: Dict[str, Tuple[np.ndarray, Path]], tmp_path: Path
) -> None:
    name = "dilation8_camvid"
    rgb, png = images["small"]
    m = dilated.Model(name, str(weights[name]), width_divisor=DIVISOR)
    assert m.tile == (900, 1100) and m.device == "gpu"
    out = tmp_path / "cli.png"
    run_cli(
        "segment", str(png), "-o", str(out), "--model", name, "--width-divisor", str(DIVISOR),
        "--weights", str(weights[name]),
    )  # fmt: skip
    mine = tmp_path / "py.png"
    dilated.save_labels_png(mine, m.segment(rgb), m.palette)
    assert mine.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("device", ["gpu", "cpu"])
@pytest.mark.parametrize("name", MODELS, ids=ids(MODELS))
def test_forward_equals_run(
    name: str, device: str, weights: Dict[str, Path], tmp_path: Path
) -> None:
    m = dilated.Model(name, weights[name], width_divisor=DIVISOR, device=device)
    rng = np.random.default_rng(3)
    x = rng.uniform(-120, 120, size=(1, 3, 396, 404)).astype(np.float32)
    scores = m.forward(x)
    np.save(tmp_path / "x.npy", x)
    run_cli(
        "run", "--model", name, "--width-divisor", str(DIVISOR), "--weights",
        str(weights[name]), "--input", str(tmp_path / "x.npy"), "--output",
        str(tmp_path / "y.npy"), *device_flag(device),
    )  # fmt: skip
    expected = np.load(tmp_path / "y.npy")
    assert scores.dtype == np.float32 and scores.shape == expected.shape
    assert np.array_equal(scores, expected)
    # Any strides are read in place: a transposed view gives the same scores.
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    assert np.array_equal(m.forward(xt), scores)


def test_cpu_in_bf16_is_close_to_f32_and_equals_run(
    weights: Dict[str, Path], tmp_path: Path
) -> None:
    name = "dilation8_camvid"
    with pytest.raises(ValueError, match="f32 or bf16"):
        dilated.Model(name, weights[name], width_divisor=DIVISOR, device="cpu", cpu_precision="f8")
    rng = np.random.default_rng(4)
    x = rng.uniform(-120, 120, size=(1, 3, 396, 404)).astype(np.float32)
    reference = dilated.Model(name, weights[name], width_divisor=DIVISOR, device="cpu").forward(x)
    try:
        m = dilated.Model(
            name, weights[name], width_divisor=DIVISOR, device="cpu", cpu_precision="bf16"
        )
    except dilated.DilatedError as e:  # a CPU without AVX-512 BF16
        assert "BF16" in str(e) and e.kind == "InvalidSpec"
        return
    scores = m.forward(x)
    # The output is the softmax, which turns bf16's ~1e-2 relative change of the class scores
    # into large changes of near-one-hot probabilities: compare the labels, and check that the
    # scores did change (they went through bf16).
    assert not np.array_equal(scores, reference)
    assert (scores.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.9
    np.save(tmp_path / "x.npy", x)
    run_cli(
        "run", "--model", name, "--width-divisor", str(DIVISOR), "--weights",
        str(weights[name]), "--input", str(tmp_path / "x.npy"), "--output",
        str(tmp_path / "y.npy"), "--cpu", "--cpu-precision", "bf16",
    )  # fmt: skip
    assert np.array_equal(scores, np.load(tmp_path / "y.npy"))


def test_random_weights_are_flagged() -> None:
    with pytest.warns(UserWarning, match="randomly initialised weights"):
        m = dilated.Model("camvid", width_divisor=DIVISOR, device="cpu")
    assert m.random_weights and m.weights is None
    assert m.info()["random_weights"] is True
    assert "random weights" in repr(m)


def test_random_weights_equal_the_command_line_without_weights(
    images: Dict[str, Tuple[np.ndarray, Path]], tmp_path: Path
) -> None:
    rgb, png = images["small"]
    m = quiet_model("dilation8_camvid", width_divisor=DIVISOR, device="cpu", tile=TILE)
    out = tmp_path / "cli.png"
    run_cli(
        "segment", str(png), "-o", str(out), "--model", "dilation8_camvid",
        "--width-divisor", str(DIVISOR), "--tile", TILE_ARG, "--cpu",
    )  # fmt: skip
    mine = tmp_path / "py.png"
    dilated.save_labels_png(mine, m.segment(rgb), m)
    assert mine.read_bytes() == out.read_bytes()


def test_info_reports_the_model_and_its_layers(weights: Dict[str, Path]) -> None:
    m = dilated.Model(
        "dilation10_cityscapes", weights["dilation10_cityscapes"], width_divisor=DIVISOR,
        device="cpu", tile=TILE,
    )  # fmt: skip
    info = m.info()
    assert info["model"] == m.name == "dilation10_cityscapes"
    assert info["classes"] == 19 == len(m.classes) == len(m.palette)
    assert info["tile"] == TILE and info["input_size"] == (1396, 1396)
    assert info["device"] == "cpu" and info["adapter"] is None and info["gpu_memory"] is None
    assert info["weights"] == str(weights["dilation10_cityscapes"])
    assert info["upsampling"] == "deconvolution" and info["width_divisor"] == DIVISOR
    names = [l["name"] for l in info["layers"]]
    assert names[0] == "conv1_1" and "fc6" in names and names[-1] == "prob"
    assert info["layers"][-1]["output_shape"] == (1, 19, 64, 64)
    assert info["flops"] == sum(l["flops"] for l in info["layers"]) > 0
    assert info["params"] > 0
    assert m.info(size=(500, 500))["layers"][-1]["output_shape"] == (1, 19, 128, 128)


def test_gpu_in_f16_is_close_to_f32_and_equals_run(
    weights: Dict[str, Path], tmp_path: Path
) -> None:
    name = "dilation8_camvid"
    with pytest.raises(ValueError, match="f32 or f16"):
        dilated.Model(name, weights[name], width_divisor=DIVISOR, device="gpu", precision="f8")
    rng = np.random.default_rng(5)
    x = rng.uniform(-120, 120, size=(1, 3, 396, 404)).astype(np.float32)
    full = dilated.Model(name, weights[name], width_divisor=DIVISOR, device="gpu").forward(x)
    m = dilated.Model(name, weights[name], width_divisor=DIVISOR, device="gpu", precision="f16")
    check_adapter(m)
    scores = m.forward(x)
    assert np.isfinite(scores).all()
    error = np.abs(scores - full).max() / np.abs(full).max()
    assert 0 < error < 0.1, error
    np.save(tmp_path / "x.npy", x)
    run_cli(
        "run", "--model", name, "--width-divisor", str(DIVISOR), "--weights",
        str(weights[name]), "--input", str(tmp_path / "x.npy"), "--output",
        str(tmp_path / "y.npy"), "--gpu", "--precision", "f16",
    )  # fmt: skip
    assert np.array_equal(scores, np.load(tmp_path / "y.npy"))


def test_gpu_model_reports_its_adapter(weights: Dict[str, Path]) -> None:
    m = dilated.Model(
        "camvid", weights["dilation8_camvid"], width_divisor=DIVISOR, device="gpu", tile=TILE
    )
    check_adapter(m)
    info = m.info()
    assert info["device"] == "gpu" and info["requested_device"] == "gpu"
    assert info["adapter"] is not None and m.adapter is not None
    assert info["adapter"]["name"] == m.adapter["name"]
    assert (info["gpu_memory"] or 0) > 0


def test_adapters_are_chosen_by_index_and_by_name(
    weights: Dict[str, Path], images: Dict[str, Tuple[np.ndarray, Path]]
) -> None:
    found = dilated.adapters()
    rgb, _ = images["small"]
    results = []
    for a in found:
        m = dilated.Model(
            "camvid", weights["dilation8_camvid"], width_divisor=DIVISOR, device="gpu",
            adapter=a["index"], tile=TILE,
        )  # fmt: skip
        assert m.adapter is not None
        assert m.adapter["name"] == a["name"] and m.adapter["backend"] == a["backend"]
        results.append(m.segment(rgb))
    name = found[0]["name"]
    by_name = dilated.Model(
        "camvid", weights["dilation8_camvid"], width_divisor=DIVISOR, device="gpu",
        adapter=name.upper(), tile=TILE,
    )  # fmt: skip
    assert by_name.adapter is not None and by_name.adapter["name"] == name
    assert np.array_equal(by_name.segment(rgb), results[0])


def test_images_are_decoded_as_the_command_line_decodes_them(tmp_path: Path) -> None:
    rgb = image(37, 41, 5)
    png = write_png(tmp_path / "a.png", rgb)
    loaded = dilated.load_image(png)
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, rgb)
    assert np.array_equal(dilated.decode_image(png.read_bytes()), rgb)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(rgb).save(jpg, quality=80)
    from_file = dilated.load_image(jpg)
    assert from_file.shape == rgb.shape
    assert np.array_equal(dilated.decode_image(jpg.read_bytes()), from_file)


def test_images_from_pil_lists_and_views(weights: Dict[str, Path]) -> None:
    m = dilated.Model("camvid", weights["dilation8_camvid"], width_divisor=DIVISOR, device="cpu")
    rgb = image(40, 44, 6)
    want = m.segment(rgb)
    assert np.array_equal(m.segment(Image.fromarray(rgb)), want)
    flipped = rgb[::-1, ::-1]
    assert not flipped.flags.c_contiguous
    assert np.array_equal(m.segment(flipped), m.segment(np.ascontiguousarray(flipped)))


def test_weights_round_trip_through_both_formats(
    weights: Dict[str, Path], tmp_path: Path
) -> None:
    name = "dilation8_camvid"
    m = dilated.Model(name, weights[name], width_divisor=DIVISOR, device="cpu")
    caffe = tmp_path / "w.caffemodel"
    m.save_weights(caffe)
    again = dilated.Model(name, caffe, width_divisor=DIVISOR, device="cpu")
    x = np.random.default_rng(4).uniform(-50, 50, (1, 3, 390, 390)).astype(np.float32)
    assert np.array_equal(again.forward(x), m.forward(x))
    run_cli("convert", str(caffe), str(tmp_path / "w.safetensors"), "--model", name,
            "--width-divisor", str(DIVISOR))  # fmt: skip
    assert (tmp_path / "w.safetensors").read_bytes() == weights[name].read_bytes()


def test_non_finite_weights_are_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    quiet_model("camvid", width_divisor=DIVISOR, device="cpu").save_weights(path)
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    # The first tensor's first float, just after the JSON header, becomes NaN.
    data[8 + header : 8 + header + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dilated.Model("camvid", path, width_divisor=DIVISOR, device="cpu")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("NaN or infinite" in msg for msg in messages), messages
