#!/usr/bin/env bash
# Everything the test run needs beyond the machine's Rust toolchain, installed idempotently:
# pyarrow (an independent Arrow reader for the interop check) and Nix (to evaluate flake.nix).
set -euo pipefail
if ! python3 -c 'import pyarrow' 2>/dev/null; then
  echo "installing pyarrow (pip)"
  python3 -m pip install --quiet --disable-pip-version-check 'pyarrow>=15'
fi
if ! command -v nix >/dev/null 2>&1 || ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "installing nix-bin (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nix-bin >/dev/null
fi
