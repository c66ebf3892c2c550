#!/usr/bin/env bash
# Frozen bf16 weights on the CPU: the bf16-weight kernel (trainer/src/model/bf16_linear.rs) against
# candle's bf16 matmul with casts (the path before it), side by side in one run (issue 12).
#
#   tools/bench/bf16_linear_speed.sh [--rounds N] [--layers N|full] [--seqs "128 512"] [--no-build]
#
# Builds the release examples, then N alternating rounds (cast, kernel; one process per
# measurement, so the peak RSS is per run; the load printed before each round) of
#   - KV-cache decoding at the Qwen3-4B-Instruct-2507 shape (trainer/examples/qwen3_decode_bench.rs:
#     random bf16 weights, 16-token prompt, 4 timed tokens): the whole model (36 layers, vocabulary
#     151,936) with --layers full, else that many layers with the full vocabulary;
#   - the LoRA train step (forward + backward + AdamW; r16 on q/k/v/o) of one 4B-shaped decoder layer
#     with bf16 frozen weights (tools/bench/qwen3_4b_layer.json, vocabulary cut to 4096), batch 1,
#     for each T in --seqs (trainer/examples/qwen3_lora_bench.rs --frozen-dtype bf16 [--bf16-cast]).
# At the end, per measurement: the median over rounds of each mode's figure and the ratio.
# Defaults: 2 rounds, --layers full when MemAvailable >= 16 GiB (else 4), --seqs "128 512".
# Threads: RAYON_NUM_THREADS as set (default: all cores). LOG_DIR (default a fresh temporary
# folder) keeps every run's output. About 6-8 minutes after the build on a quiet 2-core machine.
set -euo pipefail

ROUNDS=2
LAYERS=""
SEQS="128 512"
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --layers) LAYERS="$2"; shift 2 ;;
    --seqs) SEQS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$REPO"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/bf16_linear_speed.XXXXXX)}"
mkdir -p "$LOG_DIR"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
if [[ -z "$LAYERS" ]]; then
  avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  if (( avail_kib >= 16 * 1024 * 1024 )); then LAYERS=full; else LAYERS=4; fi
fi
LAYER_ARGS=()
[[ "$LAYERS" == full ]] || LAYER_ARGS=(--layers "$LAYERS")

if [[ $BUILD == 1 ]]; then
  echo "== building the release examples (cargo build --release)"
  cargo build --release -p roomplan-trainer --example qwen3_decode_bench --example qwen3_lora_bench
fi
DECODE_BIN="$TARGET/release/examples/qwen3_decode_bench"
STEP_BIN="$TARGET/release/examples/qwen3_lora_bench"
for b in "$DECODE_BIN" "$STEP_BIN"; do
  [[ -x "$b" ]] || { echo "missing $b (run without --no-build)" >&2; exit 1; }
done

echo "== logs in $LOG_DIR; $(nproc) CPUs, RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset}; decode with layers: $LAYERS"
START=$(date +%s)
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS, $(uptime | sed 's/.*load/load/'), $(( $(date +%s) - START )) s elapsed"
  for mode in cast kernel; do
    flag=(); [[ $mode == cast ]] && flag=(--cast)
    "$DECODE_BIN" "${flag[@]}" "${LAYER_ARGS[@]}" --prompt 16 --tokens 4 > "$LOG_DIR/decode_${mode}_r${r}.log" 2>&1
    tail -1 "$LOG_DIR/decode_${mode}_r${r}.log"
  done
  for t in $SEQS; do
    for mode in cast kernel; do
      flag=(); [[ $mode == cast ]] && flag=(--bf16-cast)
      "$STEP_BIN" "${flag[@]}" --config tools/bench/qwen3_4b_layer.json --frozen-dtype bf16 --batch 1 --seq "$t" \
        --rank 16 --steps 2 --warmup 1 > "$LOG_DIR/step_T${t}_${mode}_r${r}.log" 2>&1
      tail -1 "$LOG_DIR/step_T${t}_${mode}_r${r}.log"
    done
  done
done
echo "== done in $(( $(date +%s) - START )) s, $(uptime | sed 's/.*load/load/')"

python3 - "$LOG_DIR" "$ROUNDS" "$SEQS" <<'EOF'
import re, statistics, sys
from pathlib import Path
log, rounds, seqs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()

def grab(path, pattern):
    m = re.search(pattern, path.read_text().splitlines()[-1])
    return float(m.group(1)) if m else float("nan")

def med(name, pattern):
    return statistics.median(grab(log / name.format(r=r), pattern) for r in range(1, rounds + 1))

rows = [("decode s/token", "decode_{mode}_r{r}.log", r"decode median ([\d.]+) s/token"),
        ("decode peak RSS MiB", "decode_{mode}_r{r}.log", r"peak (\d+) MiB")]
for t in seqs:
    rows += [(f"1-layer step T={t} s", f"step_T{t}_{{mode}}_r{{r}}.log", r"median step ([\d.]+) s"),
             (f"1-layer step T={t} peak RSS MiB", f"step_T{t}_{{mode}}_r{{r}}.log", r"peak RSS (\d+) MiB"),
             (f"1-layer step T={t} RSS before MiB", f"step_T{t}_{{mode}}_r{{r}}.log", r"\((\d+) before")]
print(f"| measurement (median of {rounds} rounds) | candle bf16 matmul (cast) | bf16-weight kernel | kernel / cast |")
print("|---|---|---|---|")
for label, name, pattern in rows:
    cast = med(name.replace("{mode}", "cast"), pattern)
    kernel = med(name.replace("{mode}", "kernel"), pattern)
    print(f"| {label} | {cast:.3f} | {kernel:.3f} | {kernel / cast:.2f} |")
EOF
