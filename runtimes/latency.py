"""Median single-sample latency of several artifacts in one runtime, measured side by side.

Runs in a child process (no TensorFlow, like the isolated LiteRT check: an imported TensorFlow
would also add its idle thread pools to the measurement). All artifacts are loaded first, then
timed in interleaved rounds, so a burst of load from other processes on a shared machine hits
every artifact alike and the ratio between them stays meaningful.

    python -m runtimes.latency SPEC.json   # prints one JSON line: {"ms": [...], "rounds": n}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(runtime: str, artifacts: list[tuple[str, dict]], sample: dict, *, budget_s: float = 2.0,
            max_rounds: int = 200, min_rounds: int = 5, timeout: float = 600, window: int = 0) -> dict:
    """{"ms": [median ms per artifact], "rounds": n, "error": None | reason}, run in a child process."""
    with tempfile.TemporaryDirectory(prefix="kexport-latency-") as tmp:
        np.savez(Path(tmp) / "sample.npz", **sample)
        spec = {"runtime": runtime, "artifacts": [[str(p), o] for p, o in artifacts],
                "sample": str(Path(tmp) / "sample.npz"), "budget_s": budget_s,
                "max_rounds": max_rounds, "min_rounds": min_rounds, "window": window}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        try:
            proc = subprocess.run([sys.executable, "-m", f"{__package__}.latency", str(Path(tmp) / "spec.json")],
                                  capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ms": None, "rounds": 0, "error": f"latency measurement exceeded {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["latency worker died"])[-1]
        return {"ms": None, "rounds": 0, "error": err[:300]}
    return json.loads(lines[-1])


def _worker(spec_path: str) -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the result line
    from . import get_runtime

    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["sample"], allow_pickle=False) as z:
        sample = {k: z[k] for k in z.files}
    rt = get_runtime(spec["runtime"])
    try:
        sessions = [rt.load(p, **o) for p, o in spec["artifacts"]]
    except Exception as e:  # reported as one line
        print(json.dumps({"ms": None, "rounds": 0, "error": f"{type(e).__name__}: {e}"[:300]}), file=out)
        return
    for s in sessions:  # warm-up: first calls allocate, pack weights, build XNNPACK plans
        for _ in range(3):
            s.predict(sample)
    times = [[] for _ in sessions]
    start = time.perf_counter()
    rounds = 0
    window = max(1, spec.get("window") or 0)
    while rounds < spec["max_rounds"] and (rounds < spec["min_rounds"] or
                                           time.perf_counter() - start < spec["budget_s"] * len(sessions)):
        for s, ts in zip(sessions, times):
            t0 = time.perf_counter()
            s.predict(sample)
            ts.append(time.perf_counter() - t0)
        rounds += 1
        if spec.get("window") and rounds >= max(spec["min_rounds"], 2 * window) and rounds % window == 0 \
                and all(_settled(ts, window) for ts in times):
            break
    for s in sessions:
        s.close()
    last = [ts[-2 * window:] if spec.get("window") else ts for ts in times]
    print(json.dumps({"ms": [round(float(np.median(ts)) * 1e3, 4) for ts in last], "rounds": rounds,
                      "stable": all(_settled(ts, window) for ts in times) if spec.get("window") else None,
                      "error": None}), file=out)


def _settled(ts: list, window: int, within: float = 0.05) -> bool:
    """The stability rule: the medians of the last two windows differ by less than 5%."""
    if len(ts) < 2 * window:
        return False
    a, b = float(np.median(ts[-2 * window:-window])), float(np.median(ts[-window:]))
    return abs(a - b) <= within * max(a, b)


if __name__ == "__main__":
    _worker(sys.argv[1])
