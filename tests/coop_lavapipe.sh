#!/usr/bin/env bash
# Runs the cooperative-matrix convolution tests (tests/gpu_coop.rs) on a lavapipe that offers
# cooperative matrices. Debian 12's Mesa (22.3) and its backports' (25.0) have none; Mesa 26
# from Debian unstable offers 8x8x8 f16 matrices. This unpacks that Mesa and its dependencies
# (about 40 packages, 70 MB, resolved by apt-get from deb.debian.org) under
# target/mesa-coop, installs nothing, and runs the test binary with that tree's dynamic loader
# and libraries, with DILATED_TEST_COOP=1 so a test that finds no cooperative matrices fails;
# then twice more with fewer working subgroups (DILATED_COOP_MAX_SUBGROUPS), the path of wide
# subgroups.
#
#   tests/coop_lavapipe.sh          # x86-64 Debian or Ubuntu with apt-get, dpkg and the network
#
# Where the packages cannot be fetched (no network, no apt-get, another architecture) it says
# so and exits 0 without testing: the suite itself (`cargo test --release`) does not depend on
# it, and runs the same tests as skipped where the adapter has no cooperative matrices.
set -euo pipefail
cd "$(dirname "$0")/.."

root=$PWD/target/mesa-coop
lib=$root/usr/lib/x86_64-linux-gnu
icd=$root/lvp_icd.json

skip() {
    echo "coop_lavapipe.sh: SKIPPED (cooperative-matrix kernels not tested): $*" >&2
    exit 0
}

fetch() {
    command -v apt-get >/dev/null && command -v dpkg >/dev/null || skip "needs apt-get and dpkg"
    [ "$(dpkg --print-architecture)" = amd64 ] || skip "x86-64 only"
    rm -rf "$root"
    mkdir -p "$root/apt/lists/partial" "$root/debs"
    echo "deb http://deb.debian.org/debian sid main" > "$root/apt/sources.list"
    local o=(-o "Dir::Etc::SourceList=$root/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$root/apt/lists" -o "Dir::Cache=$root/apt"
        -o APT::Architecture=amd64 -o APT::Architectures=amd64
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${o[@]}" -q update >/dev/null || skip "apt-get update of Debian unstable failed"
    local packages
    packages=$(apt-cache "${o[@]}" depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends \
        mesa-vulkan-drivers | grep '^[a-z0-9]' | sort -u)
    (cd "$root/debs" && apt-get "${o[@]}" -q download $packages >/dev/null) \
        || skip "downloading Mesa from Debian unstable failed"
    for deb in "$root"/debs/*.deb; do dpkg -x "$deb" "$root"; done
    [ -x "$lib/ld-linux-x86-64.so.2" ] && [ -f "$lib/libvulkan_lvp.so" ] \
        || skip "the unpacked packages hold no loader or lavapipe"
    sed "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$lib/libvulkan_lvp.so\"|" \
        "$root/usr/share/vulkan/icd.d/lvp_icd.json" > "$icd"
}

[ -f "$icd" ] || fetch
# Debian unstable moves on: where the unpacked libraries no longer load together, that is a
# setup problem to report, not a failure of the kernels.
deps=$("$lib/ld-linux-x86-64.so.2" --library-path "$lib" --list "$lib/libvulkan_lvp.so" 2>&1) \
    || skip "the unpacked lavapipe's libraries do not load: $deps"
if grep -q 'not found' <<< "$deps"; then
    skip "the unpacked lavapipe's libraries do not load: $(grep 'not found' <<< "$deps")"
fi
echo "coop_lavapipe.sh: lavapipe from $(cd "$root/debs" && ls mesa-vulkan-drivers_*.deb)"

bin=$(cargo test --release --test gpu_coop --no-run 2>&1 \
    | sed -n 's|.*(\(target/release/deps/gpu_coop-[0-9a-f]*\)).*|\1|p' | tail -1)
[ -x "$bin" ] || { echo "coop_lavapipe.sh: could not build tests/gpu_coop.rs" >&2; exit 1; }
"$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$bin" --list >/dev/null 2>&1 \
    || skip "the test binary does not start with the unpacked C library"

run() {
    VK_DRIVER_FILES=$icd WGPU_BACKEND=vulkan DILATED_TEST_ADAPTER=llvmpipe DILATED_TEST_COOP=1 \
        "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$bin" "$@"
}
run "$@"
# Lavapipe's subgroups have 8 invocations: 16 per workgroup, more than the four groups of
# blocks. Capping the working subgroups at 1 and 3 runs what devices with subgroups of 64 or
# 128 run instead: 4 rounds, and 2 rounds of which the second has groups past the last.
for cap in 1 3; do
    echo "coop_lavapipe.sh: again with DILATED_COOP_MAX_SUBGROUPS=$cap"
    DILATED_COOP_MAX_SUBGROUPS=$cap run "$@"
done
