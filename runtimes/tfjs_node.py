"""TF.js under Node: runtimes `tfjs-node-cpu` and `tfjs-node-wasm`.

One long-lived Node process per backend runs every prediction of a Python process (started on
first use, closed atexit): starting Node and TF.js costs ~0.5-1 s, a prediction milliseconds.
The runner (runtimes/tfjs_node/runner.js) speaks length-framed JSON + raw tensor bytes over
stdin/stdout; every wait has a timeout, so a hung Node is an error, not a hang.

`@tensorflow/tfjs-node` is not used: its install downloads a native binary, which does not
work offline. The pure-JS cpu backend and the wasm backend are what browsers run too.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np

from .base import Runtime, register_runtime
from .child import Child, Pool
from .tfjs_model import PACKAGES_DIR, feeds_and_fetch, read_model_json

RUNNER_DIR = PACKAGES_DIR  # runner.js next to its npm packages
START_TIMEOUT = 60.0
CALL_TIMEOUT = 300.0
INSTALL_HINT = "install Node.js >= 18 (apt-get install nodejs npm) and run `make node-deps` (npm ci in runtimes/tfjs_node)"


def node_missing() -> str | None:
    """Why the Node runner cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH; " + INSTALL_HINT
    for pkg in ("tfjs", "tfjs-backend-wasm"):
        if not (RUNNER_DIR / "node_modules" / "@tensorflow" / pkg / "package.json").exists():
            return f"npm package @tensorflow/{pkg} is not installed in {RUNNER_DIR}; run `make node-deps` (or `npm ci` in that folder)"
    return None


class NodeError(RuntimeError):
    pass


def _frames(stream, note):
    """Length-prefixed frames: 8-byte little-endian length, then the frame."""
    while True:
        head = stream.read(8)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        yield stream.read(n)


def _reply(frame: bytes):
    """(header, body): a frame is a 4-byte header length, the JSON header, raw tensor bytes."""
    (hlen,) = struct.unpack("<I", frame[:4])
    header = json.loads(frame[4 : 4 + hlen])
    if not header.get("ok"):
        raise NodeError(header.get("error") or "TF.js runner error")
    return header, frame[4 + hlen :]


class NodeProcess(Child):
    """One `node runner.js BACKEND` child (runtimes/child.py: lock, timeouts, restart)."""

    def __init__(self, backend: str):
        self.backend = backend
        super().__init__(["node", str(RUNNER_DIR / "runner.js"), backend], cwd=str(RUNNER_DIR),
                         label=f"TF.js {backend} runner", error=NodeError, read=_frames, decode=_reply,
                         start_timeout=START_TIMEOUT, kill_wait=5.0)
        # start_seconds: wall time from spawn to "backend ready", as a user's Node service would see it
        self.hello = self.hello[0]

    def call(self, header: dict, body: bytes = b"", timeout: float = CALL_TIMEOUT):
        h = json.dumps(header).encode()
        payload = struct.pack("<I", len(h)) + h + body
        return super().call(struct.pack("<Q", len(payload)) + payload, header.get("cmd", "?"), timeout)


_NODES = Pool(NodeProcess)
_POOL = _NODES.procs  # backend -> NodeProcess (benchmarks/bench_tfjs.py drops one to time a cold start)


def node_process(backend: str) -> NodeProcess:
    """The shared Node process for `backend`, (re)started when needed."""
    return _NODES.get(backend)


def _pack(inputs: dict[str, np.ndarray]):
    specs, parts, off = [], [], 0
    for name, a in inputs.items():
        a = np.asarray(a)
        if a.dtype == np.float64 or a.dtype == np.float16:
            a = a.astype(np.float32)
        elif a.dtype.kind in "iu":
            a = a.astype(np.int32)  # TF.js has no int64; ids/tokens fit int32
        elif a.dtype == np.bool_:
            a = a.astype(np.uint8)
        dtype = {"f": "float32", "i": "int32", "u": "bool"}[a.dtype.kind]
        b = np.ascontiguousarray(a).tobytes()
        specs.append({"name": name, "dtype": dtype, "shape": list(a.shape), "offset": off, "nbytes": len(b)})
        parts.append(b)
        off += len(b)
    return specs, b"".join(parts)


def unpack_tensors(specs: list[dict], body: bytes) -> dict[str, np.ndarray]:
    out = {}
    for s in specs:
        dt = {"float32": np.float32, "int32": np.int32, "bool": np.uint8}.get(s["dtype"], np.float32)
        raw = body[s["offset"] : s["offset"] + s["nbytes"]]
        out[s["name"]] = np.frombuffer(raw, dtype=dt).reshape(s["shape"]).copy()
    return out


class TfjsNodeSession:
    def __init__(self, backend: str, path: str, fmt: str = "graph", output_map: dict | None = None):
        model_json = read_model_json(path)
        self.path = str(Path(path) / "model.json") if Path(path).is_dir() else str(path)
        self.format = fmt
        self.proc = node_process(backend)
        head, _ = self.proc.call({"cmd": "load", "path": self.path, "format": fmt})
        self.id = head["id"]
        self.load_seconds = head["seconds"]
        self.feeds, self.fetch = feeds_and_fetch(model_json, fmt, output_map)
        self.predict_seconds: list[float] = []

    def predict(self, inputs):
        specs, body = _pack(inputs)
        for s in specs:
            s["feed"] = self.feeds.get(s["name"], s["name"])
        try:
            head, data = self.proc.call({"cmd": "predict", "id": self.id, "tensors": specs, "fetch": self.fetch}, body)
        except NodeError:
            # A failed kernel can leave the backend broken (wasm: "memory access out of bounds"):
            # the next session gets a fresh process rather than inheriting a corrupt heap.
            self.proc.kill()
            raise
        self.predict_seconds.append(head["seconds"])
        return unpack_tensors(head["tensors"], data)

    def close(self):
        if self.proc.alive():
            try:
                self.proc.call({"cmd": "dispose", "id": self.id}, timeout=30)
            except NodeError:
                pass


class _TfjsNode(Runtime):
    backend = ""
    install_hint = INSTALL_HINT

    def available(self):
        reason = node_missing()
        if reason:
            return reason
        # Starting the shared process is the real test (a broken Node or wasm build); it is
        # reused for every session afterwards, so this costs nothing extra.
        try:
            node_process(self.backend)
        except NodeError as e:
            return str(e)
        return None

    def load(self, path, **options):
        return TfjsNodeSession(self.backend, str(path), options.get("format", "graph"), options.get("output_map"))

    def prepare(self):
        if not node_missing():
            node_process(self.backend)  # the shared process, reused by available() and every session

    def timing(self, path, inputs, **options):
        return backend_timing(self.backend, path, inputs, fmt=options.get("format", "graph"),
                              output_map=options.get("output_map"))


@register_runtime
class TfjsNodeCpu(_TfjsNode):
    name = "tfjs-node-cpu"
    backend = "cpu"


@register_runtime
class TfjsNodeWasm(_TfjsNode):
    name = "tfjs-node-wasm"
    backend = "wasm"


def backend_timing(backend: str, path, inputs: dict[str, np.ndarray], *, fmt: str = "graph", output_map=None,
                   repeats: int = 5, budget_s: float = 2.0) -> dict:
    """Node start, model load and single-sample prediction latency on one backend (for report.json;
    benchmarks/bench_tfjs.py measures longer). At most `repeats` timed calls after a warm-up, fewer
    when they exceed `budget_s` (a big model on the pure-JS cpu backend takes seconds per call).
    A backend that cannot run gives {"error": reason}."""
    reason = node_missing()
    if reason:
        return {"skipped": reason}
    one = {k: np.asarray(v)[:1] for k, v in inputs.items()}
    try:
        proc = node_process(backend)
        s = TfjsNodeSession(backend, str(path), fmt, output_map)
        try:
            s.predict(one)  # warm-up: first call compiles kernels / allocates
            t0 = time.perf_counter()
            for _ in range(repeats):
                s.predict(one)
                if time.perf_counter() - t0 > budget_s:
                    break
        finally:
            s.close()
        lat = sorted(s.predict_seconds[1:])
        return {"node_start_s": proc.start_seconds, "load_s": round(s.load_seconds, 4),
                "first_predict_ms": round(s.predict_seconds[0] * 1e3, 3),
                "predict_ms_median": round(lat[len(lat) // 2] * 1e3, 3), "timed_calls": len(lat)}
    except NodeError as e:
        return {"error": str(e)}

