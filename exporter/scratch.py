"""Temporary directories that a later run can recognise as abandoned.

A run killed with SIGKILL cannot clean up, so every kexport temporary directory carries its owner in
its name: `<prefix>pid<PID>.<START>-<random>` (START = the process start time, so a recycled pid is
not mistaken for the owner). `sweep(dir)` at the start of a run removes those whose owner is gone.

    tmp = temp_dir(".kexport-tflite-", dir=out)   # OUT/.kexport-tflite-pid4242.918273-k2j3h4
    sweep(out)                                    # removes OUT/.kexport-* of dead processes
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .runtimes.owned import owner_tag, temp_dir  # noqa: F401  (one implementation, shared with the runtimes)
from .runtimes.owned import start_time as _start_time

# `.kexport-tflite-pid4242.918273-abc123`, `kexport-work-pid4242.918273-abc123`
OWNED = re.compile(r"^\.?kexport-(?:[A-Za-z0-9_.-]*?-)?pid(\d+)\.(\d+)-[A-Za-z0-9_]+$")
# written by kexport before owners were recorded: OUT/.kexport-<target>-XXXXXXXX, $TMPDIR/kexport-XXXXXXXX
LEGACY_OUT = re.compile(r"^\.kexport-(?:[a-z0-9-]+)-[a-z0-9_]{8}$")
LEGACY_TMP = re.compile(r"^kexport-[a-z0-9_]{8}$")
LEGACY_AGE_S = 24 * 3600  # only abandoned for a day is surely abandoned when no owner is recorded


def alive(pid: int, start: int) -> bool:
    """Is the process that created the directory still running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    if start and Path("/proc").is_dir():
        now = _start_time(pid)
        return now == 0 or now == start  # a different start time: the pid was recycled
    return True


def work_dir() -> Path:
    """The per-run work directory in $TMPDIR; stale ones of killed runs are swept first."""
    sweep(tempfile.gettempdir())
    return temp_dir("kexport-work-")


def stale(entry: Path, now: float | None = None) -> bool:
    name = entry.name
    m = OWNED.match(name)
    if m:
        return not alive(int(m.group(1)), int(m.group(2)))
    if LEGACY_OUT.match(name) or (LEGACY_TMP.match(name) and _looks_like_workdir(entry)):
        try:
            return (now or time.time()) - entry.stat().st_mtime > LEGACY_AGE_S
        except OSError:
            return False
    return False


def _looks_like_workdir(entry: Path) -> bool:
    try:
        return all(p.name.startswith("saved_model") for p in entry.iterdir())
    except OSError:
        return False


def sweep(directory: str | os.PathLike) -> list[Path]:
    """Remove kexport temporaries in `directory` whose owner process is gone. Returns them."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.lstrip(".").startswith("kexport-") or entry.is_symlink() or not entry.is_dir():
            continue
        if stale(entry, now):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
