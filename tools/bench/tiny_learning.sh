#!/usr/bin/env bash
# Does the tiny experiment learn from the scenes? Trains `tiny` twice with the same seed — as
# shipped, and with every view blanked to mid grey (data.blank_views=true, geometry kept) — then
# predicts the held-out val split of ScanQA and SQA3D with each and prints EM@1 beside the
# majority-answer baseline. Needs the demo's data (bash tools/demo.sh) and built binaries.
#   bash tools/bench/tiny_learning.sh [BIN_DIR] [extra train args, e.g. --set train.epochs=20]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-${CARGO_TARGET_DIR:-target}/debug}"
shift || true
out=data/runs/learning
rm -rf "$out"
for variant in views blank; do
  extra=()
  [ "$variant" = blank ] && extra=(--set data.blank_views=true)
  start=$(date +%s.%N)
  "$bin/train" tiny --run-dir "$out/$variant" --threads 2 --no-progress "${extra[@]}" "$@"
  echo "$variant: trained in $(echo "$(date +%s.%N) - $start" | bc) s"
  for d in scanqa sqa3d; do
    "$bin/train" predict --run-dir "$out/$variant" --dataset "data/shards/$d" --split val \
      --out "$out/$variant/predictions/$d-val.jsonl" --threads 2 --no-progress > "$out/$variant/$d-val.summary.json"
  done
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'dataset':8} {'samples':>7} {'views EM@1':>10} {'blank EM@1':>10} {'majority':>8}")
for d in ("scanqa", "sqa3d"):
    v = json.load(open(f"{out}/views/{d}-val.summary.json"))
    b = json.load(open(f"{out}/blank/{d}-val.summary.json"))
    print(f"{d:8} {v['samples']:7d} {v['metrics']['em1']:10.1f} {b['metrics']['em1']:10.1f} {v['majority_em1']:8.1f}")
PY
