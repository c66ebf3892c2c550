#!/usr/bin/env bash
# Compiles the `cuda` feature (candle's CUDA kernels, the NCCL backend) on a machine without a GPU,
# so GPU code cannot rot unseen: nvcc from PyPI in a private venv (STACK_NOTES: pin the three
# packages to one minor version), then `cargo check` (linking needs libcuda, so nothing is linked
# and nothing under `cuda` runs here). About 7 minutes on 2 cores; its own target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-target/cuda-venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> nvcc from PyPI into $VENV"
    python3 -m venv "$VENV"
    # cccl: cuda_fp16.h includes <nv/target> (CUDA 13); cccl pulls the newest runtime headers,
    # which must match nvcc
    "$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.2.*" "nvidia-nvvm==13.2.*" "nvidia-cuda-crt==13.2.*" \
        "nvidia-cuda-cccl==13.2.*" "nvidia-cuda-runtime==13.2.*"
fi
CUDA=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
export PATH="$CUDA/bin:$PATH" CUDA_ROOT="$CUDA" CUDA_PATH="$CUDA" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda-check}
echo "==> cargo check --features cuda (nvcc $(nvcc --version | tail -1))"
cargo check --locked -p roomplan-trainer --features cuda --lib --bins
