#!/usr/bin/env bash
# Benchmark of prep-scanqa: frames per second and peak memory (max RSS) with 1 and 2 threads, on a
# synthetic ScanNet set with real-sized images (1296×968 colour, 640×480 depth, raw .sens).
#
# usage: prep/benches/prep_scanqa.sh [SCENES] [FRAMES_PER_SCENE] [NUM_VIEWS]
#   (defaults 4 scenes × 60 frames, 8 views). Needs /usr/bin/time (GNU time). Builds release binaries.
# "frames" = stored views (each one = one colour JPEG + one zlib depth raster decoded from the .sens,
# resized, re-encoded); the .sens files are also read end to end once for their sha256.
set -euo pipefail
scenes=${1:-4}
frames=${2:-60}
views=${3:-8}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${BENCH_DIR:-$(mktemp -d)}
cd "$root"
cargo build --release -q -p roomplan-synth -p roomplan-prep --bins
bin=${CARGO_TARGET_DIR:-$root/target}/release
if [ ! -d "$work/raw" ]; then
  "$bin/synth" --out "$work/raw" --scenes "$scenes" --frames "$frames" \
    --color-size 1296x968 --depth-size 640x480 --scannet-format sens >/dev/null
fi
du -sh "$work/raw/scannet" | sed 's/^/raw ScanNet: /'
for threads in 1 2; do
  out="$work/out-$threads"
  rm -rf "$out"
  /usr/bin/time -v -o "$work/time-$threads.txt" "$bin/prep-scanqa" --scannet "$work/raw/scannet" \
    --scanqa "$work/raw/scanqa" --out "$out" --threads "$threads" --num-views "$views" 2>"$work/log-$threads.txt"
  wall=$(grep "Elapsed (wall clock)" "$work/time-$threads.txt" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/time-$threads.txt" | awk '{print $NF}')
  nviews=$(python3 -c "import json,sys; print(json.load(open('$out/manifest.json'))['counts']['views'])")
  secs=$(python3 -c "p='$wall'.split(':'); print(sum(float(x)*60**i for i,x in enumerate(reversed(p))))")
  python3 -c "print(f'threads $threads: {$nviews} views in {$secs:.2f} s = {$nviews/$secs:.1f} frames/s, max RSS {$rss/1024:.0f} MiB')"
  grep "dataset digest" "$work/log-$threads.txt"
done
cmp <(cd "$work/out-1" && sha256sum *) <(cd "$work/out-2" && sha256sum *) && echo "outputs of 1 and 2 threads are byte-identical"
echo "work dir: $work"
