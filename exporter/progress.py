"""What the terminal shows during a run: one live status line on a TTY (step + elapsed,
redrawn in place, results kept above it), plain timestamped lines otherwise (CI logs), nothing
with --quiet (errors are printed by the CLI either way)."""

from __future__ import annotations

import os
import sys
import threading
import time

RESULT_WORDS = (": passed", ": failed", ": skipped", ": unsupported", ": uninformative", ": unverified", "converted in")


def _own_stderr():
    """A private copy of file descriptor 2: converters that silence their C++ logs redirect fd 2
    for a while (native_log.py), and a progress line printed from another thread meanwhile (the
    overlapped loop) must not vanish into that capture."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                         errors="replace")
    except (AttributeError, OSError, ValueError):  # no real descriptor (captured by a test harness)
        return sys.stderr


class Progress:
    def __init__(self, *, quiet: bool = False, stream=None, tty: bool | None = None, tick: float = 0.5):
        self.stream = stream or _own_stderr()
        self.quiet = quiet
        self.tty = (self.stream.isatty() if tty is None else tty) and not quiet
        self.start = time.perf_counter()
        self.current = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None
        if self.tty:
            self._ticker = threading.Thread(target=self._tick, args=(tick,), daemon=True)
            self._ticker.start()

    def elapsed(self) -> str:
        return f"[{time.perf_counter() - self.start:6.1f}s]"

    def __call__(self, line: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if not self.tty:
                print(f"{self.elapsed()} {line}", file=self.stream, flush=True)
                return
            stripped = line.strip()
            if any(w in stripped for w in RESULT_WORDS) or not line.startswith(" "):
                self._clear()
                print(f"{self.elapsed()} {line}", file=self.stream, flush=True)
            self.current = stripped
            self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            with self._lock:
                self._clear()

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        if self.current:
            self.stream.write(f"\r\x1b[2K{self.elapsed()} … {self.current}"[:200])
            self.stream.flush()

    def _clear(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()
