#!/usr/bin/env python3
"""Segments every image under a directory with Ray Data: one ``dilated.Model`` per actor, one
label PNG per image, and the throughput in images per second.

    pip install ./python "ray[data]"
    python examples/ray_segment.py --model dilation8_camvid --weights dilation8_camvid.caffemodel \\
        --input photos/ --output labels/

``photos/a/street.jpg`` becomes ``labels/a/street.png``, coloured in the dataset's palette
exactly as ``dilated segment`` writes it (``--overlay`` blends the colours over the photo, as
``dilated segment --overlay`` does); the PNGs are byte for byte those of the command-line tool,
as images are decoded by the same decoder (``dilated.decode_image``).

The same command runs on a laptop and on a cluster: with ``RAY_ADDRESS`` set (or
``--address``) it joins that cluster (``ray.init(address="auto")``), otherwise it starts Ray
locally. On a cluster every node needs the ``dilated`` package, and ``--input`` and
``--output`` must be on a file system every node sees.

Where the cluster has GPUs, each actor takes one (``num_gpus=1``) and opens it through wgpu.
Ray hands out GPUs as ``CUDA_VISIBLE_DEVICES``, which Vulkan ignores, so the actor maps the
Ray GPU id to a wgpu adapter itself (``adapter_for_gpu``): the adapter on the same PCI bus as
that GPU, from ``nvidia-smi``'s index and bus id, when both sides report one; otherwise the
id-th adapter that is not a CPU in ``dilated.adapters()`` order. Ray numbers a node's GPUs as
CUDA does, which on a node of identical GPUs is PCI bus order (set
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` on mixed nodes), and Vulkan drivers usually list GPUs in bus
order as well, so the fallback agrees with the bus match where there is no ``nvidia-smi``. Without
GPUs (or with ``--cpu``) the actors run on the CPU, one per node by default, each on
``--cpus-per-actor`` threads.

``segment_dataset`` does the same for any Ray Dataset of images with a ``path`` column and
either ``bytes`` (encoded files, as ``ray.data.read_binary_files(..., include_paths=True)``
gives) or ``image`` (``[height, width, 3]`` uint8 RGB arrays, as ``ray.data.read_images(...,
include_paths=True, mode="RGB")`` gives).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import ray

import dilated

#: File name endings of the images read from a directory (the formats `dilated` decodes).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def find_images(root: Path) -> List[Path]:
    """Every image file under ``root`` (recursively), sorted."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def output_name(path: str, input_root: Optional[str]) -> str:
    """The label PNG's path relative to the output directory: the image's path relative to
    ``input_root`` (its file name alone when it is not under it) ending in ``.png``."""
    image = Path(path)
    if input_root is not None:
        try:
            return str(image.resolve().relative_to(Path(input_root).resolve()).with_suffix(".png"))
        except ValueError:
            pass
    return image.with_suffix(".png").name


def check_unique_outputs(paths: Sequence[Path], input_root: Path) -> None:
    """Raises ``ValueError`` when two images would write the same PNG (``a.jpg`` and
    ``a.png`` in one directory)."""
    seen: Dict[str, Path] = {}
    for p in paths:
        name = output_name(str(p), str(input_root))
        if name in seen:
            raise ValueError(f"{seen[name]} and {p} would both be written to {name}")
        seen[name] = p


def pci_bus(bus_id: str) -> Optional[Tuple[int, int, int, int]]:
    """A PCI address such as ``0000:01:00.0`` (Vulkan) or ``00000000:01:00.0``
    (``nvidia-smi``) as (domain, bus, device, function); None when it is not one."""
    try:
        domain, bus, rest = bus_id.strip().lower().split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        return None


def nvidia_bus_ids() -> Dict[str, str]:
    """NVIDIA GPUs' PCI bus ids by index and by UUID, from ``nvidia-smi``; empty without
    it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    ids: Dict[str, str] = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            index, uuid, bus = fields
            ids[index] = bus
            ids[uuid] = bus
    return ids


def adapter_for_gpu(
    gpu_id: Any, adapters: Sequence[Mapping[str, Any]], bus_ids: Mapping[str, str]
) -> int:
    """The index into ``adapters`` (``dilated.adapters()``) of the GPU Ray calls ``gpu_id``.

    The adapter on the PCI bus ``bus_ids`` (``nvidia_bus_ids()``) gives for that id, when
    known; otherwise the ``gpu_id``-th adapter that is not a CPU (software) adapter."""
    gpus = [a for a in adapters if a.get("device_type") != "Cpu"]
    key = str(gpu_id)
    wanted = pci_bus(bus_ids.get(key, ""))
    if wanted is not None:
        for a in gpus:
            if pci_bus(str(a.get("pci_bus_id", ""))) == wanted:
                return int(a["index"])
    try:
        position = int(key)
    except ValueError:
        raise RuntimeError(
            f"Ray GPU {key!r} is not on any adapter's PCI bus and is not a number"
        ) from None
    if not 0 <= position < len(gpus):
        names = ", ".join(str(a.get("name")) for a in gpus) or "none"
        raise RuntimeError(
            f"Ray GPU {key} has no wgpu adapter: the GPU adapters are {names} "
            "(is the GPU's Vulkan driver installed?)"
        )
    return int(gpus[position]["index"])


class Segmenter:
    """Ray Data's callable class: builds one model per actor and segments batches with it,
    writing one label PNG per image."""

    def __init__(
        self,
        model: str,
        weights: Optional[str],
        width_divisor: int,
        output: str,
        input_root: Optional[str],
        overlay: bool,
        use_gpu: bool,
        threads: Optional[int],
    ) -> None:
        """Opens the model on the GPU Ray gave this actor, or on the CPU."""
        if threads is not None:
            # Read by the CPU backend's thread pool when it starts, on first use.
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        adapter: Optional[int] = None
        if use_gpu:
            ids = ray.get_gpu_ids()
            if not ids:
                raise RuntimeError("this actor was given no GPU")
            adapter = adapter_for_gpu(ids[0], dilated.adapters(), nvidia_bus_ids())
        with warnings.catch_warnings():
            # The driver has said so once already.
            warnings.filterwarnings("ignore", message="no weights given")
            self.model = dilated.Model(
                model,
                weights,
                width_divisor=width_divisor,
                device="gpu" if use_gpu else "cpu",
                adapter=adapter,
            )
        self.output = Path(output)
        self.input_root = input_root
        self.overlay = overlay

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Segments the batch's images, writes their PNGs and returns, per image, its path,
        the PNG's path, the seconds the model took and the pixels."""
        if "image" in batch:
            images = [np.ascontiguousarray(i, dtype=np.uint8) for i in batch["image"]]
        elif "bytes" in batch:
            images = [dilated.decode_image(bytes(b)) for b in batch["bytes"]]
        else:
            raise ValueError("the dataset needs a 'bytes' or an 'image' column")
        paths, outputs, seconds, pixels = [], [], [], []
        for path, image in zip(batch["path"], images):
            start = time.perf_counter()
            labels = self.model.segment(image)
            seconds.append(time.perf_counter() - start)
            out = self.output / output_name(str(path), self.input_root)
            out.parent.mkdir(parents=True, exist_ok=True)
            dilated.save_labels_png(
                out, labels, self.model, overlay_image=image if self.overlay else None
            )
            paths.append(str(path))
            outputs.append(str(out))
            pixels.append(image.shape[0] * image.shape[1])
        return {
            "path": np.array(paths),
            "output": np.array(outputs),
            "seconds": np.array(seconds, dtype=np.float64),
            "pixels": np.array(pixels, dtype=np.int64),
        }


def segment_dataset(
    ds: "ray.data.Dataset",
    output: Path,
    *,
    model: str,
    weights: Optional[str],
    width_divisor: int,
    actors: int,
    use_gpu: bool,
    cpus_per_actor: int = 1,
    overlay: bool = False,
    input_root: Optional[Path] = None,
    batch_size: int = 4,
) -> "ray.data.Dataset":
    """The (lazy) dataset of results of segmenting ``ds`` with ``actors`` actors, each
    holding one model: on one GPU each (``use_gpu``), or on ``cpus_per_actor`` CPUs. Each
    row of the result names an image, its PNG, the model's seconds and the pixels."""
    if __name__ != "__main__":
        # Imported (by tests, or another program): ship this module's code to the workers,
        # which need not be able to import it.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Ray Data spreads the actors over the nodes by default.
    resources: Dict[str, Any] = (
        {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": cpus_per_actor}
    )
    return ds.map_batches(
        Segmenter,
        fn_constructor_kwargs={
            "model": model,
            "weights": weights,
            "width_divisor": width_divisor,
            "output": str(output),
            "input_root": None if input_root is None else str(input_root),
            "overlay": overlay,
            "use_gpu": use_gpu,
            "threads": None if use_gpu else cpus_per_actor,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **resources,
    )


def connect(address: Optional[str]) -> None:
    """Joins the cluster at ``address`` (``"auto"`` finds the configured one), or starts Ray
    locally; does nothing when Ray is already up (a caller's own ``ray.init``)."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        description="Segment every image under a directory with Ray Data and dilated.",
    )
    p.add_argument("--model", default="dilation8_pascal_voc", help="preset name")
    p.add_argument(
        "--width-divisor",
        type=int,
        default=1,
        help="divides every front-end width (1 = the released size; weights must match)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help=".caffemodel or .safetensors; without it the labels come from random weights",
    )
    p.add_argument("--input", required=True, type=Path, help="directory of images")
    p.add_argument("--output", required=True, type=Path, help="directory of label PNGs")
    p.add_argument("--cpu", action="store_true", help="run on CPUs even where there are GPUs")
    p.add_argument(
        "--actors",
        type=int,
        default=None,
        help="models running at once (default: one per GPU, or one per node on CPUs)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=int,
        default=None,
        help="CPUs (and threads) of each CPU actor (default: the smallest node's CPUs less "
        "one, left to Ray Data's readers)",
    )
    p.add_argument("--overlay", action="store_true", help="blend the colours over the image")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch")
    p.add_argument(
        "--address",
        default="auto" if os.environ.get("RAY_ADDRESS") else None,
        help="Ray cluster to join (default: the one RAY_ADDRESS names, else a local Ray)",
    )
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status."""
    args = parse_args(argv)
    if not args.input.is_dir():
        print(f"error: {args.input} is not a directory", file=sys.stderr)
        return 2
    paths = find_images(args.input)
    if not paths:
        print(f"error: no {'/'.join(IMAGE_SUFFIXES)} images under {args.input}", file=sys.stderr)
        return 2
    check_unique_outputs(paths, args.input)
    if args.weights is None:
        print(
            "warning: no --weights given: using randomly initialised weights; "
            "the labels are meaningless",
            file=sys.stderr,
        )
    connect(args.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and not args.cpu
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if use_gpu:
        actors = args.actors or gpus
        cpus_per_actor = 1
    else:
        smallest = min(int(n["Resources"].get("CPU", 1)) for n in nodes)
        cpus_per_actor = args.cpus_per_actor or max(1, smallest - 1)
        actors = args.actors or len(nodes)
    args.output.mkdir(parents=True, exist_ok=True)
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True)
    results = segment_dataset(
        ds,
        args.output,
        model=args.model,
        weights=args.weights,
        width_divisor=args.width_divisor,
        actors=actors,
        use_gpu=use_gpu,
        cpus_per_actor=cpus_per_actor,
        overlay=args.overlay,
        input_root=args.input,
        batch_size=args.batch_size,
    )
    start = time.perf_counter()
    images, model_seconds, pixels = 0, 0.0, 0
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        images += len(batch["output"])
        model_seconds += float(batch["seconds"].sum())
        pixels += int(batch["pixels"].sum())
    elapsed = time.perf_counter() - start
    where = f"{actors} GPU actor(s)" if use_gpu else f"{actors} CPU actor(s) x {cpus_per_actor} CPU(s)"
    print(
        f"segmented {images} images ({pixels / 1e6:.1f} Mpixels) into {args.output} with {where}: "
        f"{elapsed:.1f} s, {images / elapsed:.2f} images/s "
        f"(model time {model_seconds:.1f} s, {images / max(model_seconds, 1e-9):.2f} images/s "
        "per actor while segmenting)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
