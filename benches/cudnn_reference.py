#!/usr/bin/env python3
"""cuDNN reference timings (PyTorch on CUDA) for the shapes of `benches/ops.rs` and the whole
dilation10_cityscapes network at 1396x1396, to set beside `cargo bench --bench ops` and
`dilated bench` run on the same machine.

Each case runs with TF32 off (plain fp32, the arithmetic this crate's shaders do) and on (and,
with `--f16`, in half precision: inputs, weights and arithmetic in f16), with
`cudnn.benchmark` so cuDNN picks its fastest algorithm, timed with CUDA events after a warm-up.
Throughput counts a multiply-add as 2 FLOP (bias and ReLU not counted), as the Rust benches do.
Times cover the GPU work only (inputs already on the device).

    python3 benches/cudnn_reference.py [--reps 20] [--warmup 5] [--filter NAME] [--json FILE] [--f16]
"""

import argparse
import json
import statistics
import subprocess

import torch
import torch.nn.functional as F

# The element type of every tensor the cases create (float16 for the `--f16` pass).
DTYPE = torch.float32


# FP32 multiply-add lanes per SM by compute capability (the CUDA C++ Programming Guide's
# throughput table: 32-bit floating-point add, multiply, multiply-add).
FP32_LANES_PER_SM = {
    (6, 0): 64, (6, 1): 128, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128,
    (8, 7): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (12, 0): 128,
}


def fp32_peak(props):
    """The card's fp32 peak as 2 FLOP x FP32 lanes x SMs x the highest SM clock that
    nvidia-smi reports, with its parts; None where the lanes or the clock are unknown."""
    lanes = FP32_LANES_PER_SM.get((props.major, props.minor))
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout
        clock_mhz = float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        clock_mhz = None
    if lanes is None or clock_mhz is None:
        return None
    return {
        "tflops": 2 * lanes * props.multi_processor_count * clock_mhz * 1e6 / 1e12,
        "sms": props.multi_processor_count,
        "fp32_lanes_per_sm": lanes,
        "max_sm_clock_mhz": clock_mhz,
        "compute_capability": f"{props.major}.{props.minor}",
    }


def conv_cases():
    """(name, c_in, h, w, c_out, k, dilation, pad) as in benches/ops.rs."""
    cases = []
    for d in [1, 2, 4, 8, 16]:
        cases.append((f"conv3x3_256_d{d}", 256, 64, 64, 256, 3, d, d))
    cases.append(("conv3x3_512_d2", 512, 64, 64, 512, 3, 2, 2))
    cases.append(("conv1x1_1024", 1024, 64, 64, 1024, 1, 1, 0))
    cases.append(("fc6_7x7_d4_512_1024", 512, 56, 56, 1024, 7, 4, 0))
    return cases


def context_cases():
    """(name, channels, size, [(c_in, c_out, k, dilation)]) as in benches/ops.rs: 3x3 layers
    padded by their dilation with ReLU, then a 1x1 without."""

    def module(c, widths, dilations):
        layers, c_in = [], c
        for w, d in zip(widths, dilations):
            layers.append((c_in, w, 3, d))
            c_in = w
        layers.append((c_in, c, 1, 1))
        return layers

    d7 = [1, 1, 2, 4, 8, 16, 1]
    return [
        ("context_basic_c21_66", 21, 66, module(21, [21] * 7, d7)),
        ("context_large_c21_66", 21, 66, module(21, [42, 42, 84, 168, 336, 672, 672], d7)),
        (
            "context_cityscapes_c19_128",
            19,
            128,
            module(19, [19] * 9, [1, 1, 2, 4, 8, 16, 32, 64, 1]),
        ),
    ]


def cityscapes_layers():
    """The released dilation10_cityscapes network: (kind, c_in, c_out, k, dilation, pad, relu)
    for convolutions, ("pool",) for Caffe's 2x2 stride-2 max pooling with ceil rounding."""
    layers, c = [], 3
    for widths, dilation in [([64, 64], 1), ([128, 128], 1), ([256] * 3, 1)]:
        for w in widths:
            layers.append(("conv", c, w, 3, dilation, 0, True))
            c = w
        layers.append(("pool",))
    for widths, dilation in [([512] * 3, 1), ([512] * 3, 2)]:
        for w in widths:
            layers.append(("conv", c, w, 3, dilation, 0, True))
            c = w
    layers.append(("conv", 512, 4096, 7, 4, 0, True))  # fc6
    layers.append(("conv", 4096, 4096, 1, 1, 0, True))  # fc7
    layers.append(("conv", 4096, 19, 1, 1, 0, False))  # final
    for d in [1, 1, 2, 4, 8, 16, 32, 64]:  # ctx_conv1_1 .. ctx_conv7_1
        layers.append(("conv", 19, 19, 3, d, d, True))
    layers.append(("conv", 19, 19, 3, 1, 1, True))  # ctx_fc1
    layers.append(("conv", 19, 19, 1, 1, 0, False))  # ctx_final
    return layers


def conv_flops(c_in, c_out, k, oh, ow):
    return 2 * c_in * c_out * k * k * oh * ow


def time_cuda(fn, warmup, reps):
    """Median and best milliseconds of `reps` runs of `fn`, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times)


def he(c_out, c_in, k, gen):
    std = (2.0 / (c_in * k * k)) ** 0.5
    return torch.randn(c_out, c_in, k, k, generator=gen, device="cuda", dtype=DTYPE) * std


def conv_case(case, gen):
    name, c_in, h, w, c_out, k, d, pad = case
    x = torch.randn(1, c_in, h, w, generator=gen, device="cuda", dtype=DTYPE)
    weight = he(c_out, c_in, k, gen)
    bias = torch.randn(c_out, generator=gen, device="cuda", dtype=DTYPE)
    oh, ow = h + 2 * pad - d * (k - 1), w + 2 * pad - d * (k - 1)
    return name, conv_flops(c_in, c_out, k, oh, ow), (
        lambda: F.conv2d(x, weight, bias, padding=pad, dilation=d)
    )


def context_case(case, gen):
    name, c, size, layers = case
    x = torch.rand(1, c, size, size, generator=gen, device="cuda", dtype=DTYPE)
    zeros = lambda n: torch.zeros(n, device="cuda", dtype=DTYPE)  # noqa: E731
    params = [(he(o, i, k, gen), zeros(o), k, d) for i, o, k, d in layers]
    flops = sum(conv_flops(i, o, k, size, size) for i, o, k, _ in layers)

    def run():
        y = x
        for n, (weight, bias, k, d) in enumerate(params):
            y = F.conv2d(y, weight, bias, padding=d if k > 1 else 0, dilation=d)
            if n + 1 < len(params):
                y = F.relu(y)
        return y

    return name, flops, run


def cityscapes_case(size, gen):
    """The whole network with random weights at size x size: front-end, context module,
    in-network bilinear deconvolution (kernel 16, stride 8, pad 4, one group per class) and
    softmax."""
    x = torch.rand(1, 3, size, size, generator=gen, device="cuda", dtype=DTYPE) * 255.0 - 80.0
    params, flops, h = [], 0, size
    for layer in cityscapes_layers():
        if layer[0] == "pool":
            params.append(None)
            h = (h - 2 + 1) // 2 + 1  # Caffe: ceil((h - 2) / 2) + 1
            continue
        _, c_in, c_out, k, d, pad, relu = layer
        bias = torch.zeros(c_out, device="cuda", dtype=DTYPE)
        params.append((he(c_out, c_in, k, gen), bias, d, pad, relu))
        h = h + 2 * pad - d * (k - 1)
        flops += conv_flops(c_in, c_out, k, h, h)
    up = torch.rand(19, 1, 16, 16, generator=gen, device="cuda", dtype=DTYPE)
    flops += 2 * 19 * h * h * 16 * 16

    def run():
        y = x
        for p in params:
            if p is None:
                y = F.max_pool2d(y, 2, 2, ceil_mode=True)
                continue
            weight, bias, d, pad, relu = p
            y = F.conv2d(y, weight, bias, padding=pad, dilation=d)
            if relu:
                y = F.relu(y)
        y = F.conv_transpose2d(y, up, stride=8, padding=4, groups=19)
        return torch.softmax(y, dim=1)

    return f"dilation10_cityscapes_{size}x{size}", flops, run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--size", type=int, default=1396, help="Cityscapes input size")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--f16", action="store_true", help="also time every case in float16")
    args = ap.parse_args()
    global DTYPE

    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(0)
    print(
        f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )
    peak = fp32_peak(props)
    if peak:
        print(
            f"fp32 peak: {peak['tflops']:.1f} TFLOP/s ({peak['sms']} SMs x "
            f"{peak['fp32_lanes_per_sm']} lanes x 2 x {peak['max_sm_clock_mhz']:.0f} MHz)"
        )
    else:
        print("fp32 peak: unknown (compute capability not in the table, or no nvidia-smi clock)")
    def make_cases():
        gen = torch.Generator(device="cuda").manual_seed(7)
        cases = [conv_case(c, gen) for c in conv_cases()]
        cases += [context_case(c, gen) for c in context_cases()]
        cases.append(cityscapes_case(args.size, gen))
        return [c for c in cases if args.filter in c[0]]

    cases = make_cases()

    results = []
    print(f"{'case':<34} {'GFLOP':>9} | {'fp32 ms':>9} {'GFLOP/s':>9} | {'TF32 ms':>9} {'GFLOP/s':>9}")
    for name, flops, run in cases:
        row = {"case": name, "gflop": flops / 1e9}
        with torch.no_grad():
            for key, tf32 in [("fp32", False), ("tf32", True)]:
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                median, best = time_cuda(run, args.warmup, args.reps)
                row[f"{key}_ms"] = median
                row[f"{key}_best_ms"] = best
                row[f"{key}_gflops"] = flops / 1e9 / (median / 1e3)
        results.append(row)
        print(
            f"{name:<34} {row['gflop']:>9.2f} | {row['fp32_ms']:>9.3f} {row['fp32_gflops']:>9.0f}"
            f" | {row['tf32_ms']:>9.3f} {row['tf32_gflops']:>9.0f}"
        )
    if args.f16:
        DTYPE = torch.float16
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"{'case':<34} {'f16 ms':>9} {'GFLOP/s':>9}")
        for (name, flops, run), row in zip(make_cases(), results):
            with torch.no_grad():
                median, best = time_cuda(run, args.warmup, args.reps)
            row["f16_ms"] = median
            row["f16_best_ms"] = best
            row["f16_gflops"] = flops / 1e9 / (median / 1e3)
            print(f"{name:<34} {median:>9.3f} {row['f16_gflops']:>9.0f}")
        DTYPE = torch.float32
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": props.name, "fp32_peak": peak, "results": results}, f, indent=1
            )


if __name__ == "__main__":
    main()
