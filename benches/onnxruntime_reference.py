#!/usr/bin/env python3
"""ONNX Runtime reference timings for the shapes of `benches/cpu.rs`.

Builds each convolution (or chain of convolutions) as an ONNX graph with random weights as
initializers and the activation as a graph input (so nothing is constant-folded), runs it on
ONNX Runtime's CPU provider with `intra_op_num_threads` threads, and prints GFLOP/s
(multiply-add = 2 FLOP, bias and ReLU not counted): median and best wall-clock rate of the
timed runs, and FLOP per second of process CPU time (less sensitive to other load on the
machine; with --threads 1 it is the per-core efficiency).

    pip install onnxruntime onnx numpy
    python3 benches/onnxruntime_reference.py [--threads 2] [--reps 10] [--filter NAME]
"""

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def conv_layers(c_in, layers):
    """layers: list of (c_out, k, dilation, pad, relu). Returns [(c_in, c_out, k, d, pad, relu)]."""
    out = []
    for c_out, k, d, pad, relu in layers:
        out.append((c_in, c_out, k, d, pad, relu))
        c_in = c_out
    return out


def context_module(channels, dilations, c_final):
    """3x3 layers with the given output channels and dilations (pad = dilation, ReLU), then a
    1x1 to c_final without ReLU."""
    layers = [(c, 3, d, d, True) for c, d in zip(channels, dilations)]
    layers.append((c_final, 1, 1, 0, False))
    return layers


def shapes():
    """(name, c_in, h, w, layers) as in benches/cpu.rs."""
    s = []
    for d in [1, 2, 4, 8, 16]:
        s.append((f"conv3x3_256_64x64_d{d}", 256, 64, 64, [(256, 3, d, d, False)]))
    s.append(("conv1x1_1024_64x64", 1024, 64, 64, [(1024, 1, 1, 0, False)]))
    s.append(("fc6_7x7_d4_512to1024_32x32", 512, 56, 56, [(1024, 7, 4, 0, False)]))
    c = 21
    s.append(
        (
            "context_large_c21_66x66",
            c,
            66,
            66,
            context_module(
                [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c, 32 * c], [1, 1, 2, 4, 8, 16, 1], c
            ),
        )
    )
    s.append(
        (
            "context_basic_c21_66x66",
            c,
            66,
            66,
            context_module([c] * 7, [1, 1, 2, 4, 8, 16, 1], c),
        )
    )
    c = 19
    s.append(
        (
            "context_basic_c19_128x128",
            c,
            128,
            128,
            context_module([c] * 9, [1, 1, 2, 4, 8, 16, 32, 64, 1], c),
        )
    )
    return s


def build(c_in, h, w, layers, rng):
    nodes, inits = [], []
    cur, cc, ch, cw = "x", c_in, h, w
    flops = 0
    for i, (c_out, k, d, pad, relu) in enumerate(layers):
        wt = (rng.standard_normal((c_out, cc, k, k)) * (1.0 / np.sqrt(cc * k * k))).astype(
            np.float32
        )
        b = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(wt, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"y{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [cur, f"w{i}", f"b{i}"],
                [out],
                kernel_shape=[k, k],
                dilations=[d, d],
                pads=[pad, pad, pad, pad],
                strides=[1, 1],
            )
        )
        ext = (k - 1) * d + 1
        ch, cw = ch + 2 * pad - ext + 1, cw + 2 * pad - ext + 1
        flops += 2 * c_out * ch * cw * cc * k * k
        cur = out
        if relu:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
        cc = c_out
    nodes.append(helper.make_node("Identity", [cur], ["out"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, h, w])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, cc, ch, cw])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), flops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, intra_op_num_threads={args.threads}")
    print(
        f"{'shape':32} {'GFLOP':>8} {'median ms':>10} {'GFLOP/s':>8} {'best GFLOP/s':>12} "
        f"{'GFLOP/CPU-s':>11}"
    )
    for name, c_in, h, w, layers in shapes():
        if args.filter not in name:
            continue
        model, flops = build(c_in, h, w, layers, rng)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        x = rng.uniform(-1, 1, (1, c_in, h, w)).astype(np.float32)
        for _ in range(2):
            sess.run(None, {"x": x})
        times = []
        cpu0 = time.process_time()
        for _ in range(args.reps):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t)
        cpu = (time.process_time() - cpu0) / args.reps
        med, best = statistics.median(times), min(times)
        print(
            f"{name:32} {flops / 1e9:8.3f} {med * 1e3:10.2f} {flops / med / 1e9:8.1f} "
            f"{flops / best / 1e9:12.1f} {flops / cpu / 1e9:11.1f}",
            flush=True,
        )
    mem_ops(args, rng)


def mem_ops(args, rng):
    """MaxPool 2x2/2 (ceil) and Relu on a 1x128x224x224 input, in GB/s of input read."""
    shape = [1, 128, 224, 224]
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    for name, node, out_shape in [
        (
            "max_pool_2x2s2_128x224x224",
            helper.make_node(
                "MaxPool", ["x"], ["out"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
            ),
            [1, 128, 112, 112],
        ),
        ("relu_128x224x224", helper.make_node("Relu", ["x"], ["out"]), shape),
    ]:
        if args.filter not in name:
            continue
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(2):
            sess.run(None, {"x": x})
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"{name:32} {x.nbytes / med / 1e9:8.1f} GB/s (median of {args.reps})", flush=True)


if __name__ == "__main__":
    main()
