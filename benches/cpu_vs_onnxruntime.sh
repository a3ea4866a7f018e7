#!/usr/bin/env bash
# The fast CPU path against ONNX Runtime, both with the same threads, shape by shape and on
# whole networks, interleaved in one run: per shape the automatic f32 choice, the direct
# method, the bf16 direct method (where the CPU has AVX-512 BF16) and ONNX Runtime; then each
# whole network at f32, at bf16 and on ONNX Runtime; last, bf16's agreement with f32 on every
# preset (`dilated bench --cpu --compare-precision --model all`; ACCURACY= skips it). Prints everything; the tables in
# `CPU_RESULTS.md` are read off its output (`cpu_vs_onnxruntime.log`).
#
#   benches/cpu_vs_onnxruntime.sh [PYTHON]     # PYTHON: one with onnxruntime, onnx and numpy
#
# e.g. python3 -m venv ortvenv && ortvenv/bin/pip install onnxruntime onnx numpy, then
# benches/cpu_vs_onnxruntime.sh ortvenv/bin/python. Set THREADS (default 2), SECS (seconds per
# shape and method, default 3), NETWORK_RUNS (default 3), SHAPES and MODELS to narrow it.
# Run it on a quiet machine: nothing else building or measuring.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
THREADS=${THREADS:-2}
SECS=${SECS:-3}
NETWORK_RUNS=${NETWORK_RUNS:-3}
SHAPES=${SHAPES-"conv3x3_256_64x64_d1 conv3x3_256_64x64_d2 conv3x3_256_64x64_d4 conv3x3_256_64x64_d8
conv3x3_256_64x64_d16 conv1x1_1024_64x64 fc6_7x7_d4_512to1024_32x32 context_large_c21_66x66
context_basic_c21_66x66 context_basic_c19_128x128"}
MODELS=${MODELS-"dilation8_pascal_voc dilation10_cityscapes"}
export RAYON_NUM_THREADS=$THREADS

cargo build --release --quiet
bench=$(cargo bench --bench cpu --no-run --message-format=json 2>/dev/null |
    "$PY" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cpu" and m.get("executable"):
        print(m["executable"])')
info=$(target/release/dilated info 2>/dev/null || true)
bf16=
case "$info" in *"AVX-512 BF16 yes"*) bf16=1 ;; esac

date -u
lscpu | grep -E "Model name|^CPU\(s\)|L2 cache|L3 cache"
echo "${info%%$'\n'*}"
"$PY" -c 'import onnxruntime; print("onnxruntime", onnxruntime.__version__)'
echo "columns (ours): shape GFLOP best median GFLOP/s-per-CPU-second runs method"
echo "columns (ONNX Runtime): shape GFLOP best-ms median-GFLOP/s best-GFLOP/s GFLOP/s-per-CPU-second"
for shape in $SHAPES; do
    echo "== $shape"
    CPU_BENCH_TABLE=1 CPU_BENCH_SECS=$SECS "$bench" "$shape" | grep "^$shape "
    CPU_BENCH_METHOD=direct CPU_BENCH_TABLE=1 CPU_BENCH_SECS=$SECS "$bench" "$shape" | grep "^$shape "
    if [ -n "$bf16" ]; then
        CPU_BENCH_METHOD=direct-bf16 CPU_BENCH_TABLE=1 CPU_BENCH_SECS=$SECS "$bench" "$shape" |
            grep "^$shape "
    fi
    "$PY" benches/onnxruntime_reference.py --threads "$THREADS" --reps 10 --filter "$shape" |
        grep "^$shape "
done
for model in $MODELS; do
    echo "== whole $model, f32"
    target/release/dilated bench --model "$model" --cpu --runs "$NETWORK_RUNS"
    if [ -n "$bf16" ]; then
        echo "== whole $model, bf16"
        target/release/dilated bench --model "$model" --cpu --runs "$NETWORK_RUNS" \
            --cpu-precision bf16
    fi
    echo "== whole $model, ONNX Runtime"
    "$PY" benches/onnxruntime_networks.py --model "$model" --threads "$THREADS" \
        --runs "$NETWORK_RUNS"
done
if [ -n "$bf16" ] && [ -n "${ACCURACY-1}" ]; then
    echo "== bf16 against f32, every preset at full width and its deploy size"
    target/release/dilated bench --cpu --compare-precision --model all --runs 1
fi
date -u
