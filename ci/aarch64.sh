#!/usr/bin/env bash
# Runs roomplan-prep's whole test suite (unit tests, golden snapshots of every view's JPEG sha256
# and every shard's digest, the prep binaries end to end) built for aarch64 and run under
# qemu-user, where libjpeg-turbo and fast_image_resize take their NEON paths. The snapshots are the
# ones x86-64 checks, so a pass means the same bytes out on both architectures.
#
# Not part of ci/test.sh: the cross build takes ≈ 12 min on 2 cores and the run ≈ 3.5 min, and it
# needs root (apt packages, a binfmt_misc entry so that tests can start the aarch64 prep binaries).
# Run it after changing prep's pixel path or its codec/resampler dependencies:
#
#   bash ci/aarch64.sh            # Debian/Ubuntu host, as root
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

step() { echo; echo "==> $*"; }

step "cross toolchain and qemu-user"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v cmake >/dev/null || need+=(cmake)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q && apt-get install -y -q "${need[@]}"
fi
rustup target add "$target"

step "binfmt_misc entry for aarch64 ELF binaries (the tests start the prep binaries)"
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/register" ]; then
  mount -t binfmt_misc binfmt_misc "$binfmt" || {
    echo "error: cannot mount binfmt_misc at $binfmt (needs root, or a host that allows it)"; exit 2; }
fi
if [ ! -e "$binfmt/qemu-aarch64" ]; then
  # The ELF header of a 64-bit little-endian aarch64 executable (e_machine 0xb7), as Debian's
  # qemu-user-binfmt registers it.
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:' \
    > "$binfmt/register"
fi
grep -q '^enabled' "$binfmt/qemu-aarch64" || { echo "error: the qemu-aarch64 binfmt entry is disabled"; exit 2; }

step "cargo test -p roomplan-prep --target $target (under qemu-user)"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# Where qemu finds the aarch64 dynamic loader and libc, for every binary the tests start.
export QEMU_LD_PREFIX=$sysroot
export INSTA_UPDATE=no CARGO_TERM_COLOR=never
# The unit-test binary must be an aarch64 ELF (e_machine 0xb7 at offset 18): a host binary would
# prove nothing.
cargo test --locked -p roomplan-prep --target "$target" --no-run
lib_tests=$(find "${CARGO_TARGET_DIR:-target}/$target/debug/deps" -maxdepth 1 -name 'roomplan_prep-*' -type f -executable | head -1)
machine=$(od -An -tx1 -j18 -N2 "$lib_tests" | tr -d ' ')
[ "$machine" = b700 ] || { echo "error: $lib_tests is not an aarch64 binary (e_machine $machine)"; exit 2; }
cargo test --locked -p roomplan-prep --target "$target"
