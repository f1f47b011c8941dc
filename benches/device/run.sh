#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, from the repository root, after
# benches/device/stage.sh has filled benches/device/kit/ here:
#   device run  carry ["benches/device/kit"]  command "bash benches/device/run.sh"
# It prints the adapter, runs the parity suite on it, then the bench (GEMM up
# to 4096³ and the LeNet-5, VGG-small and ResNet-20 training steps, with the
# host-side counters) and PyTorch's side on CUDA with TF32 off, writing
#   $OUT/adapter.txt  $OUT/doctor.txt  $OUT/doctor-webgpu.json  $OUT/parity.log  $OUT/bench.json  $OUT/torch.json  $OUT/run.json
# in about 5 minutes. `--quick` runs a small version; it also runs here against
# lavapipe: OUT=/tmp/kit-out bash benches/device/run.sh --quick
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=benches/device/kit
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
[ -x "$KIT/bench" ] && [ -x "$KIT/parity" ] && [ -x "$KIT/doctor" ] || { echo "run.sh: no kit in $KIT; run benches/device/stage.sh first"; exit 1; }

# The Vulkan loader, unless the machine has one; NVIDIA's ICD where the driver keeps it.
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    for f in "$KIT"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -e "$nv" ] && ! grep -qs nvidia /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; then
    export VK_DRIVER_FILES="$nv"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export WGPU_CNN_MNIST_DIR="$PWD/data/mnist"

status() { printf '"%s": %s' "$1" "$2"; }
started=$(date +%s)

echo "== adapter"
timeout 120 "$KIT/bench" --no-gemm --no-train 2>&1 | grep -m1 '^adapter' | tee "$OUT/adapter.txt"
adapter_rc=${PIPESTATUS[0]}

echo "== doctor: every kernel against the CPU path, under the adapter's and WebGPU's limits"
timeout 120 "$KIT/doctor" | tee "$OUT/doctor.txt"
doctor_rc=${PIPESTATUS[0]}
timeout 120 "$KIT/doctor" --limits webgpu --json > "$OUT/doctor-webgpu.json"
[ $? = 0 ] || doctor_rc=1

echo "== parity suite on this adapter"
timeout 300 "$KIT/parity" --test-threads 4 > "$OUT/parity.log" 2>&1
parity_rc=$?
grep -E '^GPU tests run on|^test result' "$OUT/parity.log"
grep -E '^test .* FAILED$' "$OUT/parity.log" | head -20

echo "== bench"
if [ $QUICK = 1 ]; then
    bench_args=(--json --seconds 0.2 --sizes 128 --models lenet5)
else
    bench_args=(--json --seconds 1 --sizes 256,1024,2048,4096 --models lenet5,vgg_small,resnet20)
fi
timeout 300 "$KIT/bench" "${bench_args[@]}" > "$OUT/bench.json" 2> "$OUT/bench.err"
bench_rc=$?
cat "$OUT/bench.json"

echo "== PyTorch, CUDA, TF32 off"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    if [ $QUICK = 1 ]; then torch_args=(--json --device cuda --seconds 0.2 --sizes 128); else torch_args=(--json --device cuda --seconds 1 --sizes 256,1024,2048,4096); fi
    timeout 240 python3 "$KIT/torch_compare.py" "${torch_args[@]}" > "$OUT/torch.json" 2>&1
    torch_rc=$?
    cat "$OUT/torch.json"
else
    echo "no PyTorch with CUDA here: skipped" | tee "$OUT/torch.json"
    torch_rc='"skipped"'
fi
rm -f "$OUT/bench.err"

elapsed=$(( $(date +%s) - started ))
{
    printf '{'
    status adapter_rc "$adapter_rc"; printf ', '
    status doctor_rc "$doctor_rc"; printf ', '
    status parity_rc "$parity_rc"; printf ', '
    status bench_rc "$bench_rc"; printf ', '
    status torch_rc "$torch_rc"; printf ', '
    status quick "$QUICK"; printf ', '
    status seconds "$elapsed"
    printf '}\n'
} | tee "$OUT/run.json"
[ "$adapter_rc" = 0 ] && [ "$doctor_rc" = 0 ] && [ "$parity_rc" = 0 ] && [ "$bench_rc" = 0 ] && { [ "$torch_rc" = 0 ] || [ "$torch_rc" = '"skipped"' ]; }
