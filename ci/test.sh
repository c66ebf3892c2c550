#!/usr/bin/env bash
# The project's test command (README, .ci/run): Rust tests (unit, golden snapshots, property tests,
# parity against ../shared/parity), the parity tool on the shared fixtures, an end-to-end run
# synth → prep-* → tools shard verify read back by pyarrow and scored by tools eval, the main job
# (tools/demo.sh: through training, prediction and scoring), a `cargo check` of the cuda feature, and the
# flake evaluation.
# Runs on a clean clone with ../shared beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
export INSTA_UPDATE=no CARGO_TERM_COLOR=never
# tools eval qa's METEOR must be compared with pycocoevalcap (tools/cli/tests/eval_references.rs).
export ROOMPLAN_REQUIRE_METEOR=1
export ROOMPLAN_SHARED="${ROOMPLAN_SHARED:-$(cd .. && pwd)/shared}"
[ -d "$ROOMPLAN_SHARED/parity" ] || { echo "error: shared fixtures not found at $ROOMPLAN_SHARED (set ROOMPLAN_SHARED)"; exit 2; }

step() { echo; echo "==> $*"; }

step "install test tools"
bash ci/install.sh

# The suite in two halves (ci/shared_tests.json, ci/test_selection.py), each test run once: the first is
# exactly what the flake's Nix check runs, and runs with ROOMPLAN_SHARED at a missing folder, which
# proves those tests need no ../shared.
step "cargo test: all but the tests that read ../shared (the flake's Nix check), without ../shared"
python3 ci/test_selection.py run-without-shared

step "cargo test: the tests that read ../shared (CI only), and the doc tests"
python3 ci/test_selection.py run-shared

step "binaries"
# --tests keeps the feature set of the test build above, so the binaries are not compiled a second time;
# --examples: the test runs above select their targets, so they no longer compile the examples.
cargo build --locked --workspace --bins --tests --examples
bin="${CARGO_TARGET_DIR:-target}/debug"

step "the GPU benchmark's timing program (ci/gpu.sh) on a tiny shape with bf16 frozen weights on the CPU"
"$bin/examples/qwen3_lora_bench" --config tools/bench/qwen3_tiny_shape.json --batch 1 --seq 32 --steps 1 --warmup 0 \
  --frozen-dtype bf16 --peak-tflops 1 --json | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
# The FLOPs formula, worked by hand for this shape (tools/bench/bench_qwen3_lora_gpu.py computes the same).
assert abs(r["model_tflop_per_step"] - 1.5204352e-05) < 1e-15, r
assert r["frozen_dtype"] == "BF16" and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1, r
print(r)'

step "tools parity on the shared fixtures"
# The Qwen3 bf16 checks against PyTorch's own bf16 run of the fixture (tools/parity/qwen3_bf16.py).
"$bin/tools" parity "$ROOMPLAN_SHARED/parity/qwen3" --bf16-reference trainer/tests/fixtures/qwen3_bf16
for fixture in vggt/conv vggt/dinov2; do
  "$bin/tools" parity "$ROOMPLAN_SHARED/parity/$fixture"
done

step "end to end: synth (with faults) → prep-scanqa, prep-sqa3d, prep-arkit → verify → pyarrow → tools eval → Parquet export read by pyarrow and duckdb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/synth" --out "$work/raw" --scenes 3 --frames 16 --faults --scannet-format both
"$bin/prep-scanqa" --scannet "$work/raw/scannet" --scanqa "$work/raw/scanqa" --out "$work/shards/scanqa"
"$bin/prep-sqa3d" --scannet "$work/raw/scannet" --sqa3d "$work/raw/sqa3d" --bev --out "$work/shards/sqa3d"
"$bin/prep-arkit" --arkitscenes "$work/raw/arkitscenes" --out "$work/shards/arkit"
for d in scanqa sqa3d arkit; do
  "$bin/tools" shard verify "$work/shards/$d"
  [ -s "$work/shards/$d/rejects.jsonl" ] || { echo "error: $d: the injected faults produced no rejects"; exit 1; }
done
if "$bin/prep-scanqa" --scannet "$work/raw/scannet" --scanqa "$work/raw/scanqa" --out "$work/shards/strict" --strict; then
  echo "error: prep-scanqa --strict exited 0 on a set with faults"; exit 1
fi
python3 ci/pyarrow_check.py "$work/shards/scanqa" "$work/shards/sqa3d" "$work/shards/arkit"
python3 ci/oracle_eval.py "$bin/tools" "$work/shards/scanqa" "$work/shards/sqa3d" "$work/shards/arkit"
for d in scanqa sqa3d arkit; do
  "$bin/tools" shard export --format parquet "$work/shards/$d" "$work/parquet/$d" > /dev/null
done
python3 ci/parquet_check.py "$work/shards/scanqa" "$work/parquet/scanqa" "$work/shards/sqa3d" "$work/parquet/sqa3d" \
  "$work/shards/arkit" "$work/parquet/arkit"

step "the main job: tools/demo.sh (synth → prep → train tiny, its pins verified → predict → tools eval)"
ROOMPLAN_BIN="$bin" bash tools/demo.sh

step "the cuda feature compiles (ci/cuda_check.sh: nvcc from PyPI, cargo check into target/cuda-check; nothing under cuda runs)"
# Its own target folder: the cuda feature changes candle's features, so sharing target/ would rebuild
# the CPU artifacts above on the next run; check-only artifacts are small (no codegen, no linking).
bash ci/cuda_check.sh

step "flake evaluation"
bash ci/flake_check.sh
