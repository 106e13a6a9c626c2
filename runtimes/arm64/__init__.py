"""The arm64 Debian bookworm userland (64-bit Raspberry Pi OS is bookworm arm64), run on this
machine under qemu user-mode emulation.

`build_root.sh` (beside this file; `make arm64-root`) builds the root once, outside the repo.
`guest_python()` is the argv that starts the root's Python 3.11 under `qemu-aarch64-static -L ROOT`:
no binfmt_misc, no chroot, no mount, so it runs in containers and CI. qemu's `-L` prefix makes
the guest see the root's files first (its /usr/lib, its /proc/cpuinfo) and this machine's
otherwise (the artifact, the repo, /tmp), so artifacts need no copying.

The guest CPU is a Cortex-A72 (Raspberry Pi 4): LiteRT's XNNPACK and onnxruntime pick their
kernels from the CPU's features, so they run the Pi 4's code paths (NEON, no dot-product, no SVE),
not the newest ones qemu could emulate.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

QEMU = "qemu-aarch64-static"
CPU = "cortex-a72"
STAMP = ".kexport-arm64-root"
GUEST_PYTHON = "usr/bin/python3.11"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build_root.sh"
DEVICE = "arm64 Debian bookworm, Python 3.11, Cortex-A72 (Raspberry Pi 4) emulated by qemu-user on this host"
INSTALL_HINT = "make arm64-root (apt-get install qemu-user-static debootstrap, then builds the root, about a minute)"


def root_dir() -> Path:
    """Where the root lives: $KEXPORT_ARM64_ROOT, else ~/.cache/kexport/arm64-root."""
    env = os.environ.get("KEXPORT_ARM64_ROOT")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "kexport" / "arm64-root"


def unavailable() -> str | None:
    """None when the emulated root can run here, else the reason (for skipped rows and doctor)."""
    import sys

    if not sys.platform.startswith("linux"):
        return f"qemu user-mode emulation needs Linux (this is {sys.platform})"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (apt-get install qemu-user-static)"
    root = root_dir()
    if not (root / STAMP).is_file() or not (root / GUEST_PYTHON).is_file():
        return f"the arm64 root is not built at {root} (run make arm64-root)"
    return None


def guest_python(root: Path | None = None) -> list[str]:
    """argv prefix that runs the root's python3.11 under emulation."""
    root = root or root_dir()
    return [shutil.which(QEMU) or QEMU, "-cpu", CPU, "-L", str(root), str(root / GUEST_PYTHON)]


def guest_env(extra: dict | None = None) -> dict:
    """A clean environment for the guest: nothing of the host's Python or library paths leaks in
    (an x86 numpy on PYTHONPATH would shadow the root's)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "TF_CPP_MIN_LOG_LEVEL")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env
