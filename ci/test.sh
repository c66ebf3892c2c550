#!/usr/bin/env bash
# The project's test command (README, .ci/run): Rust tests (unit, golden snapshots, property tests,
# parity against ../shared/parity), the parity tool on the shared fixtures, the pyarrow interop check
# and the flake evaluation. Runs on a clean clone with ../shared beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
export INSTA_UPDATE=no CARGO_TERM_COLOR=never
export ROOMPLAN_SHARED="${ROOMPLAN_SHARED:-$(cd .. && pwd)/shared}"
[ -d "$ROOMPLAN_SHARED/parity" ] || { echo "error: shared fixtures not found at $ROOMPLAN_SHARED (set ROOMPLAN_SHARED)"; exit 2; }

step() { echo; echo "==> $*"; }

step "install test tools"
bash ci/install.sh

step "cargo test (workspace)"
cargo test --workspace --locked

step "flake evaluation"
bash ci/flake_check.sh
