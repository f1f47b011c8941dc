#!/usr/bin/env bash
# The test command: makes sure a Vulkan driver is present (installs Mesa's
# lavapipe, a CPU implementation of Vulkan, on Debian/Ubuntu when none is),
# then runs every test. GPU tests run for real on whatever adapter is found;
# they never skip silently (set WGPU_CNN_SKIP_GPU_TESTS=1 to skip them loudly).
set -euo pipefail
cd "$(dirname "$0")/.."

# A Vulkan driver manifest in either standard place, and the loader.
has_vulkan() {
    local icd=no d
    for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d; do
        compgen -G "$d/*.json" >/dev/null && icd=yes
    done
    [ "$icd" = yes ] && { ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; }
}

if [ -z "${WGPU_CNN_SKIP_GPU_TESTS:-}" ] && [ "$(uname -s)" = Linux ] && ! has_vulkan; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "== no Vulkan driver: installing lavapipe (mesa-vulkan-drivers) and the Vulkan loader"
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then
            command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to apt-get install mesa-vulkan-drivers libvulkan1"; exit 1; }
            SUDO="sudo"
        fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        echo "no Vulkan driver found and no apt-get: install your distribution's Mesa Vulkan drivers"
        echo "(lavapipe) and Vulkan loader, or set WGPU_CNN_SKIP_GPU_TESTS=1 to skip the GPU tests"
        exit 1
    fi
fi

# spirv-val checks the SPIR-V every kernel translates to (tests/shaders.rs);
# without it the SPIR-V is still written, but not validated.
if ! command -v spirv-val >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
        echo "== installing spirv-tools (spirv-val) for the shader translation test"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq spirv-tools >/dev/null
    fi
fi

# The Vulkan loader only prints noise without it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --all-targets
cargo test --doc
# The whole parity suite again under WebGPU's default limits (8 storage
# buffers a stage, 128 MiB a binding, 256 MiB a buffer): every kernel must
# fit them or fall back, and give the same results.
if [ -z "${WGPU_CNN_SKIP_GPU_TESTS:-}" ]; then
    echo "== the parity suite under WGPU_CNN_LIMITS=webgpu"
    WGPU_CNN_LIMITS=webgpu cargo test --test parity
    # The self-test users run on their own GPU: exits non-zero unless every check agrees.
    cargo run --example doctor
    cargo run --example doctor -- --limits webgpu --json
fi

# Data parallelism across processes (the `mpi` feature) needs Open MPI and
# libclang (for the MPI bindings): installed with apt-get where it can be,
# then `mpirun -np 2` runs the equality test. WGPU_CNN_SKIP_MPI_TESTS=1 skips it, loudly.
if [ -n "${WGPU_CNN_SKIP_MPI_TESTS:-}" ]; then
    echo "== SKIPPED the MPI test: WGPU_CNN_SKIP_MPI_TESTS is set"
    exit 0
fi
if ! command -v mpirun >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libclang; then
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
        echo "== installing Open MPI and libclang for the MPI test"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev libclang-dev >/dev/null
    else
        echo "the MPI test needs Open MPI (mpirun, libopenmpi-dev) and libclang; install them or set WGPU_CNN_SKIP_MPI_TESTS=1"
        exit 1
    fi
fi
cargo test --features mpi --test parity parallel::mpi
