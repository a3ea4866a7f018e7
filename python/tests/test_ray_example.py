"""`examples/ray_segment.py`: its adapter mapping and naming, and a whole run on a local Ray
instance whose PNGs are byte for byte those of `dilated segment`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import DIVISOR, REPO, image, run_cli, write_png

EXAMPLE = REPO / "examples" / "ray_segment.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example, imported as a module."""
    spec = importlib.util.spec_from_file_location("ray_segment", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ray_segment"] = module
    spec.loader.exec_module(module)
    return module


ADAPTERS = [
    {"index": 0, "name": "llvmpipe", "device_type": "Cpu", "pci_bus_id": ""},
    {"index": 1, "name": "GPU A", "device_type": "DiscreteGpu", "pci_bus_id": "0000:3b:00.0"},
    {"index": 2, "name": "GPU B", "device_type": "DiscreteGpu", "pci_bus_id": "0000:17:00.0"},
]


def test_gpus_map_to_adapters_by_pci_bus(example: ModuleType) -> None:
    smi = {"0": "00000000:17:00.0", "1": "00000000:3B:00.0", "GPU-abc": "00000000:3B:00.0"}
    assert example.adapter_for_gpu(0, ADAPTERS, smi) == 2
    assert example.adapter_for_gpu("1", ADAPTERS, smi) == 1
    assert example.adapter_for_gpu("GPU-abc", ADAPTERS, smi) == 1


def test_gpus_map_to_the_nth_gpu_adapter_without_bus_ids(example: ModuleType) -> None:
    assert example.adapter_for_gpu(0, ADAPTERS, {}) == 1
    assert example.adapter_for_gpu("1", ADAPTERS, {}) == 2
    with pytest.raises(RuntimeError, match="Ray GPU 2 has no wgpu adapter"):
        example.adapter_for_gpu(2, ADAPTERS, {})
    with pytest.raises(RuntimeError, match="not a number"):
        example.adapter_for_gpu("GPU-xyz", ADAPTERS, {})


def test_pci_addresses(example: ModuleType) -> None:
    assert example.pci_bus("0000:3b:00.0") == example.pci_bus("00000000:3B:00.0") == (0, 59, 0, 0)
    assert example.pci_bus("") is None and example.pci_bus("n/a") is None


def test_output_names(example: ModuleType, tmp_path: Path) -> None:
    assert example.output_name(str(tmp_path / "a" / "photo.jpg"), str(tmp_path)) == "a/photo.png"
    assert example.output_name("/elsewhere/photo.jpeg", str(tmp_path)) == "photo.png"
    assert example.output_name("photo.bmp", None) == "photo.png"
    for name in ("x.jpg", "x.png"):
        write_png(tmp_path / name, image(4, 4, 0))
    with pytest.raises(ValueError, match="would both be written to x.png"):
        example.check_unique_outputs(example.find_images(tmp_path), tmp_path)


def test_the_example_is_a_program() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--width-divisor", "--weights", "--input", "--output", "--cpu",
                 "--actors", "--overlay"):  # fmt: skip
        assert flag in done.stdout


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray instance on two CPUs."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_run_writes_the_command_lines_pngs(
    example: ModuleType,
    local_ray: None,
    weights: Dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    write_png(inputs / "first.png", image(60, 80, 21))
    write_png(inputs / "sub" / "second.png", image(90, 50, 22))
    Image.fromarray(image(70, 70, 23)).save(inputs / "third.jpg", quality=90)
    (inputs / "notes.txt").write_text("not an image")
    w = weights["dilation8_camvid"]
    status = example.main([
        "--model", "dilation8_camvid", "--width-divisor", str(DIVISOR), "--weights", str(w),
        "--input", str(inputs), "--output", str(outputs), "--cpu", "--actors", "1",
    ])  # fmt: skip
    assert status == 0
    report = capsys.readouterr().out
    assert "segmented 3 images" in report and "images/s" in report
    written = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*.png"))
    assert written == ["first.png", "sub/second.png", "third.png"]
    for source, png in [
        (inputs / "first.png", outputs / "first.png"),
        (inputs / "sub" / "second.png", outputs / "sub" / "second.png"),
        (inputs / "third.jpg", outputs / "third.png"),
    ]:
        expected = tmp_path / "cli.png"
        run_cli(
            "segment", str(source), "-o", str(expected), "--model", "dilation8_camvid",
            "--width-divisor", str(DIVISOR), "--weights", str(w), "--cpu",
        )  # fmt: skip
        assert png.read_bytes() == expected.read_bytes(), f"{png} differs from dilated segment's"
        assert np.asarray(Image.open(png)).shape[:2] == np.asarray(Image.open(source)).shape[:2]
