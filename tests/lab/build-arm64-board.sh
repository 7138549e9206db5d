#!/usr/bin/env bash
# The root file system of the tests' emulated 64-bit Raspberry Pi OS board (tests/armboard.py): Debian bookworm
# arm64, as Raspberry Pi OS bookworm 64-bit is, with what matters of it to edgeopt: Python 3.11 whose pip refuses
# to install into it (PEP 668, Debian's EXTERNALLY-MANAGED), Debian's numpy 1.24, python3-venv, OpenSSH's sshd
# and a user "pi". Its programs are arm64 and run on this machine through qemu-user (binfmt_misc).
#
# Built once per machine with mmdebstrap into $EDGEOPT_TEST_CACHE (default ~/.cache/edgeopt-test), in a folder
# named after this script's SHA-256 (the package list is in it): arm64-bookworm-<hash>/. Nothing in it is ever
# changed afterwards (the board runs on an overlay of it). Prints that folder's path.
#
#   tests/lab/build-arm64-board.sh            build if missing (about 6 minutes on 2 cores), print the path
#   tests/lab/build-arm64-board.sh --binfmt   only make sure qemu-aarch64 is registered with binfmt_misc
#
# Needs root and the Debian packages mmdebstrap, qemu-user-static and binfmt-support (.ci/run installs them);
# the mirror is $EDGEOPT_TEST_DEBIAN_MIRROR, default the one apt uses here (deb.debian.org).
set -euo pipefail

PACKAGES="python3 python3-numpy python3-venv python3-pip openssh-server libstdc++6"
SUITE=bookworm
MIRROR="${EDGEOPT_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  if [ ! -e "$dir/register" ]; then
    mount -t binfmt_misc binfmt_misc "$dir"
  fi
  if [ ! -e "$dir/qemu-aarch64" ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64
  fi
  grep -qx enabled "$dir/qemu-aarch64" || echo 1 > "$dir/qemu-aarch64"
  # F (fix binary): the kernel keeps qemu open, so programs run inside a chroot that has no qemu of its own
  grep -q '^flags: .*F' "$dir/qemu-aarch64" || { echo "qemu-aarch64 is registered without the F flag" >&2; exit 1; }
}

[ "$(id -u)" = 0 ] || { echo "needs root (mmdebstrap, binfmt_misc)" >&2; exit 1; }
for tool in mmdebstrap update-binfmts; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install mmdebstrap qemu-user-static binfmt-support" >&2; exit 1; }
done
[ -x /usr/bin/qemu-aarch64-static ] || { echo "needs qemu-user-static" >&2; exit 1; }
binfmt
[ "${1:-}" = --binfmt ] && exit 0

cache="${EDGEOPT_TEST_CACHE:-$HOME/.cache/edgeopt-test}"
key=$(sha256sum "$0" | cut -c1-12)
dest="$cache/arm64-$SUITE-$key"
mkdir -p "$cache"
exec 9>"$cache/.arm64-$SUITE.lock"
flock 9  # one build at a time; whoever waited finds it done
if [ ! -e "$dest/.edgeopt-board-ready" ]; then
  tmp="$dest.tmp"
  rm -rf --one-file-system "$tmp"
  start=$(date +%s)
  # minbase: Debian's required packages; docs, man pages and translations left out (nothing here reads them).
  # The host keys made by openssh-server's postinst are removed: each board gets its own.
  mmdebstrap --quiet --arch=arm64 --variant=minbase --mode=root --include="${PACKAGES// /,}" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='chroot "$1" useradd --create-home --shell /bin/bash --password "*" pi' \
    --customize-hook='echo raspberrypi > "$1/etc/hostname"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    "$SUITE" "$tmp" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" >&2
  # the board must be what the tests say it is: an aarch64 Python 3.11 under PEP 668 with Debian's numpy
  chroot "$tmp" /usr/bin/python3 -c '
import os, platform, sys, sysconfig, numpy
assert platform.machine() == "aarch64" and sys.version_info[:2] == (3, 11), platform.machine()
assert os.path.isfile(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED"))
assert numpy.__version__.startswith("1.24."), numpy.__version__
'
  printf '%s\n' "{\"packages\": \"$PACKAGES\", \"suite\": \"$SUITE\", \"seconds\": $(( $(date +%s) - start ))}" \
    > "$tmp/.edgeopt-board-ready"
  rm -rf --one-file-system "$dest"
  mv "$tmp" "$dest"
  echo "built $dest in $(( $(date +%s) - start )) s ($(du -sh "$dest" | cut -f1))" >&2
fi
echo "$dest"
