#!/usr/bin/env bash
# The main job on the built-in default, end to end on CPU: synthetic scenes in the real raw
# formats → prep-scanqa, prep-sqa3d, prep-arkit → verified shards → the tiny experiment's generated
# models → `train tiny` → greedy predictions on the held-out split → `tools eval`, printed beside
# the majority-answer baseline, with charts and a report (`tools plot`).
#   bash tools/demo.sh
# Everything lands under data/ (raw/synth, shards/, models/tiny, runs/tiny-demo); the run directory
# is replaced on each call. experiments/tiny.yaml pins the digests these deterministic steps give.
# ROOMPLAN_BIN=DIR uses binaries built already; DEMO_THREADS=N sets the threads (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
raw=data/raw/synth
shards=data/shards
run=data/runs/tiny-demo
threads="${DEMO_THREADS:-2}"

if [ -n "${ROOMPLAN_BIN:-}" ]; then
  bin="$ROOMPLAN_BIN"   # binaries built already (CI)
else
  echo "==> building (dev profile: dependencies are optimised, see Cargo.toml)"
  bash ci/install_build_tools.sh
  cargo build --locked -p roomplan-synth -p roomplan-prep -p roomplan-tools -p roomplan-trainer --bins
  bin="$target/debug"
fi

echo "==> synth: 12 rooms × 24 frames into $raw"
rm -rf "$raw"
"$bin/synth" --out "$raw" --scenes 12 --frames 24

views=(--num-views 4 --image-width 112 --threads "$threads")
echo "==> prep-scanqa"
"$bin/prep-scanqa" --scannet "$raw/scannet" --scanqa "$raw/scanqa" --out "$shards/scanqa" --overwrite "${views[@]}"
echo "==> prep-sqa3d"
"$bin/prep-sqa3d" --scannet "$raw/scannet" --sqa3d "$raw/sqa3d" --out "$shards/sqa3d" --overwrite "${views[@]}"
echo "==> prep-arkit"
"$bin/prep-arkit" --arkitscenes "$raw/arkitscenes" --out "$shards/arkit" --overwrite "${views[@]}"
for d in scanqa sqa3d arkit; do
  "$bin/tools" shard verify "$shards/$d"
done

echo "==> the tiny experiment's models (weights from a seed, tokenizer trained on the shards' text)"
"$bin/train" make-tiny --out data/models/tiny --dataset "$shards/scanqa" --dataset "$shards/sqa3d"

echo "==> train tiny (every pin of experiments/tiny.yaml is verified first)"
rm -rf "$run"
"$bin/train" tiny --run-dir "$run" --threads "$threads"

echo "==> predictions on the held-out (val) split, scored by tools eval"
mkdir -p "$run/predictions" "$run/scores"
for d in scanqa sqa3d; do
  "$bin/train" predict --run-dir "$run" --dataset "$shards/$d" --split val \
    --out "$run/predictions/$d-val.jsonl" --threads "$threads" > "$run/scores/$d-val.summary.json"
  "$bin/tools" eval qa --dataset "$shards/$d" --predictions "$run/predictions/$d-val.jsonl" --split val \
    > "$run/scores/$d-val.json"
done
"$bin/tools" plot "$run" > /dev/null   # charts in $run/plots, $run/report.md
python3 - "$run" <<'PY'
import json, sys
run = sys.argv[1]
print(f"\n{'dataset':8} {'samples':>7} {'EM@1 %':>7} {'majority %':>10}  majority answer")
for d in ("scanqa", "sqa3d"):
    s = json.load(open(f"{run}/scores/{d}-val.summary.json"))
    print(f"{d:8} {s['samples']:7d} {s['metrics']['em1']:7.1f} {s['majority_em1']:10.1f}  {s['majority_answer']!r}")
print(f"\nfull scores: {run}/scores/, metrics: {run}/metrics.jsonl, report: {run}/report.md")
PY
