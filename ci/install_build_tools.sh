#!/usr/bin/env bash
# What building the workspace needs beyond a Rust toolchain and a C compiler, installed when missing:
# cmake and nasm, with which turbojpeg-sys builds libjpeg-turbo (prep's JPEG codec) and its SIMD.
# Uses apt (Debian/Ubuntu, as root); elsewhere says what to install. Idempotent.
set -euo pipefail
if command -v cmake >/dev/null 2>&1 && command -v nasm >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing cmake, nasm (apt): libjpeg-turbo's build"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq cmake nasm >/dev/null
else
  echo "the build needs cmake and nasm (libjpeg-turbo, prep's JPEG codec): install them (e.g. apt-get install cmake nasm) or use 'nix develop'" >&2
  exit 1
fi
