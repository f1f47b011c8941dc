#!/usr/bin/env bash
# Run HERE, on the development machine (no GPU needed): builds everything
# benches/device/run.sh runs on a lent GPU machine, into benches/device/kit/
# (git-ignored; the device tool carries it):
#   kit/bench            release `examples/bench`, stripped
#   kit/doctor           release `examples/doctor` (the self-test), stripped
#   kit/parity           the release parity test binary, stripped
#   kit/torch_compare.py PyTorch's side of the bench table
#   kit/gl/*.deb         the Vulkan loader (the GPU machine has NVIDIA's driver
#                        but may lack libvulkan.so.1), unpacked there by run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=benches/device/kit
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/wgpu-cnn-target}"
[ "$(uname -m)" = x86_64 ] || { echo "stage.sh: the GPU machine is x86-64; build there instead"; exit 1; }

rm -rf "$KIT"
mkdir -p "$KIT/gl"
echo "== building the release bench and parity binaries"
cargo build --release --example bench --example doctor
cp "$CARGO_TARGET_DIR/release/examples/bench" "$KIT/bench"
cp "$CARGO_TARGET_DIR/release/examples/doctor" "$KIT/doctor"
parity=$(cargo test --release --test parity --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "parity":
        print(m["executable"])' | tail -1)
[ -n "$parity" ] || { echo "stage.sh: cargo did not report the parity test binary"; exit 1; }
cp "$parity" "$KIT/parity"
strip "$KIT/bench" "$KIT/parity" "$KIT/doctor"
cp benches/torch_compare.py "$KIT/"

echo "== downloading the Vulkan loader package (amd64)"
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${apt_opts[@]}" update -qq
(cd "$KIT/gl" && apt-get "${apt_opts[@]}" download libvulkan1)

du -sh "$KIT"/*
echo "== staged. On the GPU machine (device tool): carry [\"$KIT\"], command \"bash benches/device/run.sh\""
