#!/usr/bin/env python3
"""Speed and memory of a training run, from its metrics.jsonl (standard library only).

    python3 tools/bench/run_speed.py data/runs/tiny-demo [more run dirs]

Per run: optimizer steps, the median seconds per step over all steps but the first (which pays for
warm-up), steps/s, samples/s, answer tokens/s and input tokens/s (prompt, image slots and answer)
from that median, the loader's median
micro-batches/s of its own work (above the steps' rate: decoding never stalls a step), the total
seconds the steps waited for the loader, the peak resident memory, and the seconds spent in evaluation.
"""
import json
import statistics
import sys


def summarize(run_dir):
    lines = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl")]
    train = [l for l in lines if l["kind"] == "train"]
    evals = [l for l in lines if l["kind"] == "eval"]
    steady = train[1:] or train
    step_s = statistics.median(l["seconds"] for l in steady)
    samples = statistics.median(l["samples"] for l in steady)
    tokens = statistics.median(l["tokens"] for l in steady)
    inputs = statistics.median(l.get("input_tokens", 0) for l in steady)
    return {
        "run": run_dir,
        "steps": len(train),
        "median_step_s": round(step_s, 4),
        "steps_per_s": round(1 / step_s, 2),
        "samples_per_s": round(samples / step_s, 1),
        "answer_tokens_per_s": round(tokens / step_s, 1),
        "input_tokens_per_s": round(inputs / step_s, 1),
        "loader_batches_per_s": round(statistics.median(l.get("loader_batches_per_s", 0) for l in steady), 1),
        "loader_wait_total_s": round(sum(l["loader_wait_s"] for l in train), 2),
        "peak_rss_mib": round(max(l["peak_rss_mib"] for l in train), 1),
        "eval_total_s": round(sum(l["seconds"] for l in evals), 2),
    }


if __name__ == "__main__":
    for d in sys.argv[1:]:
        print(json.dumps(summarize(d)))
