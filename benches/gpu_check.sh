#!/usr/bin/env bash
# One-command GPU check: adapter information, GFLOP/s of every convolution kernel and of the
# kernels chosen by measurement (f32 and f16) on the shapes of benches/ops.rs, the whole
# dilation10_cityscapes network at 1396x1396 in f32 and f16 with and without tuning, every
# output checked against the CPU and, where PyTorch with CUDA is importable, cuDNN on the same
# shapes (fp32 with TF32 off, and f16). Writes benches/gpu_check.json and benches/gpu_check.md
# (and copies them, with the log, into $OUT when it is set). A run that stops early still
# leaves what it measured; the exit status is 3 when an output disagrees with the CPU.
#
#   benches/gpu_check.sh            # full sizes (a real GPU)
#   benches/gpu_check.sh --small    # or DILATED_CHECK_SMALL=1: small sizes, no cuDNN
#                                   # (a couple of minutes on a software adapter)
#
# The last table holds the targets (the fp32 peak for two of them comes from cudnn_reference.py
# on NVIDIA, or from DILATED_FP32_PEAK_TFLOPS), each measured figure with its verdict.
#
# Nothing is built here: the binaries come from DILATED_BIN_DIR (default target/release),
# which holds `dilated` and `gpu_check` (`cargo build --release --bin dilated --example
# gpu_check`; the example lands in target/release/examples/).
set -euo pipefail
cd "$(dirname "$0")/.."

small=${DILATED_CHECK_SMALL:-0}
if [ "${1:-}" = "--small" ]; then small=1; fi
bin=${DILATED_BIN_DIR:-target/release}
check=$bin/gpu_check
[ -x "$check" ] || check=$bin/examples/gpu_check
for f in "$bin/dilated" "$check"; do
    [ -x "$f" ] || { echo "gpu_check.sh: $f is missing; build it first (see the header)" >&2; exit 2; }
done

json=benches/gpu_check.json
md=benches/gpu_check.md
log=benches/gpu_check.log
tmp=$(mktemp -d)
start=$(date +%s)

# Whatever was written, even by a run cut short, goes to $OUT, and to benches/ once something
# was measured (a run that measured nothing, such as one that found no adapter, leaves the
# files there alone).
finish() {
    status=$?
    measured=0
    if [ -f "$tmp"/gpu_check.json ]; then measured=1; fi
    for f in "$tmp"/gpu_check.json "$tmp"/gpu_check.md "$tmp"/gpu_check.log; do
        [ -f "$f" ] || continue
        if [ "$measured" = 1 ]; then cp "$f" benches/; fi
        if [ -n "${OUT:-}" ]; then cp "$f" "$OUT"/; fi
    done
    rm -rf "$tmp"
    if [ "$measured" = 1 ]; then
        echo "gpu_check.sh: exit status $status; wrote what exists of $json, $md, $log"
    else
        echo "gpu_check.sh: exit status $status; nothing measured, $json, $md, $log left as they were"
    fi
    exit "$status"
}
trap finish EXIT

# An NVIDIA machine may also offer OpenGL (EGL); the check is of Vulkan there unless
# WGPU_BACKEND says otherwise.
if [ -z "${WGPU_BACKEND:-}" ] && command -v nvidia-smi >/dev/null; then
    export WGPU_BACKEND=vulkan
fi

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
    "$bin/dilated" info
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv || true

    args=(--json "$tmp/gpu_check.json" --md "$tmp/gpu_check.md")
    if [ -n "${DILATED_FP32_PEAK_TFLOPS:-}" ]; then
        args+=(--fp32-peak-tflops "$DILATED_FP32_PEAK_TFLOPS")
    fi
    if [ "$small" = 1 ]; then
        args+=(--small)
        echo "small sizes: cuDNN skipped"
    elif python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        # cuDNN first: its figures are kept even if our check stops early.
        python3 benches/cudnn_reference.py --f16 --reps 20 --warmup 5 --json "$tmp/cudnn.json" \
            && args+=(--cudnn "$tmp/cudnn.json") || echo "cudnn_reference.py failed: cuDNN skipped"
    else
        echo "PyTorch with CUDA is not importable: cuDNN skipped"
    fi
    status=0
    "$check" "${args[@]}" || status=$?
    echo "gpu_check took $(( $(date +%s) - start )) s (exit status $status)"
    exit "$status"
} 2>&1 | tee "$tmp/gpu_check.log"
