#!/usr/bin/env python3
"""The training steps of `benches/train.rs` in PyTorch on the CPU, for a side-by-side anchor.

Same layer geometry, batch, loss and solver as the Rust benchmark: forward, cross-entropy with
ignore_index=255 averaged over the non-ignored pixels (Caffe's VALID normalisation), backward,
and SGD with momentum 0.9 and weight decay 0.0005 (biases at twice the rate and without decay,
as the authors' Caffe solvers). Prints one line per case in the Rust table's format:
iterations per second (best and median wall clock over --secs, at least --min-runs iterations,
default 3, after one warm-up), seconds per iteration and GFLOP/s at the median, GFLOP per second of process CPU
time.

    pip install torch numpy
    python3 benches/pytorch_train_reference.py --threads 2 [--batch 2] [--fe-batch 2] [--filter large]

Cases (names as the Rust benchmark's, with `_torch`):

* context_large_voc_b{batch}: dilation8_pascal_voc's context module (large, 21 classes,
  channels 42, 42, 84, 168, 336, 672, 672, dilations 1, 1, 2, 4, 8, 16, 1, the first layer
  padded by 33 and the rest by 0, then a 1x1 to 21), on 66 x 66;
* context_basic_c21_b60: the basic module (21 channels, padding = dilation) on 66 x 66;
* frontend_w8_500_b{fe_batch}: the front-end with widths divided by 8 on 500 x 500 crops
  (16 x 16 scores), max pooling 2/2 in ceil mode, dropout 0.5 after fc6 and fc7.
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def context_large():
    c = 21
    widths = [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c, 32 * c]
    dilations = [1, 1, 2, 4, 8, 16, 1]
    layers, cin = [], c
    for i, (w, d) in enumerate(zip(widths, dilations)):
        layers += [nn.Conv2d(cin, w, 3, dilation=d, padding=33 if i == 0 else 0), nn.ReLU()]
        cin = w
    layers.append(nn.Conv2d(cin, c, 1))
    return nn.Sequential(*layers)


def context_basic():
    c = 21
    layers = []
    for d in [1, 1, 2, 4, 8, 16, 1]:
        layers += [nn.Conv2d(c, c, 3, dilation=d, padding=d), nn.ReLU()]
    layers.append(nn.Conv2d(c, c, 1))
    return nn.Sequential(*layers)


def front_end(divisor=8, classes=21):
    def w(c):
        return max(c // divisor, 1)

    # (out channels, kernel, dilation) or "pool", as the crate's FrontEnd.
    spec = [
        (w(64), 3, 1), (w(64), 3, 1), "pool",
        (w(128), 3, 1), (w(128), 3, 1), "pool",
        (w(256), 3, 1), (w(256), 3, 1), (w(256), 3, 1), "pool",
        (w(512), 3, 1), (w(512), 3, 1), (w(512), 3, 1),
        (w(512), 3, 2), (w(512), 3, 2), (w(512), 3, 2),
        (w(4096), 7, 4), "drop", (w(4096), 1, 1), "drop",
    ]
    layers, cin = [], 3
    for s in spec:
        if s == "pool":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        elif s == "drop":
            layers.append(nn.Dropout(0.5))
        else:
            cout, k, d = s
            layers += [nn.Conv2d(cin, cout, k, dilation=d), nn.ReLU()]
            cin = cout
    layers.append(nn.Conv2d(cin, classes, 1))
    return nn.Sequential(*layers)


def train_flops(net, x):
    """FLOP of one iteration: forward and weight gradient of every convolution, and the input
    gradient of all but the first (multiply-add = 2), as the Rust benchmark counts."""
    total, first = 0, True
    with torch.no_grad():
        for layer in net:
            y = layer(x)
            if isinstance(layer, nn.Conv2d):
                k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                f = 2 * y.numel() * k
                total += 2 * f if first else 3 * f
                first = False
            x = y
    return total, x.shape


def solver(net, lr=1e-3, momentum=0.9, weight_decay=0.0005):
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    return torch.optim.SGD(
        [
            {"params": weights, "lr": lr, "weight_decay": weight_decay},
            {"params": biases, "lr": 2 * lr, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=momentum,
    )


def run(name, net, shape, secs, min_runs):
    torch.manual_seed(0)
    x = torch.rand(shape) * 2 - 1
    flops, out = train_flops(net, x)
    labels = torch.randint(0, out[1], (out[0], out[2], out[3]))
    labels[torch.rand(labels.shape) < 0.1] = 255
    opt = solver(net)
    net.train()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(net(x), labels, ignore_index=255)
        loss.backward()
        opt.step()
        return loss

    step()
    times = []
    start, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < secs or len(times) < min_runs:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    times.sort()
    med = statistics.median(times)
    g = flops / 1e9
    print(
        f"{name:34} {g:9.2f} {1 / times[0]:9.3f} {1 / med:9.3f} {med:9.3f} {g / med:8.1f} "
        f"{g * len(times) / cpu:9.1f} {len(times):5}",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="batch of the VOC context module")
    ap.add_argument("--fe-batch", type=int, default=2, help="batch of the front-end")
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--min-runs", type=int, default=3, help="timed iterations at least")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"mkldnn {torch.backends.mkldnn.is_available()}")
    print(
        f"{'case':34} {'GFLOP/it':>9} {'best it/s':>9} {'med it/s':>9} {'s/it':>9} "
        f"{'GFLOP/s':>8} {'per CPU-s':>9} {'runs':>5}"
    )
    cases = [
        (f"context_large_voc_b{args.batch}_torch", context_large, (args.batch, 21, 66, 66)),
        ("context_basic_c21_b60_torch", context_basic, (60, 21, 66, 66)),
        (f"frontend_w8_500_b{args.fe_batch}_torch", front_end, (args.fe_batch, 3, 500, 500)),
    ]
    for name, make, shape in cases:
        if args.filter in name:
            torch.manual_seed(0)
            run(name, make(), shape, args.secs, max(args.min_runs, 1))


if __name__ == "__main__":
    main()
