"""TF.js under Node: runtimes `tfjs-node-cpu` and `tfjs-node-wasm`.

One long-lived Node process per backend runs every prediction of a Python process (started on
first use, closed atexit): starting Node and TF.js costs ~0.5-1 s, a prediction milliseconds.
The runner (runtimes/tfjs_node/runner.js) speaks length-framed JSON + raw tensor bytes over
stdin/stdout; every wait has a timeout, so a hung Node is an error, not a hang.

`@tensorflow/tfjs-node` is not used: its install downloads a native binary, which does not
work offline. The pure-JS cpu backend and the wasm backend are what browsers run too.
"""

from __future__ import annotations

import atexit
import json
import queue
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from .base import Runtime, register_runtime

RUNNER_DIR = Path(__file__).resolve().parent / "tfjs_node"
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


class NodeProcess:
    """One `node runner.js BACKEND` child; requests are serialised by a lock."""

    def __init__(self, backend: str):
        self.backend = backend
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            ["node", str(RUNNER_DIR / "runner.js"), backend], cwd=str(RUNNER_DIR),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.frames: queue.Queue = queue.Queue()
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.lock = threading.Lock()
        hello, _ = self._wait(START_TIMEOUT, "start")
        self.hello = hello
        # wall time from spawn to "backend ready", as a user's Node service would see it
        self.start_seconds = round(time.perf_counter() - t0, 3)

    def _read_stdout(self):
        out = self.proc.stdout
        while True:
            head = out.read(8)
            if len(head) < 8:
                self.frames.put(None)
                return
            (n,) = struct.unpack("<Q", head)
            self.frames.put(out.read(n))

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.decode(errors="replace").rstrip()])[-20:]

    def _wait(self, timeout: float, what: str):
        try:
            frame = self.frames.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise NodeError(f"TF.js {self.backend} runner did not answer '{what}' within {timeout:.0f}s") from None
        if frame is None:
            tail = [ln for ln in self.stderr_tail if ln.strip()]
            raise NodeError(f"TF.js {self.backend} runner exited during '{what}'" + (f": {tail[-1]}" if tail else ""))
        (hlen,) = struct.unpack("<I", frame[:4])
        header = json.loads(frame[4 : 4 + hlen])
        if not header.get("ok"):
            raise NodeError(header.get("error") or "TF.js runner error")
        return header, frame[4 + hlen :]

    def call(self, header: dict, body: bytes = b"", timeout: float = CALL_TIMEOUT):
        with self.lock:
            if self.proc.poll() is not None:
                raise NodeError(f"TF.js {self.backend} runner is not running (exit code {self.proc.returncode})")
            h = json.dumps(header).encode()
            payload = struct.pack("<I", len(h)) + h + body
            try:
                self.proc.stdin.write(struct.pack("<Q", len(payload)) + payload)
                self.proc.stdin.flush()
            except BrokenPipeError as e:
                raise NodeError(f"TF.js {self.backend} runner closed its input") from e
            return self._wait(timeout, header.get("cmd", "?"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


_POOL: dict[str, NodeProcess] = {}
_POOL_LOCK = threading.Lock()


def node_process(backend: str) -> NodeProcess:
    """The shared Node process for `backend`, (re)started when needed."""
    with _POOL_LOCK:
        p = _POOL.get(backend)
        if p is None or not p.alive():
            p = _POOL[backend] = NodeProcess(backend)
        return p


@atexit.register
def _close_pool():
    for p in list(_POOL.values()):
        p.kill()
    _POOL.clear()


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


def read_model_json(path) -> dict:
    """model.json, with a one-line error naming the file when it is broken."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise NodeError(f"{p}: not a readable TF.js model.json ({type(e).__name__}: {e}); re-run `kexport tfjs`") from e
    if not isinstance(data, dict) or "weightsManifest" not in data or "modelTopology" not in data:
        raise NodeError(f"{p}: not a TF.js model.json (no modelTopology/weightsManifest); re-run `kexport tfjs`")
    return data


def output_names(model_json: dict) -> list[tuple[str, str]]:
    """[(tfjs tensor name, Keras output name)] from a graph model's signature (TF.js reorders
    multi-output models, so outputs are fetched by name, never by position)."""
    sig = model_json.get("signature") or {}
    return [(v["name"].split(":")[0] if v["name"].endswith(":0") else v["name"], k)
            for k, v in sorted((sig.get("outputs") or {}).items())]


def layers_fetch(runtime_options: dict) -> list[list[str]]:
    """[(layers output name, Keras output name)] in the layers model's output order (from the
    target's `output_map`): TF.js Sequential models expose no output names, so by position."""
    return [[k, v] for k, v in (runtime_options.get("output_map") or {}).items()]


def input_names(model_json: dict) -> dict[str, str]:
    """{Keras input name: tfjs tensor name} for a graph model."""
    sig = model_json.get("signature") or {}
    return {k: (v["name"][:-2] if v["name"].endswith(":0") else v["name"])
            for k, v in (sig.get("inputs") or {}).items()}


class TfjsNodeSession:
    def __init__(self, backend: str, path: str, fmt: str = "graph", output_map: dict | None = None):
        model_json = read_model_json(path)
        self.path = str(Path(path) / "model.json") if Path(path).is_dir() else str(path)
        self.format = fmt
        self.proc = node_process(backend)
        head, _ = self.proc.call({"cmd": "load", "path": self.path, "format": fmt})
        self.id = head["id"]
        self.load_seconds = head["seconds"]
        self.fetch = output_names(model_json) if fmt == "graph" else layers_fetch({"output_map": output_map})
        self.feeds = input_names(model_json) if fmt == "graph" else {}
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


@register_runtime
class TfjsNodeCpu(_TfjsNode):
    name = "tfjs-node-cpu"
    backend = "cpu"


@register_runtime
class TfjsNodeWasm(_TfjsNode):
    name = "tfjs-node-wasm"
    backend = "wasm"


def timing(path, inputs: dict[str, np.ndarray], *, fmt: str = "graph", output_map=None, repeats: int = 5,
           budget_s: float = 2.0) -> dict:
    """Node start, model load and single-sample prediction latency per backend (for report.json;
    benchmarks/bench_tfjs.py measures longer). At most `repeats` timed calls after a warm-up, fewer
    when they exceed `budget_s` (a big model on the pure-JS cpu backend takes seconds per call).
    A backend that cannot run gives {"error": reason}."""
    reason = node_missing()
    if reason:
        return {"cpu": {"skipped": reason}, "wasm": {"skipped": reason}}
    one = {k: np.asarray(v)[:1] for k, v in inputs.items()}
    out = {}
    for backend in ("cpu", "wasm"):
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
            out[backend] = {"node_start_s": proc.start_seconds, "load_s": round(s.load_seconds, 4),
                            "first_predict_ms": round(s.predict_seconds[0] * 1e3, 3),
                            "predict_ms_median": round(lat[len(lat) // 2] * 1e3, 3), "timed_calls": len(lat)}
        except NodeError as e:
            out[backend] = {"error": str(e)}
    return out

