#!/usr/bin/env bash
# Compiles the `cuda` feature (candle's CUDA kernels, the NCCL backend, `tools parity --device
# cuda`) on a machine without a GPU, so GPU code cannot rot unseen: nvcc from PyPI in a private
# venv (ci/cuda_env.sh), then `cargo check` (linking needs libcuda, so nothing is linked and nothing
# under `cuda` runs here). About 8 minutes on 2 cores; its own target folder (the cuda feature
# changes candle's features, so sharing target/ would rebuild the CPU artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
# Always PyPI's nvcc here: CI machines have no toolkit, and the pin keeps the check repeatable.
CUDA_FROM_PYPI=1
source ci/cuda_env.sh
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda-check}
echo "==> cargo check --features cuda (nvcc $(nvcc --version | tail -1))"
cargo check --locked -p roomplan-trainer -p roomplan-tools --features roomplan-trainer/cuda,roomplan-tools/cuda \
    --lib --bins --examples
