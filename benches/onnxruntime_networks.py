#!/usr/bin/env python3
"""ONNX Runtime reference timings of whole networks, for `dilated bench --cpu`.

Builds dilation8_pascal_voc or dilation10_cityscapes at full width as one ONNX graph (the
layers `dilated bench --plan-only` lists, with the same GFLOP count: the VGG-16 front-end with
unpadded convolutions, ceil-mode pooling, conv5 at dilation 2 and fc6 at dilation 4, the
context module, and for Cityscapes the grouped bilinear deconvolution; softmax last), with
random weights as initializers and the image as a graph input, and times it on ONNX Runtime's
CPU provider with `intra_op_num_threads` threads: median wall-clock seconds per forward pass
over --runs passes after one warm-up pass, and GFLOP (multiply-add = 2, convolutions only,
the count `dilated bench` prints) per second.

    pip install onnxruntime onnx numpy
    python3 benches/onnxruntime_networks.py --model dilation8_pascal_voc [--threads 2] [--runs 3]
    # the same network on our CPU path:
    RAYON_NUM_THREADS=2 dilated bench --model dilation8_pascal_voc --cpu --runs 3
"""

import argparse
import math
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FRONT_END = [
    # name, out channels, kernel, dilation, pool after
    ("conv1_1", 64, 3, 1, False),
    ("conv1_2", 64, 3, 1, True),
    ("conv2_1", 128, 3, 1, False),
    ("conv2_2", 128, 3, 1, True),
    ("conv3_1", 256, 3, 1, False),
    ("conv3_2", 256, 3, 1, False),
    ("conv3_3", 256, 3, 1, True),
    ("conv4_1", 512, 3, 1, False),
    ("conv4_2", 512, 3, 1, False),
    ("conv4_3", 512, 3, 1, False),
    ("conv5_1", 512, 3, 2, False),
    ("conv5_2", 512, 3, 2, False),
    ("conv5_3", 512, 3, 2, False),
    ("fc6", 4096, 7, 4, False),
    ("fc7", 4096, 1, 1, False),
]


def layers(model):
    """[(kind, name, params)] in order; conv params (out, k, dilation, pad, relu)."""
    out = []
    for name, c, k, d, pool in FRONT_END:
        out.append(("conv", name, (c, k, d, 0, True)))
        if pool:
            out.append(("pool", name.replace("conv", "pool")[:5], None))
    if model == "dilation8_pascal_voc":
        c = 21
        out.append(("conv", "fc-final", (c, 1, 1, 0, False)))
        chans = [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c]
        dil = [1, 1, 2, 4, 8, 16]
        names = ["ct_conv1_1", "ct_conv1_2", "ct_conv2_1", "ct_conv3_1", "ct_conv4_1", "ct_conv5_1"]
        for i, (n, ch, d) in enumerate(zip(names, chans, dil)):
            # The VOC release pads the first layer by 33 and the others by 0.
            out.append(("conv", n, (ch, 3, d, 33 if i == 0 else 0, True)))
        out.append(("conv", "ct_fc1", (32 * c, 3, 1, 0, True)))
        out.append(("conv", "ct_final", (c, 1, 1, 0, False)))
    elif model == "dilation10_cityscapes":
        c = 19
        out.append(("conv", "final", (c, 1, 1, 0, False)))
        dil = [1, 1, 2, 4, 8, 16, 32, 64]
        names = ["ctx_conv1_1", "ctx_conv1_2", "ctx_conv2_1", "ctx_conv3_1", "ctx_conv4_1",
                 "ctx_conv5_1", "ctx_conv6_1", "ctx_conv7_1"]
        for n, d in zip(names, dil):
            out.append(("conv", n, (c, 3, d, d, True)))
        out.append(("conv", "ctx_fc1", (c, 3, 1, 1, True)))
        out.append(("conv", "ctx_final", (c, 1, 1, 0, False)))
        out.append(("deconv", "ctx_upsample", (c, 16, 8, 4)))
    else:
        raise SystemExit(f"unknown model {model}")
    out.append(("softmax", "prob", None))
    return out


def bilinear_kernel(k):
    """Caffe's bilinear filler for a k x k upsampling kernel."""
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    x = np.arange(k)
    w = 1 - np.abs(x / f - c)
    return np.outer(w, w).astype(np.float32)


def build(model, h, w, rng):
    nodes, inits = [], []
    cur, c_in = "image", 3
    flops = 0
    for kind, name, p in layers(model):
        out = name
        if kind == "conv":
            c_out, k, d, pad, relu = p
            scale = 1.0 / math.sqrt(c_in * k * k)
            inits.append(numpy_helper.from_array(
                rng.uniform(-scale, scale, (c_out, c_in, k, k)).astype(np.float32), name + "_w"))
            inits.append(numpy_helper.from_array(
                rng.uniform(-0.1, 0.1, c_out).astype(np.float32), name + "_b"))
            conv_out = name + "_conv" if relu else out
            nodes.append(helper.make_node(
                "Conv", [cur, name + "_w", name + "_b"], [conv_out], kernel_shape=[k, k],
                dilations=[d, d], pads=[pad] * 4, strides=[1, 1]))
            if relu:
                nodes.append(helper.make_node("Relu", [conv_out], [out]))
            ext = d * (k - 1)
            h, w = h + 2 * pad - ext, w + 2 * pad - ext
            flops += 2 * c_out * c_in * k * k * h * w
            c_in = c_out
        elif kind == "pool":
            nodes.append(helper.make_node(
                "MaxPool", [cur], [out], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1))
            h, w = math.ceil((h - 2) / 2) + 1, math.ceil((w - 2) / 2) + 1
        elif kind == "deconv":
            c, k, s, pad = p
            wk = np.broadcast_to(bilinear_kernel(k), (c, 1, k, k)).copy()
            inits.append(numpy_helper.from_array(wk, name + "_w"))
            nodes.append(helper.make_node(
                "ConvTranspose", [cur, name + "_w"], [out], kernel_shape=[k, k],
                strides=[s, s], pads=[pad] * 4, group=c))
            h, w = (h - 1) * s - 2 * pad + k, (w - 1) * s - 2 * pad + k
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [cur], [out], axis=1))
        cur = out
    graph = helper.make_graph(
        nodes, model,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, None, None])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return m, flops, (c_in, h, w)


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dilation8_pascal_voc")
    ap.add_argument("--size", type=int, default=None, help="input height and width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = args.size or {"dilation8_pascal_voc": 900, "dilation10_cityscapes": 1396}[args.model]
    rng = np.random.default_rng(0)
    model, flops, out_shape = build(args.model, size, size, rng)
    # Weights over 2 GB need the external-data format; keep them in memory instead by
    # serialising with the initializers inline (fc6 alone is 411 MB, the whole model ~560 MB).
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    y = sess.run(None, {"image": x})[0]
    assert y.shape[1:] == out_shape, (y.shape, out_shape)
    times = []
    c0 = cpu_seconds()
    for _ in range(args.runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    cpu = cpu_seconds() - c0
    med = statistics.median(times)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads: {args.model} at {size}x{size}, "
          f"output {list(y.shape)}, {flops / 1e9:.1f} GFLOP")
    print(f"median {med:.3f} s, best {min(times):.3f} s over {len(times)} runs; "
          f"{flops / 1e9 / med:.1f} GFLOP/s; {flops * len(times) / 1e9 / cpu:.1f} GFLOP per CPU-s")


if __name__ == "__main__":
    main()
