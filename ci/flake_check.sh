#!/usr/bin/env bash
# What CI can check of flake.nix without network (nixpkgs cannot be fetched here):
#  1. the file parses;
#  2. the lock: flake.lock pins nixpkgs (github NixOS/nixpkgs, 40-hex rev, sha256 narHash, the stable
#     branch flake.nix names), nix itself accepts it as up to date without re-locking, and the recorded
#     facts about that revision (ci/nix-stub/pin.json) are for the same rev and branch;
#  3. the toolchain: the pinned revision's rustc (recorded in pin.json, sources there) meets Cargo.toml's
#     rust-version, and the flake's own guard refuses an older rustc (a stand-in with rustc 1.86.0 must
#     fail to evaluate); package, check and devShell use that one compiler;
#  4. every output evaluates against a stand-in nixpkgs (ci/nix-stub) that, like nixpkgs, refuses unfree
#     packages unless config.allowUnfree: only the CUDA package is built with unfree allowed (and
#     cudaSupport), and its CUDA inputs evaluate; the CPU package, check and devShell use the default config;
#  5. apps: each is of type "app" and runs its binary of the package, and the app names are exactly the
#     workspace's binary targets (cargo metadata);
#  6. checks: workspace-tests builds from Cargo.lock and runs every test but those reading ../shared, with
#     exactly the cargo arguments ci/test_selection.py derives (ci/test.sh runs the same split for real).
# Not checked: a real `nix build` against the real nixpkgs (needs the network), the real rustc version at
# the pinned rev (a recorded fact; the flake re-asserts it on evaluation), and the devShell's tool versions.
set -euo pipefail
cd "$(dirname "$0")/.."
nix_flags=(--extra-experimental-features 'nix-command flakes' --option substituters '')
sys=x86_64-linux

nix-instantiate --parse flake.nix > /dev/null
echo "flake.nix parses"

python3 ci/test_selection.py check

# --- 2. the lock, as nix sees it (no network: an out-of-date lock would make nix try to fetch and fail)
url=$(nix-instantiate --eval --json -E '(import ./flake.nix).inputs.nixpkgs.url')
rust_version=$(nix-instantiate --eval --json -E '(builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.rust-version')
meta=$(nix flake metadata --json "${nix_flags[@]}" --offline --no-update-lock-file .)
python3 - "$url" "$rust_version" "$meta" <<'PY'
import json, re, sys
url, rust_version, meta = (json.loads(a) for a in sys.argv[1:4])
lock = json.load(open("flake.lock"))
pin = json.load(open("ci/nix-stub/pin.json"))
problems = []
m = re.fullmatch(r"github:NixOS/nixpkgs/(nixos-\d\d\.(?:05|11))", url)
if not m: problems.append(f"inputs.nixpkgs.url {url!r} is not a stable branch github:NixOS/nixpkgs/nixos-YY.MM")
branch = m[1] if m else None
if lock.get("version") != 7: problems.append(f"flake.lock version {lock.get('version')}")
node = lock["nodes"].get(lock["nodes"][lock["root"]]["inputs"].get("nixpkgs", ""), {})
locked, original = node.get("locked", {}), node.get("original", {})
want = {"type": "github", "owner": "NixOS", "repo": "nixpkgs"}
if {k: locked.get(k) for k in want} != want: problems.append(f"nixpkgs locked {locked} is not github NixOS/nixpkgs")
if original != {**want, "ref": branch}: problems.append(f"nixpkgs original {original} is not {url}")
if not re.fullmatch(r"[0-9a-f]{40}", locked.get("rev", "")): problems.append(f"locked rev {locked.get('rev')!r}")
if not re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked.get("narHash", "")): problems.append(f"locked narHash {locked.get('narHash')!r}")
if not isinstance(locked.get("lastModified"), int): problems.append("locked lastModified missing")
if meta.get("locks") != lock: problems.append("nix flake metadata reports other locks than flake.lock")
if (pin["rev"], pin["branch"]) != (locked.get("rev"), branch):
    problems.append(f"ci/nix-stub/pin.json records {pin['branch']}@{pin['rev']}, flake.lock pins {branch}@{locked.get('rev')}: re-check pin.json")
ver = lambda v: tuple(int(x) for x in v.split("."))
if ver(pin["rustc"]) < ver(rust_version): problems.append(f"pinned rustc {pin['rustc']} < rust-version {rust_version}")
if problems:
    print("flake lock check FAILED:\n  " + "\n  ".join(problems)); sys.exit(1)
print(f"flake.lock pins {branch} at {locked['rev']} ({locked['narHash']}); its rustc {pin['rustc']} >= rust-version {rust_version}")
PY

# --- 3.-6. the outputs, evaluated against the stand-in nixpkgs
bins=$(cargo metadata --no-deps --format-version 1 --locked \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print(" ".join(sorted(t["name"] for p in m["packages"] for t in p["targets"] if "bin" in t["kind"])))')
# nix eval against the stand-in (or $stub); its stderr (lock-override warnings) only when it fails.
ev() {
  local err; err=$(mktemp)
  if nix eval --json "${nix_flags[@]}" --no-write-lock-file \
      --override-input nixpkgs "path:${stub:-$(pwd)/ci/nix-stub}" ".#$1" --apply "$2" 2>"$err"; then
    rm -f "$err"
  else
    cat "$err" >&2; rm -f "$err"; return 1
  fi
}
info='d: { inherit (d) name; out = d.outPath; isDrv = d.type == "derivation"; config = d.passthru.nixpkgsConfig;
  toolchain = d.passthru.toolchain; lockFile = baseNameOf (toString d.passthru.cargoLock.lockFile);
  features = d.passthru.buildFeatures; doCheck = d.passthru.doCheck;
  inputs = map (x: x.name) (d.passthru.nativeBuildInputs ++ d.passthru.buildInputs); }'
apps=$(ev "apps.$sys" 'apps: builtins.mapAttrs (n: a: { inherit (a) type program; }) apps')
packages=$(ev "packages.$sys" "p: let info = $info; in {
    roomplan = info p.roomplan; cuda = info p.roomplan-cuda; defaultName = p.default.name; }")
checks=$(ev "checks.$sys" "c: let info = $info; t = c.workspace-tests; in {
    names = builtins.attrNames c; tests = info t // { inherit (t.passthru) cargoTestFlags checkFlags; }; }")
shell=$(ev "devShells.$sys.default" 'd: { inherit (d) type; config = d.passthru.nixpkgsConfig; packages = map (x: x.name) d.passthru.packages; }')
selection=$(python3 ci/test_selection.py nix-args)
result="{\"apps\": $apps, \"packages\": $packages, \"checks\": $checks, \"shell\": $shell, \"selection\": $selection}"
echo "flake outputs: apps $apps; packages $packages; devShell $shell"
python3 - "$result" "$bins" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); bins = sorted(sys.argv[2].split())
apps, pkg, cuda, tests, shell = r["apps"], r["packages"]["roomplan"], r["packages"]["cuda"], r["checks"]["tests"], r["shell"]
problems = []
# 5. apps
if sorted(apps) != bins: problems.append(f"apps {sorted(apps)} != workspace binaries {bins}")
for name, app in apps.items():
    if app["type"] != "app": problems.append(f"app {name} has type {app['type']!r}")
    if app["program"] != f"{pkg['out']}/bin/{name}": problems.append(f"app {name} runs {app['program']}")
for d, what in [(pkg, "packages.roomplan"), (cuda, "packages.roomplan-cuda"), (tests, "checks.workspace-tests")]:
    if not d["isDrv"]: problems.append(f"{what} is not a derivation")
    if d["lockFile"] != "Cargo.lock": problems.append(f"{what} builds from {d['lockFile']}, not Cargo.lock")
if r["packages"]["defaultName"] != pkg["name"]: problems.append("packages.default is not the CPU package")
# 4. unfree only for CUDA
for d, what in [(pkg, "packages.roomplan"), (tests, "checks.workspace-tests"), (shell, "devShells.default")]:
    if d["config"] != {}: problems.append(f"{what} uses a nixpkgs config {d['config']} (expected the default: no unfree)")
if cuda["config"] != {"allowUnfree": True, "cudaSupport": True}:
    problems.append(f"packages.roomplan-cuda uses nixpkgs config {cuda['config']} (expected allowUnfree and cudaSupport)")
if cuda["features"] != ["roomplan-trainer/cuda"]: problems.append(f"cuda package features {cuda['features']}")
if not {"cuda_nvcc", "cuda_cudart", "libcublas"} <= set(cuda["inputs"]): problems.append(f"cuda package inputs {cuda['inputs']}")
if any(i.startswith(("cuda", "libcu")) for i in pkg["inputs"] + tests["inputs"]): problems.append("a CPU derivation has CUDA inputs")
# 3. one compiler: the pinned nixpkgs' rustc and cargo (the stand-in's, named after pin.json), which the guard checks
tc = pkg["toolchain"]
pinned = json.load(open("ci/nix-stub/pin.json"))["rustc"]
if tc != {"rustc": f"rustc-{pinned}", "cargo": f"cargo-{pinned}"}: problems.append(f"the package is built with {tc}, not nixpkgs' rustc and cargo")
for d, what in [(cuda, "packages.roomplan-cuda"), (tests, "checks.workspace-tests")]:
    if d["toolchain"] != tc: problems.append(f"{what} is built with {d['toolchain']}, the package with {tc}")
if not {tc["rustc"], tc["cargo"], "clippy", "rustfmt"} <= set(shell["packages"]):
    problems.append(f"devShell packages {shell['packages']} lack the package's toolchain {tc}")
if shell["type"] != "derivation": problems.append("devShells.default is not a derivation")
# 6. the check runs the tests that need no ../shared
if r["checks"]["names"] != ["workspace-tests"]: problems.append(f"checks {r['checks']['names']}")
if pkg["doCheck"] or not tests["doCheck"]: problems.append("expected doCheck only in checks.workspace-tests")
sel = r["selection"]
if tests["cargoTestFlags"] != sel["cargoTestFlags"]:
    problems.append(f"check's cargoTestFlags {tests['cargoTestFlags']} != ci/test_selection.py's {sel['cargoTestFlags']}")
if tests["checkFlags"] != sel["checkFlags"]:
    problems.append(f"check's checkFlags {tests['checkFlags']} != ci/test_selection.py's {sel['checkFlags']}")
if problems:
    print("flake check FAILED:\n  " + "\n  ".join(problems)); sys.exit(1)
print(f"flake check: {len(bins)} apps match the workspace binaries; unfree only in the CUDA package; one toolchain "
      f"({tc['rustc']}); workspace-tests runs {sel['cargoTestFlags'].count('--test')} test targets + unit tests, skipping {sel['checkFlags'].count('--skip')}")
PY

# --- 3. the guard: with an older rustc in the stand-in, every output that compiles must refuse to evaluate
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cp -r ci/nix-stub/. "$stub"
python3 - "$stub/pin.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1])); p["rustc"] = "1.86.0"; json.dump(p, open(sys.argv[1], "w"))
PY
for attr in "packages.$sys.roomplan" "packages.$sys.roomplan-cuda" "checks.$sys.workspace-tests" "devShells.$sys.default"; do
  if out=$(ev "$attr" 'd: map (x: x.name or x) ([ d.name ] ++ d.passthru.packages or [ ])' 2>&1); then
    echo "flake check FAILED: $attr evaluates with rustc 1.86.0 < rust-version: $out"; exit 1
  fi
  grep -q "rustc 1.86.0 is older than the workspace's rust-version" <<<"$out" \
    || { echo "flake check FAILED: $attr failed with rustc 1.86.0, but not on the rust-version guard: $out"; exit 1; }
done
echo "flake check: with rustc 1.86.0 the package, the CUDA package, the check and the devShell refuse to evaluate"
