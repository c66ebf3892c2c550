#!/usr/bin/env bash
# What CI can check of flake.nix without network (nixpkgs cannot be fetched here):
#  1. the file parses;
#  2. every output evaluates against a stand-in nixpkgs (ci/nix-stub), and its structure is right:
#     each app is of type "app" and runs a binary of the package, the app names are exactly the
#     workspace's binary targets (from cargo metadata), the package builds from Cargo.lock, and the
#     cuda package turns on the trainer's cuda feature.
# Not checked: that nixpkgs' real rustPlatform builds it (needs the network), and the devShell's tools.
set -euo pipefail
cd "$(dirname "$0")/.."
nix_flags=(--extra-experimental-features 'nix-command flakes' --option substituters '')

nix-instantiate --parse flake.nix > /dev/null
echo "flake.nix parses"

bins=$(cargo metadata --no-deps --format-version 1 --locked \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print(" ".join(sorted(t["name"] for p in m["packages"] for t in p["targets"] if "bin" in t["kind"])))')

ev() { nix eval --json "${nix_flags[@]}" --no-write-lock-file \
  --override-input nixpkgs "path:$(pwd)/ci/nix-stub" ".#$1" --apply "$2"; }
sys=x86_64-linux
apps=$(ev "apps.$sys" 'apps: builtins.mapAttrs (n: a: { inherit (a) type program; }) apps')
packages=$(ev "packages.$sys" 'p: {
    name = p.roomplan.name; out = p.roomplan.outPath; isDrv = p.roomplan.type == "derivation";
    lockFile = baseNameOf (toString p.roomplan.passthru.cargoLock.lockFile);
    cudaFeatures = p.roomplan-cuda.passthru.buildFeatures; defaultName = p.default.name; }')
shell=$(ev "devShells.$sys.default" 'd: d.type')
result="{\"apps\": $apps, \"packages\": $packages, \"shell\": $shell}"
echo "flake outputs: $result"
python3 - "$result" "$bins" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); bins = sorted(sys.argv[2].split())
apps, pkg = r["apps"], r["packages"]
problems = []
if sorted(apps) != bins: problems.append(f"apps {sorted(apps)} != workspace binaries {bins}")
for name, app in apps.items():
    if app["type"] != "app": problems.append(f"app {name} has type {app['type']!r}")
    if app["program"] != f"{pkg['out']}/bin/{name}": problems.append(f"app {name} runs {app['program']}")
if not pkg["isDrv"]: problems.append("packages.roomplan is not a derivation")
if pkg["lockFile"] != "Cargo.lock": problems.append(f"package built from {pkg['lockFile']}, not Cargo.lock")
if pkg["cudaFeatures"] != ["roomplan-trainer/cuda"]: problems.append(f"cuda package features {pkg['cudaFeatures']}")
if pkg["defaultName"] != pkg["name"]: problems.append("packages.default is not the CPU package")
if r["shell"] != "derivation": problems.append("devShells.default is not a derivation")
if problems:
    print("flake check FAILED:\n  " + "\n  ".join(problems)); sys.exit(1)
print(f"flake check: {len(bins)} apps match the workspace binaries; package, cuda variant and devShell evaluate")
PY
