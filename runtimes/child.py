"""A long-lived child process that answers requests on stdin/stdout: the Node runner of
tfjs_node.py and the JVM runner of jvm_runner.py.

Both start a child once per Python process (starting Node or a JVM costs a second or more, a
prediction milliseconds), serialise requests with a lock, wait for every answer with a timeout
(a hung child is killed and reported, never waited on forever), keep the last lines of its
stderr for the error message, and start a new child when the previous one died. They differ only
in framing, which the adapter passes in:

- `read(stream, note)`: a generator of raw messages from the child's stdout until EOF; `note(line)`
  keeps a stray line (a native library writing to fd 1) for the error message;
- `decode(message)`: the reply, or raise the adapter's error when the child says it failed;
- `call(payload)`: bytes already framed by the adapter;
- `last_words(stderr tail)`: what to say when the child died (default: its last line).
"""

from __future__ import annotations

import atexit
import queue
import subprocess
import threading
import time
from typing import Callable, Iterator

TAIL_LINES = 20


def last_line(tail: list[str]) -> str | None:
    """The child's last words: its last stderr line with any text in it."""
    lines = [ln for ln in tail if any(c.isalnum() for c in ln)]
    return lines[-1] if lines else None


class Child:
    """One child process; `hello` is its first message (decoded), `start_seconds` the wall time
    from spawn to that message."""

    def __init__(self, argv: list[str], *, cwd: str, label: str, error: type[Exception],
                 read: Callable[..., Iterator], decode: Callable, start_timeout: float, kill_wait: float,
                 last_words: Callable[[list[str]], str | None] | None = None):
        self.label = label
        self.last_words = last_words or last_line
        self.error = error
        self.decode = decode
        self.kill_wait = kill_wait
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.messages: queue.Queue = queue.Queue()
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._read_stdout, args=(read,), daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.lock = threading.Lock()
        self.hello = self.wait(start_timeout, "start")
        self.start_seconds = round(time.perf_counter() - t0, 3)

    def note(self, line: str) -> None:
        if line:
            self.stderr_tail = (self.stderr_tail + [line])[-TAIL_LINES:]

    def _read_stdout(self, read):
        try:
            for message in read(self.proc.stdout, self.note):
                self.messages.put(message)
        finally:
            self.messages.put(None)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.note(raw.decode(errors="replace").rstrip())

    def wait(self, timeout: float, what: str):
        """The next reply, decoded; the child is killed when it does not answer in time."""
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise self.error(f"{self.label} did not answer '{what}' within {timeout:.0f}s (killed)") from None
        if message is None:
            words = self.last_words(list(self.stderr_tail))
            raise self.error(f"{self.label} exited during '{what}'" + (f": {words}" if words else ""))
        return self.decode(message)

    def call(self, payload: bytes, what: str, timeout: float):
        with self.lock:
            if self.proc.poll() is not None:
                raise self.error(f"{self.label} is not running (exit code {self.proc.returncode})")
            try:
                self.proc.stdin.write(payload)
                self.proc.stdin.flush()
            except BrokenPipeError as e:
                raise self.error(f"{self.label} closed its input") from e
            return self.wait(timeout, what)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        """Close its input (the runners exit on EOF), kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=self.kill_wait)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=self.kill_wait)


class Pool:
    """Shared children by key, (re)started when missing or dead, all closed at exit."""

    def __init__(self, start: Callable[[object], Child]):
        self.start = start
        self.procs: dict = {}
        self.lock = threading.Lock()
        atexit.register(self.close)

    def get(self, key=None) -> Child:
        with self.lock:
            p = self.procs.get(key)
            if p is None or not p.alive():
                p = self.procs[key] = self.start(key)
            return p

    def running(self, key=None) -> Child | None:
        p = self.procs.get(key)
        return p if p is not None and p.alive() else None

    def close(self):
        for p in list(self.procs.values()):
            p.kill()
        self.procs.clear()
