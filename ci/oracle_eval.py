#!/usr/bin/env python3
"""End-to-end check of `tools eval` on prepared shards: predictions made from the references
themselves (read with pyarrow, no roomplan code) must score 100 on every exact metric.

Usage: python3 ci/oracle_eval.py TOOLS_BIN SCANQA_DIR SQA3D_DIR ARKIT_DIR
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

import pyarrow as pa


def samples(dataset):
    rows = []
    for path in sorted(glob.glob(os.path.join(dataset, "samples*.arrow"))):
        with pa.memory_map(path) as source:
            rows.extend(pa.ipc.open_file(source).read_all().to_pylist())
    if not rows:
        sys.exit(f"error: {dataset}: no samples")
    return rows


def run_eval(tools, kind, dataset, predictions, *extra):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for p in predictions:
            f.write(json.dumps(p) + "\n")
    cmd = [tools, "eval", kind, "--dataset", dataset, "--predictions", f.name, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    os.unlink(f.name)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def expect(report, key, value, what):
    if abs(report[key] - value) > 1e-9:
        sys.exit(f"error: {what}: {key} = {report[key]}, expected {value}")


def main():
    tools, scanqa, sqa3d, arkit = sys.argv[1:5]
    for dataset, task in [(scanqa, "scanqa"), (sqa3d, "sqa3d")]:
        val = [s for s in samples(dataset) if s["split"] == "val" and s["task"] == task]
        preds = [{"sample_id": s["sample_id"], "prediction": s["answers"][0]} for s in val]
        [report] = run_eval(tools, "qa", dataset, preds, "--split", "val", "--meteor", "off")
        keys = ["em1", "leo_em"] if task == "scanqa" else ["top1", "leo_em"]
        for key in keys:
            expect(report, key, 100.0, f"{task} oracle")
        print(f"{task}: {report['n']} val questions, oracle scores {', '.join(f'{k} {report[k]:.1f}' for k in keys)}")
    actions = [s for s in samples(arkit) if s["task"] == "roomplan_action"]
    preds = [{"sample_id": s["sample_id"], "prediction": s["action_json"]} for s in actions]
    summary = run_eval(tools, "actions", arkit, preds)["summary"]
    for key in ["valid", "exact", "correct"]:
        expect(summary, key, 100.0, "arkit oracle")
    print(f"roomplan_action: {summary['n']} samples, oracle valid/exact/correct 100")


if __name__ == "__main__":
    main()
