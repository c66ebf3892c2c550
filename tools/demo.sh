#!/usr/bin/env bash
# The main job on the built-in default: generate synthetic scenes in the real raw formats, prepare
# them with prep-scanqa, prep-sqa3d and prep-arkit, and verify every prepared dataset.
#   bash tools/demo.sh [OUT]        (OUT defaults to data; raw under OUT/raw/synth, shards under OUT/shards/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-data}"
raw="$out/raw/synth"
shards="$out/shards"

echo "==> building (release)"
cargo build --release --locked -p roomplan-synth -p roomplan-prep -p roomplan-tools
bin=target/release

echo "==> synth: 4 rooms × 60 frames into $raw"
rm -rf "$raw"
"$bin/synth" --out "$raw"

echo "==> prep-scanqa"
"$bin/prep-scanqa" --scannet "$raw/scannet" --scanqa "$raw/scanqa" --out "$shards/scanqa" --overwrite
echo "==> prep-sqa3d (with the bird's-eye view)"
"$bin/prep-sqa3d" --scannet "$raw/scannet" --sqa3d "$raw/sqa3d" --bev --out "$shards/sqa3d" --overwrite
echo "==> prep-arkit"
"$bin/prep-arkit" --arkitscenes "$raw/arkitscenes" --out "$shards/arkit" --overwrite

for d in scanqa sqa3d arkit; do
  echo "==> tools shard verify $shards/$d"
  "$bin/tools" shard verify "$shards/$d"
done
echo "==> dataset digests (what an experiment file pins)"
for d in scanqa sqa3d arkit; do
  printf '%-8s %s\n' "$d" "$("$bin/tools" shard digest "$shards/$d")"
done
