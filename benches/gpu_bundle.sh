#!/usr/bin/env bash
# Prepares benches/gpu_check.sh for a GPU machine that has a GPU driver but no Rust toolchain
# (and perhaps no network): builds the release `dilated` and `gpu_check` here into .gpu/ and,
# with --vulkan-loader, downloads Debian's Vulkan loader package (libvulkan1) into .gl/ for a
# machine whose driver is installed without the loader. Both folders are ignored by git.
#
#   benches/gpu_bundle.sh [--vulkan-loader]
#
# Then copy the repository, .gpu/ (and .gl/) included, to the GPU machine (x86-64 Linux with
# this machine's C library or a newer one) and run there, from the repository root:
#
#   for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig    # only with --vulkan-loader
#   DILATED_BIN_DIR=.gpu benches/gpu_check.sh
#
# With the NVIDIA driver in a container, point the loader at its manifest first, e.g.
# `export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json`; `.gpu/dilated
# info` shows whether the GPU is found. Before carrying the bundle, `DILATED_BIN_DIR=.gpu
# benches/gpu_check.sh --small` checks it here on whatever adapter this machine has.
set -euo pipefail
cd "$(dirname "$0")/.."

loader=0
case "${1:-}" in
    "") ;;
    --vulkan-loader) loader=1 ;;
    *) echo "usage: benches/gpu_bundle.sh [--vulkan-loader]" >&2; exit 2 ;;
esac

cargo build --release --bin dilated --example gpu_check
rm -rf .gpu.tmp
mkdir -p .gpu.tmp
cp target/release/dilated target/release/examples/gpu_check .gpu.tmp/
rm -rf .gpu
mv .gpu.tmp .gpu
echo "gpu_bundle.sh: .gpu/ holds $(cd .gpu && echo *) ($(du -sh .gpu | cut -f1))"

if [ "$loader" = 1 ]; then
    command -v apt-get >/dev/null || { echo "gpu_bundle.sh: --vulkan-loader needs apt-get" >&2; exit 1; }
    lists=$(mktemp -d)
    mkdir -p "$lists/partial"
    o=(-o APT::Architecture=amd64 -o APT::Architectures=amd64 -o "Dir::State::Lists=$lists"
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${o[@]}" -q update >/dev/null
    rm -rf .gl.tmp
    mkdir -p .gl.tmp
    (cd .gl.tmp && apt-get "${o[@]}" -q download libvulkan1 >/dev/null)
    rm -rf "$lists" .gl
    mv .gl.tmp .gl
    echo "gpu_bundle.sh: .gl/ holds $(cd .gl && echo *)"
fi
