#!/usr/bin/env bash
# The GPU check, for any machine with an NVIDIA GPU (at most ~10 minutes on one H100/H200-class
# GPU with 16 cores; never run yet: no GPU was available when it was written):
#   1. builds with `cuda` (release; nvcc and the CUDA libraries from the machine's toolkit, else
#      from PyPI: ci/cuda_env.sh);
#   2. `tools parity --device cuda` on the shared fixtures (Qwen3 with PyTorch's bf16 reference);
#   3. the main job (tools/demo.sh) with `train tiny` on the GPU, then `train tiny` with bf16 frozen
#      weights, and on 2+ GPUs two NCCL ranks (`--nproc 2`, one process per GPU) whose losses must
#      match the single-process run with the same global batch;
#   4. one LoRA train step of the real Qwen3-4B-Instruct-2507 shape (random weights, bf16 frozen,
#      sequence 512): ours (trainer/examples/qwen3_lora_bench.rs) and PyTorch + PEFT
#      (tools/bench/bench_qwen3_lora_gpu.py) alternately, tokens/s and MFU side by side.
# Writes target/gpu/report.json. Environment: ROOMPLAN_SHARED (default ../shared), PYTHON (a
# Python with torch + transformers + peft for the PyTorch side; skipped, and said so, without),
# GPU_PEAK_TFLOPS (dense bf16 peak; guessed from the GPU's name), GPU_BENCH_BATCH, GPU_BENCH_ROUNDS.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo; echo "==> [$((SECONDS - started)) s] $*"; }
export ROOMPLAN_SHARED="${ROOMPLAN_SHARED:-$(cd .. && pwd)/shared}"
out=target/gpu
mkdir -p "$out"

step "GPU"
nvidia-smi --query-gpu=index,name,memory.total,compute_cap --format=csv,noheader
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
memory_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}
# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts); MFU is left out for other GPUs.
case "$name" in
  *H200*|*H100*SXM*|*H100\ 80GB\ HBM3*) peak=989 ;;
  *H100*PCIe*|*H100*) peak=756 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *) peak="" ;;
esac
peak=${GPU_PEAK_TFLOPS:-$peak}
echo "$gpus GPU(s), $name, $memory_mib MiB, compute capability $CUDA_COMPUTE_CAP, bf16 peak ${peak:-unknown} TFLOPS"

step "build with cuda (release)"
CUDA_LINK_LIBS=1 source ci/cuda_env.sh
export CARGO_TARGET_DIR=$out
cargo build --locked --release -p roomplan-synth -p roomplan-prep -p roomplan-tools -p roomplan-trainer \
  --features roomplan-trainer/cuda,roomplan-tools/cuda --bins --example qwen3_lora_bench
bin=$out/release

step "tools parity on the GPU"
"$bin/tools" parity "$ROOMPLAN_SHARED/parity/qwen3" --device cuda --bf16-reference trainer/tests/fixtures/qwen3_bf16
for fixture in vggt/conv vggt/dinov2; do
  "$bin/tools" parity "$ROOMPLAN_SHARED/parity/$fixture" --device cuda
done

step "the main job with train tiny on the GPU (tools/demo.sh)"
ROOMPLAN_BIN="$bin" DEMO_THREADS=8 timeout 300 bash tools/demo.sh
step "train tiny with bf16 frozen weights on the GPU (20 steps)"
rm -rf data/runs/tiny-gpu-bf16
timeout 120 "$bin/train" tiny --run-dir data/runs/tiny-gpu-bf16 --max-steps 20 --no-progress \
  --set model.frozen_dtype=bf16 --set eval.every=0
if [ "$gpus" -ge 2 ]; then
  step "two NCCL ranks (one process per GPU) against one process with twice the micro-batch"
  rm -rf data/runs/tiny-gpu-nccl data/runs/tiny-gpu-one
  mb=$(python3 -c 'import yaml,sys; print(yaml.safe_load(open("experiments/tiny.yaml"))["train"]["micro_batch"])' 2>/dev/null \
    || grep -E '^\s+micro_batch:' experiments/tiny.yaml | head -1 | awk '{print $2}')
  timeout 120 "$bin/train" tiny --nproc 2 --launcher processes --run-dir data/runs/tiny-gpu-nccl --max-steps 10 \
    --no-progress --set eval.every=0 --set model.lora.dropout=0
  timeout 120 "$bin/train" tiny --run-dir data/runs/tiny-gpu-one --max-steps 10 --no-progress --set eval.every=0 \
    --set model.lora.dropout=0 --set "train.micro_batch=$((2 * mb))"
  python3 - data/runs/tiny-gpu-nccl data/runs/tiny-gpu-one <<'PY'
import json, sys
def losses(d):
    return [json.loads(l)["loss"] for l in open(f"{d}/metrics.jsonl") if json.loads(l)["kind"] == "train"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"NCCL 2 ranks vs 1 rank x 2B: {len(a)} steps, largest relative loss difference {worst:.2e}")
assert len(a) == len(b) == 10 and worst < 1e-3, (a, b)
PY
else
  echo "(one GPU: the NCCL check needs two)"
fi

step "LoRA train step, Qwen3-4B-Instruct-2507 shape, bf16 frozen, sequence 512"
batch=${GPU_BENCH_BATCH:-$([ "$memory_mib" -ge 70000 ] && echo 4 || echo 1)}
rounds=${GPU_BENCH_ROUNDS:-2}
PYTHON=${PYTHON:-python3}
common=(--config tools/bench/qwen3_4b_instruct_2507.json --batch "$batch" --seq 512 --steps 4 --warmup 2)
peak_args=(); [ -n "$peak" ] && peak_args=(--peak-tflops "$peak")
torch_ok=1
"$PYTHON" -c 'import torch, transformers, peft; assert torch.cuda.is_available()' 2> /dev/null || torch_ok=0
: > "$out/bench.jsonl"
for round in $(seq "$rounds"); do
  echo "round $round: ours"
  timeout 240 "$bin/examples/qwen3_lora_bench" "${common[@]}" --device cuda --frozen-dtype bf16 --rank 8 \
    "${peak_args[@]}" --json | tee -a "$out/bench.jsonl"
  if [ "$torch_ok" = 1 ]; then
    echo "round $round: PyTorch + PEFT"
    timeout 240 "$PYTHON" tools/bench/bench_qwen3_lora_gpu.py "${common[@]}" --device cuda --rank 8 \
      "${peak_args[@]}" | tee -a "$out/bench.jsonl"
  fi
done
[ "$torch_ok" = 1 ] || echo "PyTorch + PEFT with CUDA not found ($PYTHON): only our side was timed"
python3 - "$out/bench.jsonl" "$out/report.json" "$name" "$(uptime)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["impl"].split(" ")[0], []).append(r)
summary = {}
for impl, rs in by.items():
    tps = statistics.median(r["tokens_per_s"] for r in rs)
    mfu = [r["mfu"] for r in rs if r["mfu"] is not None]
    summary[impl] = {"impl": rs[0]["impl"], "rounds": len(rs), "median_tokens_per_s": tps,
                     "median_mfu": statistics.median(mfu) if mfu else None,
                     "batch": rs[0]["batch"], "seq": rs[0]["seq"]}
    print(f"{rs[0]['impl']:40} {tps:10.0f} tokens/s  MFU {summary[impl]['median_mfu'] or float('nan'):.3f}  "
          f"({len(rs)} rounds, batch {rs[0]['batch']} x {rs[0]['seq']})")
if "roomplan" in summary and "pytorch" in summary:
    ratio = summary["roomplan"]["median_tokens_per_s"] / summary["pytorch"]["median_tokens_per_s"]
    print(f"ours / PyTorch + PEFT: {ratio:.2f}x tokens/s")
    summary["ratio_ours_over_pytorch"] = ratio
json.dump({"gpu": sys.argv[3], "uptime": sys.argv[4], "bench": summary, "rows": rows},
          open(sys.argv[2], "w"), indent=2)
PY
step "done: $out/report.json"
