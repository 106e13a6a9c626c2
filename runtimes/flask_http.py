"""`flask-http`: the generated Flask app (target `flask`), run under real gunicorn on
127.0.0.1 and asked over real HTTP.

`load(app_dir)` starts gunicorn on a free port and waits for /readyz; `predict` sends the same
batch in every wire format the app speaks (row JSON, columnar JSON, base64 values, an .npy/.npz
body, the v2 protocol's binary tensors) and requires all of them to give the same answer, which
parity then compares with Keras; `close()` stops gunicorn with SIGTERM (graceful), then SIGKILL
if it hangs.

Every request stays within the app's MAX_CONTENT_LENGTH (model.json): the batch is split into
as many requests as each format needs (JSON numbers of a 224x224x3 image take ~3 MB a row), and
a format of which not even one row fits is left out (the binary ones always fit then).

String inputs (Keras "string") go as JSON strings in the row and columnar formats and as v2
BYTES tensors (binary, length-prefixed); .npy bodies and whole-value b64 carry numbers only, so
those formats are left out for such models, as b64 is for free dimensions.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from .base import Runtime, module_missing, register_runtime

READY_TIMEOUT_S = 60.0
DEFAULT_MAX_CONTENT_LENGTH = 16 * 1024 * 1024


@register_runtime
class FlaskHttpRuntime(Runtime):
    name = "flask-http"
    install_hint = "pip install 'kexport[serve]' (flask, gunicorn, onnxruntime)"

    def available(self):
        for module, pip_name in (("flask", "flask"), ("gunicorn", "gunicorn")):
            reason = module_missing(module, pip_name)
            if reason:
                return reason
        if sys.platform == "win32":
            return "gunicorn does not run on Windows"
        return None

    def load(self, path, **options):
        return FlaskHttpSession(Path(path), workers=options.get("workers", 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    """The app folder under `python -m gunicorn`, as its README runs it (config from
    gunicorn.conf.py), bound to 127.0.0.1 on a free port. Also used by tests and benchmarks."""

    def __init__(self, app_dir: Path, *, workers: int = 1, env: dict | None = None, extra_args=()):
        self.app_dir = Path(app_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # gunicorn's log: a file already unlinked (read through its descriptor), so no signal that
        # ends this process, SIGKILL included, can leave it behind; appending, so reading the tail
        # never moves gunicorn's write position.
        self.log = tempfile.TemporaryFile(mode="a+b", prefix="kexport-gunicorn-", suffix=".log")
        full_env = {**os.environ, "WEB_CONCURRENCY": str(workers), **(env or {})}
        full_env.pop("PYTHONPATH", None)  # the app must stand alone: no kexport on its path
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", *extra_args],
            cwd=self.app_dir, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from process start to /readyz answering 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with code {self.proc.returncode} before /readyz: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the app in {self.app_dir} was not ready within {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            text = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16))).decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return " | ".join(text[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60.0):
    """(status, content-type, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


class FlaskHttpSession:
    def __init__(self, app_dir: Path, workers: int = 1):
        meta = json.loads((app_dir / "model" / "model.json").read_text(encoding="utf-8"))
        self.inputs = meta["signature"]["inputs"]
        self.outputs = meta["signature"]["outputs"]
        self.limit = int(meta.get("max_content_length", DEFAULT_MAX_CONTENT_LENGTH))
        self.server = GunicornServer(app_dir, workers=workers)
        try:
            self.server.wait_ready()
        except Exception:
            self.server.stop()
            raise
        name = urllib.parse.quote(meta["name"], safe="")  # any file name is a model name
        self.predict_url = f"{self.server.url}/v1/models/{name}:predict"
        self.infer_url = f"{self.server.url}/v2/models/{name}/infer"

    def _post(self, what: str, url: str, body: bytes, headers: dict):
        """(response headers, body) of a 200 answer; anything else is an error naming the format."""
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60.0) as r:
                return r.headers, r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"flask-http: HTTP {e.code} for the {what} request: "
                               f"{e.read()[:300].decode(errors='replace')}") from None

    def _chunked(self, what: str, x: dict, encode, decode):
        """Send x in as few requests as keep every body within the app's limit; None when not
        even one row fits this format."""
        n = len(next(iter(x.values())))
        # rows per request from one row's size (encoding the whole batch first cost more than
        # the requests for image-sized JSON); a chunk that still comes out too big is halved
        one = len(encode({k: v[:1] for k, v in x.items()})[0])
        if one > self.limit:
            return None
        rows = min(n, max(1, int(self.limit * 0.9 / one)))
        parts = []
        for start in range(0, n, rows):
            chunk = {k: v[start:start + rows] for k, v in x.items()}
            body, headers = encode(chunk)
            if len(body) > self.limit:  # rows vary in JSON length: halve this chunk
                half = max(1, len(next(iter(chunk.values()))) // 2)
                sub = [self._chunked(what, {k: v[i:i + half] for k, v in chunk.items()}, encode, decode)
                       for i in range(0, len(next(iter(chunk.values()))), half)]
                if any(p is None for p in sub):
                    return None
                parts.extend(sub)
                continue
            answer_headers, data = self._post(what, self.infer_url if what.startswith("v2") else self.predict_url,
                                              body, headers)
            parts.append(decode(answer_headers, data))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict(self, inputs):
        names = [t["name"] for t in self.inputs]
        outs = [t["name"] for t in self.outputs]
        x = {n: np.asarray(inputs[n]) for n in names}
        one_in, one_out = len(names) == 1, len(outs) == 1
        as_json = {"Content-Type": "application/json", "Accept": "application/json"}

        def rows_body(c):
            n_rows = len(c[names[0]])
            rows = c[names[0]].tolist() if one_in else [{n: c[n][i].tolist() for n in names} for i in range(n_rows)]
            return json.dumps({"instances": rows}).encode(), as_json

        def rows_answer(_, data):
            preds = json.loads(data)["predictions"]
            return self._typed({outs[0]: preds} if one_out else {o: [p[o] for p in preds] for o in outs})

        def cols_body(c):
            return json.dumps({"inputs": c[names[0]].tolist() if one_in else {n: c[n].tolist() for n in names}}).encode(), as_json

        def cols_answer(_, data):
            got = json.loads(data)["outputs"]
            return self._typed({outs[0]: got} if one_out else got)

        def b64_body(c):
            b64 = {n: {"b64": base64.b64encode(c[n].astype(numpy_dtype(t["dtype"]).newbyteorder("<")).tobytes()).decode()}
                   for n, t in zip(names, self.inputs)}
            return json.dumps({"inputs": b64[names[0]] if one_in else b64}).encode(), as_json

        def npy_body(c):
            buf = io.BytesIO()
            if one_in:
                np.save(buf, c[names[0]])
            else:
                np.savez(buf, **c)
            return buf.getvalue(), {"Content-Type": "application/x-npy" if one_in else "application/x-npz",
                                    "Accept": "application/x-npy" if one_out else "application/x-npz"}

        def npy_answer(_, data):
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            return {outs[0]: loaded} if one_out else {o: loaded[o] for o in outs}

        def v2_body(c):
            raws = [v2_bytes(c[n], t["dtype"]) for n, t in zip(names, self.inputs)]
            tensors = [{"name": n, "shape": list(c[n].shape), "datatype": _V2[t["dtype"]],
                        "parameters": {"binary_data_size": len(raw)}}
                       for n, t, raw in zip(names, self.inputs, raws)]
            header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
            return header + b"".join(raws), {"Inference-Header-Content-Length": str(len(header))}

        def v2_json_body(c):
            tensors = [{"name": n, "shape": list(c[n].shape), "datatype": _V2[t["dtype"]], "data": c[n].tolist()}
                       for n, t in zip(names, self.inputs)]
            return json.dumps({"inputs": tensors}).encode(), as_json

        def v2_json_answer(_, data):
            tensors = json.loads(data)["outputs"]
            typed = self._typed({t["name"]: t["data"] for t in tensors})
            return {t["name"]: typed[t["name"]].reshape(t["shape"]) for t in tensors}

        def v2_answer(headers, data):
            return _v2_outputs(data, int(headers["Inference-Header-Content-Length"]))

        strings = any(t["dtype"] == "string" for t in self.inputs)
        formats = [("row-format", rows_body, rows_answer), ("columnar JSON", cols_body, cols_answer)]
        if all(None not in t["shape"][1:] for t in self.inputs) and not strings:
            formats.append(("b64 values", b64_body, cols_answer))
        if not strings:  # the app refuses .npy/.npz for string inputs (400), checked by its tests
            formats.append(("npy body", npy_body, npy_answer))
        formats.append(("v2 binary", v2_body, v2_answer))
        if strings:
            formats.append(("v2 JSON", v2_json_body, v2_json_answer))
        answer = None
        for what, encode, decode in formats:
            got = self._chunked(what, x, encode, decode)
            if got is None:
                continue  # not even one row of this format fits MAX_CONTENT_LENGTH
            if answer is None:
                answer = got
            else:
                self._same(what, answer, got)
        if answer is None:
            raise RuntimeError(f"flask-http: one example does not fit MAX_CONTENT_LENGTH={self.limit} in any format")
        return answer

    def _typed(self, answer: dict) -> dict:
        return {t["name"]: np.asarray(answer[t["name"]], dtype=numpy_dtype(t["dtype"])) for t in self.outputs}

    @staticmethod
    def _same(what: str, want: dict, got: dict) -> None:
        """Every wire format carries the same float32 bits, so the answers must be identical."""
        for k, v in want.items():
            g = np.asarray(got[k])
            if g.shape != v.shape or not np.array_equal(g, v):
                numeric = g.shape == v.shape and g.dtype.kind in "biuf" and v.dtype.kind in "biuf"
                diff = float(np.max(np.abs(g.astype(np.float64) - v))) if numeric else "shape or values"
                raise RuntimeError(f"flask-http: the {what} answer for '{k}' differs from the first format's ({diff})")

    def close(self):
        self.server.stop()


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a signature dtype name: Keras' "string" is an object array of str
    (np.dtype("string") raises "data type 'string' not understood")."""
    return np.dtype(object) if name == "string" else np.dtype(name)


_V2 = {"bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
       "float16": "FP16", "float32": "FP32", "float64": "FP64", "string": "BYTES"}
_V2_NUMPY = {v: numpy_dtype(k).newbyteorder("<") if k not in ("bool", "string") else numpy_dtype(k)
             for k, v in _V2.items()}


def v2_bytes(arr: np.ndarray, dtype: str) -> bytes:
    """A tensor in the v2 binary data extension: raw little-endian values, or for BYTES each
    element as a 4-byte little-endian length and its UTF-8 bytes."""
    if dtype != "string":
        return np.ascontiguousarray(np.asarray(arr).astype(numpy_dtype(dtype).newbyteorder("<"))).tobytes()
    items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in np.asarray(arr).reshape(-1)]
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def _bytes_elements(raw: bytes, count: int) -> np.ndarray:
    out, pos = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + length].decode("utf-8"))
        pos += 4 + length
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def _v2_outputs(data: bytes, header_length: int) -> dict:
    """The outputs of a v2 response with binary tensors (JSON header, then the raw bytes)."""
    doc = json.loads(data[:header_length])
    out, offset = {}, header_length
    for t in doc["outputs"]:
        size = t["parameters"]["binary_data_size"]
        raw = data[offset:offset + size]
        count = int(np.prod(t["shape"], dtype=np.int64))
        flat = _bytes_elements(raw, count) if t["datatype"] == "BYTES" else np.frombuffer(raw, _V2_NUMPY[t["datatype"]])
        out[t["name"]] = flat.reshape(t["shape"])
        offset += size
    return out
