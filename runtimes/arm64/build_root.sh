#!/usr/bin/env bash
# Build, once, the arm64 Debian bookworm userland that the `litert-arm64` runtime and the
# Flask-under-emulation test run in (64-bit Raspberry Pi OS is Debian bookworm arm64).
#
#   runtimes/arm64/build_root.sh            # builds ${KEXPORT_ARM64_ROOT:-~/.cache/kexport/arm64-root}
#   KEXPORT_ARM64_ROOT=/opt/pi-root runtimes/arm64/build_root.sh
#
# What it does (no binfmt_misc, no chroot, no mount: containers and CI allow none of them):
#   1. apt-get install qemu-user-static debootstrap        (when missing; needs root)
#   2. debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11 bookworm
#      downloads Debian's arm64 packages; every .deb is then unpacked with dpkg-deb -x (the
#      second stage would have to execute arm64 binaries, which needs binfmt_misc)
#   3. the official aarch64 wheels (ai-edge-litert, numpy, onnxruntime, flask, gunicorn at the
#      versions pinned in constraints.txt) are downloaded by the host's pip with
#      --platform manylinux_2_X_aarch64 and installed with `pip install --target` (seconds,
#      instead of minutes of pip under emulation)
#   4. a Raspberry Pi 4 /proc/cpuinfo inside the root: qemu-user shows the guest the host's x86
#      /proc/cpuinfo, and onnxruntime's cpuinfo crashes (SIGSEGV at import) parsing it; qemu's
#      -L prefix makes the guest read this file instead
#   5. a smoke test under qemu (imports everything), a stamp file with the versions, then the
#      temporary directory is renamed into place: an interrupted build never leaves a half root.
# Idempotent: an existing root whose stamp matches the wanted versions is kept as it is.
set -euo pipefail

SCRIPT_VERSION=1
SUITE=bookworm
MIRROR=${KEXPORT_ARM64_MIRROR:-http://deb.debian.org/debian}
ROOT=${KEXPORT_ARM64_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/kexport/arm64-root}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CONSTRAINTS=${KEXPORT_CONSTRAINTS:-$REPO/constraints.txt}
# LiteRT for litert-arm64; the generated Flask server's stack (templates/flask_app requirements).
PACKAGES=(ai-edge-litert numpy onnxruntime flask werkzeug gunicorn gevent)
STAMP_NAME=.kexport-arm64-root
T0=$(date +%s)

die() { echo "build_root.sh: $*" >&2; exit 1; }
step() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

# The host Python that runs pip (the project's venv when there is one).
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

# The wanted state: script version + the versions of the wheels: the pin in constraints.txt,
# else the version installed in the host venv (what kexport verified the generated server with).
pins=($("$PYTHON" - "$CONSTRAINTS" "${PACKAGES[@]}" <<'PY'
import re, sys
from importlib import metadata

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pinned = {}
try:
    for line in open(sys.argv[1]):
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            pinned[norm(m[1])] = m[2]
except OSError:
    pass
for p in sys.argv[2:]:
    v = pinned.get(norm(p))
    if v is None:
        try:
            v = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    print(f"{p}=={v}" if v else p)
PY
))
[ ${#pins[@]} = ${#PACKAGES[@]} ] || die "could not read the versions with $PYTHON"
WANT="kexport-arm64-root v$SCRIPT_VERSION $SUITE python3.11 ${pins[*]}"

up_to_date() { [ -f "$ROOT/$STAMP_NAME" ] && [ "$(head -1 "$ROOT/$STAMP_NAME")" = "$WANT" ]; }
if up_to_date; then
  echo "arm64 root up to date: $ROOT"
  exit 0
fi
# One build at a time per root (make arm64-root and a test fixture may race): wait, then re-check.
mkdir -p "$(dirname "$ROOT")"
if command -v flock >/dev/null; then
  exec 9>"$ROOT.lock"
  flock 9
  if up_to_date; then echo "arm64 root up to date: $ROOT (built by another process)"; exit 0; fi
fi

# 1. Debian's tools.
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "needs ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' first"
  step "installing ${missing[*]} (apt-get)"
  lock=(); command -v flock >/dev/null && lock=(flock /tmp/kexport-apt.lock)
  "${lock[@]}" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]} >/dev/null"
fi
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)
[ "$(id -u)" = 0 ] || die "debootstrap needs root (file ownership in the root); run as root or with sudo"

TMP=$(mktemp -d "$ROOT.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
WHEELS="$TMP.wheels"
trap 'rm -rf "$TMP" "$WHEELS"' EXIT

# 2. Debian bookworm arm64: python3.11 and what it needs, unpacked.
step "debootstrap (first stage) $SUITE arm64 from $MIRROR"
"$DEBOOTSTRAP" --foreign --arch=arm64 --variant=minbase --include=python3.11 \
  "$SUITE" "$TMP" "$MIRROR" > "$TMP.debootstrap.log" 2>&1 \
  || { tail -5 "$TMP.debootstrap.log" >&2; rm -f "$TMP.debootstrap.log"; die "debootstrap failed"; }
rm -f "$TMP.debootstrap.log"
step "unpacking $(ls "$TMP"/var/cache/apt/archives/*.deb | wc -l) packages"
for deb in "$TMP"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$TMP"; done
PYVER=$(dpkg-deb -f "$TMP"/var/cache/apt/archives/python3.11-minimal_*.deb Version)
rm -rf "$TMP"/var/cache/apt/archives/*.deb "$TMP"/debootstrap
[ -x "$TMP/usr/bin/python3.11" ] || die "python3.11 missing from the unpacked root"

# 3. The official aarch64 wheels (bookworm's glibc is 2.36: accept manylinux_2_17 .. 2_36).
platforms=(--platform manylinux2014_aarch64)
for v in $(seq 17 36); do platforms+=(--platform "manylinux_2_${v}_aarch64"); done
wheel_flags=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}")
cflag=(); [ -f "$CONSTRAINTS" ] && cflag=(-c "$CONSTRAINTS")
step "pip download (aarch64 wheels): ${pins[*]}"
"$PYTHON" -m pip download -q --disable-pip-version-check -d "$WHEELS" "${cflag[@]}" "${wheel_flags[@]}" "${pins[@]}"
SITE="$TMP/usr/local/lib/python3.11/dist-packages"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --no-compile \
  --target "$SITE" "${wheel_flags[@]}" "${pins[@]}"
rm -rf "$SITE/bin" "$WHEELS"

# 4. What the guest sees as its CPU: a Raspberry Pi 4 (4 x Cortex-A72, the CPU qemu emulates).
{
  for i in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
  done
  printf 'Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n'
} > "$TMP/proc/cpuinfo"

# Byte-code, compiled by the host when it is a 3.11 too (same format; pip under emulation would
# spend minutes on it). Paths are the final ones, so tracebacks name real files.
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  step "byte-compiling (host Python 3.11)"
  "$PYTHON" -m compileall -q -j 0 -s "$TMP" -p "$ROOT" -x '/(test|tests|idlelib|lib2to3|tkinter|turtledemo)/' \
    "$TMP/usr/lib/python3.11" "$SITE" >/dev/null 2>&1 || true
fi

# 5. Smoke test under emulation, stamp, atomic rename.
step "smoke test under qemu-aarch64-static"
versions=$(env -i PATH=/usr/bin:/bin PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
  qemu-aarch64-static -cpu cortex-a72 -L "$TMP" "$TMP/usr/bin/python3.11" -c '
import platform, sys, numpy, onnxruntime, flask, gunicorn, gevent
from importlib.metadata import version
from ai_edge_litert.interpreter import Interpreter
assert platform.machine() == "aarch64", platform.machine()
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))
' "${PACKAGES[@]}" greenlet) || die "the arm64 root does not start under qemu-aarch64-static"
{
  echo "$WANT"
  echo "debian=$SUITE arm64 python3.11=$PYVER"
  echo "wheels: $versions"
  echo "qemu: $(qemu-aarch64-static --version | head -1)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - T0 ))s"
} > "$TMP/$STAMP_NAME"

if [ -e "$ROOT" ]; then
  OLD="$ROOT.old.$$"
  mv "$ROOT" "$OLD"
  mv "$TMP" "$ROOT"
  rm -rf "$OLD"
else
  mv "$TMP" "$ROOT"
fi
trap - EXIT
echo "arm64 root ready: $ROOT ($(du -sh "$ROOT" | cut -f1), built in $(( $(date +%s) - T0 ))s)"
