#!/usr/bin/env bash
# Builds the web page (web/pkg: the crate compiled to WebAssembly with its wasm-bindgen glue)
# and tests it in headless Chromium on WebGPU (SwiftShader where there is no GPU): the
# kernels and a width-reduced network (whole, and in bands within a memory budget) against
# the CPU reference, bad weights, and the page end to end against the native
# `dilated segment`. Installs what it needs when missing: the
# wasm32 target, wasm-bindgen-cli at web/Cargo.lock's version, and (as root, with apt)
# chromium and chromium-driver. Exits non-zero on any failure.
#
#     web/test.sh [--screenshot docs/web-page.png]
set -euo pipefail
cd "$(dirname "$0")/.."

screenshot=()
if [ "${1:-}" = --screenshot ] && [ -n "${2:-}" ]; then
    screenshot=(--screenshot "$2")
fi
fail() { echo "web/test.sh: $*" >&2; exit 1; }
step() { echo "== $*"; }

# The fixture: CamVid's topology with widths / 32, tiles of 500 pixels (a 128-pixel core),
# a generated 256x192 scene: four tiles.
model=dilation8_camvid
divisor=32
tile=500
fixtures=web/fixtures
mkdir -p "$fixtures"

step "tools"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown || fail "cannot add the wasm32-unknown-unknown target"
fi
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' web/Cargo.lock)
[ -n "$version" ] || fail "no wasm-bindgen version in web/Cargo.lock"
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
    cargo install wasm-bindgen-cli --version "$version" || fail "cannot install wasm-bindgen-cli $version"
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
            || fail "cannot install chromium and chromium-driver"
    else
        fail "needs chromium and chromium-driver (as root: apt-get install chromium chromium-driver)"
    fi
fi

step "WebAssembly package (web/pkg)"
cargo build --release --target wasm32-unknown-unknown --manifest-path web/Cargo.toml \
    --target-dir target || fail "the WebAssembly build failed"
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
    target/wasm32-unknown-unknown/release/dilated_web.wasm || fail "wasm-bindgen failed"

step "native fixtures (web/fixtures)"
cargo build --release --bin dilated --example synthetic_image --example random_weights \
    || fail "the native build failed"
target/release/examples/synthetic_image "$fixtures/scene.png" 256x192
target/release/examples/random_weights "$fixtures/weights.safetensors" "$model" "$divisor" 7
printf 'not a safetensors file\n' >"$fixtures/bad.safetensors"
target/release/dilated convert "$fixtures/weights.safetensors" "$fixtures/weights.caffemodel" \
    --model "$model" --width-divisor "$divisor" || fail "converting the weights to .caffemodel failed"
target/release/dilated segment "$fixtures/scene.png" -o "$fixtures/native-labels.png" \
    --model "$model" --width-divisor "$divisor" --weights "$fixtures/weights.safetensors" \
    --tile "${tile}x${tile}" --cpu || fail "native dilated segment failed"

step "browser tests (headless Chromium, WebGPU)"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory web >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/index.html')" \
        2>/dev/null && break
    sleep 0.1
done
python3 web/browser_test.py --url "http://127.0.0.1:$port/index.html" \
    --image "$fixtures/scene.png" --weights "$fixtures/weights.safetensors" \
    --caffemodel "$fixtures/weights.caffemodel" \
    --bad-weights "$fixtures/bad.safetensors" --native-labels "$fixtures/native-labels.png" \
    --model "$model" --divisor "$divisor" --tile "$tile" "${screenshot[@]}" \
    || fail "browser tests failed"
echo "web/test.sh: all browser tests passed"
