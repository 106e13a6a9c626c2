"""Run any registered runtime in a child Python process and talk to it over pipes.

Used for runtimes marked `isolate = True` (LiteRT): the child never imports TensorFlow, so the
artifact runs exactly as on a device. Frames are 8-byte length + an .npz payload (or JSON error).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np


def _send(stream, payload: bytes):
    stream.write(struct.pack("<Q", len(payload)))
    stream.write(payload)
    stream.flush()


def _recv(stream) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("runtime worker closed its pipe")
    (n,) = struct.unpack("<Q", head)
    return stream.read(n)


def _pack(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return b"N" + buf.getvalue()


def _unpack(payload: bytes) -> dict:
    if payload[:1] == b"E":
        raise RuntimeError(json.loads(payload[1:])["error"])
    with np.load(io.BytesIO(payload[1:]), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class IsolatedSession:
    """predict() forwards to a worker process; close() ends it."""

    def __init__(self, runtime: str, path: str, options: dict | None = None, timeout: float = 300,
                 *, python: list[str] | None = None, env: dict | None = None):
        # python/env: another interpreter for the worker and its whole environment (the arm64
        # root under qemu, runtimes/litert_arm64.py); by default this interpreter.
        env = dict(os.environ) if env is None else env
        self.proc = subprocess.Popen(
            [*(python or [sys.executable]), "-m", f"{__package__}.isolated", runtime, str(path),
             json.dumps(options or {})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        hello = json.loads(_unpack_text(_recv(self.proc.stdout), self.proc))
        self.tensorflow_loaded = hello["tensorflow_loaded"]

    def predict(self, inputs):
        try:
            _send(self.proc.stdin, _pack({k: np.asarray(v) for k, v in inputs.items()}))
            return _unpack(_recv(self.proc.stdout))
        except (EOFError, BrokenPipeError) as e:  # the worker died: say how, from its last words
            code = self.proc.wait(timeout=10)
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"runtime worker exited with code {code}" + (f": {err[-1]}" if err else "")) from e

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _unpack_text(payload: bytes, proc) -> str:
    if not payload:
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        raise RuntimeError(err[-1] if err else "runtime worker died")
    if payload[:1] == b"E":
        raise RuntimeError(json.loads(payload[1:])["error"])
    return payload[1:].decode()


def _worker(runtime: str, path: str, options: str):
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # keep library prints off the protocol pipe
    from . import get_runtime

    try:
        session = get_runtime(runtime).load(path, **json.loads(options))
    except Exception as e:  # reported to the parent as one line
        _send(out, b"E" + json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        return
    hello = {"tensorflow_loaded": "tensorflow" in sys.modules}
    _send(out, b"T" + json.dumps(hello).encode())
    inp = sys.stdin.buffer
    while True:
        try:
            req = _recv(inp)
        except EOFError:
            break
        try:
            _send(out, _pack(session.predict(_unpack(req))))
        except Exception as e:
            _send(out, b"E" + json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
    session.close()


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
