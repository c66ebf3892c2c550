#!/usr/bin/env bash
# Train-step and aggregator speed against PyTorch, side by side (issue 12's goals), in one run.
#
#   tools/bench/step_speed.sh [--rounds N] [--threads "1 2"] [--steps N] [--no-build]
#
# Builds the two candle bench examples in the release profile, then for each thread count runs
# N alternating rounds of
#   - the Qwen3 + LoRA train step: tools/bench/bench_qwen3_lora.py (PyTorch + peft) and
#     trainer/examples/qwen3_lora_bench.rs (candle), same architecture, batch, LoRA, optimizer;
#   - the frozen VGGT aggregator forward: tools/bench/bench_vggt_aggregator.py, which times PyTorch
#     and then the candle example on the same weights and input;
# one process per measurement (so peak RSS is per run), the machine's load printed before each
# round. At the end: per thread count, the median over rounds of each side's median step / forward,
# the ratio candle / PyTorch of those medians, and the peak RSS of the step.
#
# Environment: PYTHON (default /work/venv-bench/bin/python, else python3) with torch, transformers,
# peft, safetensors, numpy; LOG_DIR (default a fresh temporary folder) keeps every run's output.
# About 4-6 minutes after the build on a quiet 2-core machine with the defaults.
set -euo pipefail

ROUNDS=3
THREADS="1 2"
STEPS=6
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$REPO"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /work/venv-bench/bin/python ]]; then PYTHON=/work/venv-bench/bin/python; else PYTHON=python3; fi
fi
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/step_speed.XXXXXX)}"
mkdir -p "$LOG_DIR"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"

if [[ $BUILD == 1 ]]; then
  echo "== building the release examples (cargo build --release)"
  cargo build --release -p roomplan-trainer --example qwen3_lora_bench --example bench_vggt
fi
STEP_BIN="$TARGET/release/examples/qwen3_lora_bench"
[[ -x "$STEP_BIN" ]] || { echo "missing $STEP_BIN (run without --no-build)" >&2; exit 1; }

echo "== logs in $LOG_DIR; $(nproc) CPUs; $("$PYTHON" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')"
START=$(date +%s)
for t in $THREADS; do
  for r in $(seq 1 "$ROUNDS"); do
    echo "== threads $t, round $r/$ROUNDS, $(uptime | sed 's/.*load/load/'), $(( $(date +%s) - START )) s elapsed"
    "$PYTHON" tools/bench/bench_qwen3_lora.py --steps "$STEPS" --threads "$t" > "$LOG_DIR/step_torch_t${t}_r${r}.log" 2>&1
    tail -1 "$LOG_DIR/step_torch_t${t}_r${r}.log"
    RAYON_NUM_THREADS=$t "$STEP_BIN" --steps "$STEPS" > "$LOG_DIR/step_candle_t${t}_r${r}.log" 2>&1
    tail -1 "$LOG_DIR/step_candle_t${t}_r${r}.log"
    "$PYTHON" tools/bench/bench_vggt_aggregator.py --threads "$t" --runs 5 --views 4 > "$LOG_DIR/vggt_t${t}_r${r}.log" 2>&1
    grep '^| PyTorch\|^| candle' "$LOG_DIR/vggt_t${t}_r${r}.log"
  done
done
echo "== done in $(( $(date +%s) - START )) s, $(uptime | sed 's/.*load/load/')"

"$PYTHON" - "$LOG_DIR" $THREADS <<'EOF'
"""Medians over rounds and candle / PyTorch ratios from the logs."""
import glob, re, statistics, sys

log_dir, threads = sys.argv[1], sys.argv[2:]
med = statistics.median

def grab(pattern, path, group=1):
    m = re.search(pattern, open(path).read())
    if not m:
        sys.exit(f"{path}: no line matching {pattern!r} (see the log)")
    return float(m.group(group))

print("| threads | PyTorch step s | candle step s | step ratio | peak RSS PyTorch / candle MiB | PyTorch aggregator ms | candle aggregator ms | aggregator ratio |")
print("|---|---|---|---|---|---|---|---|")
for t in threads:
    torch_step = [grab(r"median step ([\d.]+) s", f) for f in sorted(glob.glob(f"{log_dir}/step_torch_t{t}_r*.log"))]
    candle_step = [grab(r"median step ([\d.]+) s", f) for f in sorted(glob.glob(f"{log_dir}/step_candle_t{t}_r*.log"))]
    torch_rss = [grab(r"peak RSS (\d+) MiB", f) for f in sorted(glob.glob(f"{log_dir}/step_torch_t{t}_r*.log"))]
    candle_rss = [grab(r"peak RSS (\d+) MiB", f) for f in sorted(glob.glob(f"{log_dir}/step_candle_t{t}_r*.log"))]
    vggt = sorted(glob.glob(f"{log_dir}/vggt_t{t}_r*.log"))
    torch_agg = [grab(r"\| PyTorch[^|]*\| ([\d.]+) \|", f) for f in vggt]
    candle_agg = [grab(r"\| candle[^|]*\| ([\d.]+) \|", f) for f in vggt]
    ts, cs, ta, ca = med(torch_step), med(candle_step), med(torch_agg), med(candle_agg)
    print(f"| {t} | {ts:.3f} | {cs:.3f} | {cs / ts:.2f}x | {max(torch_rss):.0f} / {max(candle_rss):.0f} | "
          f"{ta:.1f} | {ca:.1f} | {ca / ta:.2f}x |")
    print(f"  rounds, threads {t}: step PyTorch {torch_step}, candle {candle_step}; "
          f"aggregator PyTorch {torch_agg}, candle {candle_agg}", file=sys.stderr)
EOF
