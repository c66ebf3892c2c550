#!/usr/bin/env bash
# The frozen VGGT once per scene, on the tiny experiment: VGGT aggregator forwards per epoch and
# the median step time with and without cached features (BENCHMARKS.md). Needs the main job's data
# (bash tools/demo.sh). Writes data/features/tiny/ and data/runs/features-{live,cached}-N.
#   ROOMPLAN_BIN=target/debug bash tools/bench/cache_features_tiny.sh   [STEPS=30 ROUNDS=2 THREADS=2]
# Both modes train with view dropout off (data.view_dropout=0), where cached features equal the
# live aggregator's (tests/train_features.rs); the rounds alternate live and cached.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${ROOMPLAN_BIN:-target/debug}
steps=${STEPS:-30}
rounds=${ROUNDS:-2}
threads=${THREADS:-2}
exp=data/features/tiny-cached.yaml
mkdir -p data/features
# experiments/tiny.yaml with `features: {path: data/features/tiny/<dataset>, digest: null}` on
# each dataset.
python3 - experiments/tiny.yaml "$exp" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def add(m):
    return m.group(0) + f"      features:\n        path: data/features/tiny/{m.group(1)}\n        digest: null\n"
text, n = re.subn(r"    - name: (\w+)\n(?:      .*\n)*?      eval_split: \w+\n", add, text)
assert n == 2, n
open(sys.argv[2], "w").write("# experiments/tiny.yaml with cached VGGT features (tools/bench/cache_features_tiny.sh)\n" + text)
PY
echo "==> tools cache-features (one aggregator forward per scene)"
start=$(date +%s.%N)
"$bin/tools" cache-features "$exp" --no-progress
end=$(date +%s.%N)
echo "caching took $(python3 -c "print(f'{$end - $start:.1f}')") s"
"$bin/tools" pin "$exp" > /dev/null
uptime
for round in $(seq "$rounds"); do
  for mode in live cached; do
    e=experiments/tiny.yaml; [ "$mode" = cached ] && e=$exp
    run=data/runs/features-$mode-$round
    rm -rf "$run"
    echo "==> round $round, VGGT $mode: $steps steps"
    "$bin/train" "$e" --run-dir "$run" --max-steps "$steps" --threads "$threads" --no-progress \
      --set eval.every=0 --set data.view_dropout=0 2>&1 | grep -E "VGGT|error" || true
  done
done
python3 - "$rounds" "$steps" <<'PY'
import json, statistics, sys
rounds, steps = int(sys.argv[1]), int(sys.argv[2])
out = {}
for mode in ("live", "cached"):
    secs, samples = [], None
    for r in range(1, rounds + 1):
        lines = [json.loads(l) for l in open(f"data/runs/features-{mode}-{r}/metrics.jsonl")]
        train = [l for l in lines if l["kind"] == "train"]
        secs += [l["seconds"] for l in train[2:]]  # the first steps warm caches
        samples = train[0]["samples"]
    out[mode] = statistics.median(secs)
    print(f"{mode:6}: median step {out[mode]:.4f} s over {len(secs)} steps ({samples} samples per step)")
print(f"cached / live step time: {out['cached'] / out['live']:.2f}")
PY
