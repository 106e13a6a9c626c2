"""Temporary directories named after the process that owns them: `<prefix>pid<PID>.<START>-<random>`
(START = the process start time, so a recycled pid is not mistaken for the owner). A run killed
with SIGKILL cannot clean up; the next run's sweep (kexport.scratch) removes the directories whose
owner is gone. Here, not in the core, because runtimes make such directories too (Spark's log,
the JVM's scratch, the arm64 shim) and never import the core."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def start_time(pid: int) -> int:
    """Clock ticks since boot when `pid` started (Linux); 0 where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name (field 2) may hold spaces
    except (IndexError, ValueError):
        return 0


def owner_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"pid{pid}.{start_time(pid)}-"


def temp_dir(prefix: str, dir: str | os.PathLike | None = None) -> Path:
    """`tempfile.mkdtemp` whose name records this process, so a sweep knows when it is abandoned."""
    return Path(tempfile.mkdtemp(prefix=prefix + owner_tag(), dir=dir))
