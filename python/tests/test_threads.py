"""Threads: the interpreter is released while a model computes, and threads sharing models
get the results of the same calls made one after another."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import dilated
from conftest import DIVISOR, TILE, image


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_threads_give_the_serial_results(device: str, weights: Dict[str, Path]) -> None:
    camvid = dilated.Model("camvid", weights["dilation8_camvid"], width_divisor=DIVISOR,
                           device=device, tile=TILE)  # fmt: skip
    cityscapes = dilated.Model("cityscapes", weights["dilation10_cityscapes"],
                               width_divisor=DIVISOR, device=device, tile=TILE)  # fmt: skip
    images = [image(70 + 10 * i, 80, 10 + i) for i in range(4)]
    x = np.random.default_rng(8).uniform(-100, 100, (1, 3, 390, 398)).astype(np.float32)
    jobs = [(m, img) for img in images for m in (camvid, cityscapes)]
    serial = [m.segment(img, probs=True) for m, img in jobs]
    scores = camvid.forward(x)
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda job: job[0].segment(job[1], probs=True), jobs))
        forwards = list(pool.map(lambda _: camvid.forward(x), range(3)))
    for (labels, probs), (labels2, probs2) in zip(serial, together):
        assert np.array_equal(labels, labels2)
        assert np.array_equal(probs, probs2)
    for s in forwards:
        assert np.array_equal(s, scores)


def test_the_interpreter_runs_while_a_model_computes(weights: Dict[str, Path]) -> None:
    m = dilated.Model("camvid", weights["dilation8_camvid"], width_divisor=DIVISOR,
                      device="cpu")  # fmt: skip
    img = image(300, 300, 3)
    m.segment(img)  # warm up
    ticks: List[float] = []
    done = threading.Event()

    def segment() -> None:
        try:
            m.segment(img)
        finally:
            done.set()

    worker = threading.Thread(target=segment)
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    elapsed = time.perf_counter() - start
    # With the interpreter held for the whole computation the loop above could not run; with
    # it released the loop ticks throughout (about every millisecond).
    assert elapsed > 0.05, "the segmentation was too quick to tell"
    assert len(ticks) > 10, f"{len(ticks)} ticks in {elapsed:.2f} s"
    gaps = np.diff(ticks)
    assert gaps.max() < elapsed / 2, f"the loop stalled for {gaps.max():.2f} s of {elapsed:.2f} s"
