#!/usr/bin/env bash
# Everything the test run needs beyond the machine's Rust toolchain, installed idempotently:
# pyarrow (an independent Arrow reader for the interop check), duckdb and PyYAML (the Parquet export's
# read-back), pycocoevalcap (its METEOR 1.5 jar and paraphrase table) with Java to run it, cmake and nasm
# (libjpeg-turbo's build, through turbojpeg-sys), and Nix (to evaluate flake.nix).
set -euo pipefail
if ! python3 -c 'import pyarrow, duckdb, yaml, pycocoevalcap' 2>/dev/null; then
  echo "installing pyarrow, duckdb, pyyaml, pycocoevalcap (pip)"
  python3 -m pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'duckdb>=1.1' pyyaml 'pycocoevalcap==1.2'
fi
if ! command -v java >/dev/null 2>&1; then
  echo "installing default-jre-headless (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq default-jre-headless >/dev/null
fi
bash "$(dirname "$0")/install_build_tools.sh"
if ! command -v nix >/dev/null 2>&1 || ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "installing nix-bin (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nix-bin >/dev/null
fi
