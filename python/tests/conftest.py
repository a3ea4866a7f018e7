"""Shared fixtures of the Python tests: the command-line tool built by the root crate, small
width-reduced models with saved weights, and generated images.

The tests compare the Python package with the `dilated` binary (``target/release/dilated``,
built by ``cargo test --release``; ``DILATED_CLI`` names another) on the same inputs. Like the
Rust suite, GPU tests need an adapter and fail without one; ``DILATED_TEST_ADAPTER`` (CI:
``llvmpipe``) names the adapter they must get.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

import dilated

REPO = Path(__file__).resolve().parents[2]

#: Front-end widths divided by this: the released topologies at a small cost.
DIVISOR = 32
#: Tiles of 436 pixels: 64 output pixels per tile, so small images still take several tiles.
TILE = (436, 436)
TILE_ARG = f"{TILE[0]}x{TILE[1]}"
#: One model with in-network zoom (CamVid) and one with in-network deconvolution (Cityscapes).
MODELS = ("dilation8_camvid", "dilation10_cityscapes")


def cli_path() -> Path:
    """The command-line tool the results are compared with."""
    path = Path(os.environ.get("DILATED_CLI", REPO / "target" / "release" / "dilated"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it first with `cargo test --release` at the root")
    return path


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the command-line tool; fails the test with its stderr when ``check`` and it fails."""
    done = subprocess.run(
        [str(cli_path()), *args], capture_output=True, text=True, timeout=600
    )
    if check and done.returncode != 0:
        pytest.fail(f"dilated {' '.join(args)} failed:\n{done.stderr}")
    return done


def cli_error(*args: str) -> str:
    """The message of a command-line error (the text after ``error: `` on stderr)."""
    done = run_cli(*args, check=False)
    assert done.returncode != 0, f"dilated {' '.join(args)} succeeded"
    lines = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert lines, done.stderr
    return lines[-1][len("error: ") :]


def device_flag(device: str) -> List[str]:
    """The command-line flag for a Python ``device``."""
    return {"gpu": ["--gpu"], "cpu": ["--cpu"], "auto": []}[device]


def check_adapter(model: dilated.Model) -> None:
    """Asserts that a GPU model runs on the adapter ``DILATED_TEST_ADAPTER`` names."""
    assert model.device == "gpu", "the GPU tests need a GPU adapter"
    want = os.environ.get("DILATED_TEST_ADAPTER")
    if want:
        name = (model.adapter or {}).get("name", "")
        assert want.lower() in name.lower(), f"DILATED_TEST_ADAPTER={want} but got {name}"


def image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic image-like ``[height, width, 3]`` uint8 RGB array: gradients, stripes
    and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            127 + 100 * np.sin(y / 9.0 + seed),
            127 + 100 * np.cos(x / 13.0),
            127 + 100 * np.sin((x + y) / 17.0),
        ],
        axis=-1,
    )
    noisy = base + rng.integers(-25, 26, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Writes ``rgb`` as a PNG (lossless: every decoder reads back the same pixels)."""
    Image.fromarray(rgb).save(path)
    return path


def quiet_model(name: str, weights: Any = None, **kwargs: Any) -> dilated.Model:
    """A model, without the warning about random weights."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no weights given")
        return dilated.Model(name, weights, **kwargs)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Weights of each test model at ``DIVISOR``, drawn from another seed than the default so
    that loading them matters, saved as safetensors."""
    out = tmp_path_factory.mktemp("weights")
    paths = {}
    for name in MODELS:
        m = quiet_model(name, width_divisor=DIVISOR, seed=7, device="cpu")
        paths[name] = out / f"{name}.safetensors"
        m.save_weights(paths[name])
    return paths


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[np.ndarray, Path]]:
    """Two images as arrays and PNG files: one tile, and 2x2 tiles of ``TILE``."""
    out = tmp_path_factory.mktemp("images")
    arrays = {"small": image(50, 60, 1), "tiled": image(100, 90, 2)}
    return {k: (a, write_png(out / f"{k}.png", a)) for k, a in arrays.items()}


def ids(values: Sequence[str]) -> List[str]:
    """Short test ids."""
    return [v.split("_")[-1] for v in values]
