"""`flask-http`: the generated Flask app (target `flask`), run under real gunicorn on
127.0.0.1 and asked over real HTTP.

`load(app_dir)` starts gunicorn on a free port and waits for /readyz; `predict` sends the same
batch in every wire format the app speaks (row JSON, columnar JSON, base64 values, an .npy/.npz
body) and requires all of them to give the same answer, which parity then compares with Keras;
`close()` stops gunicorn with SIGTERM (graceful), then SIGKILL if it hangs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .base import Runtime, module_missing, register_runtime

READY_TIMEOUT_S = 60.0


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
        self.log = tempfile.NamedTemporaryFile(prefix="kexport-gunicorn-", suffix=".log", delete=False)
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
            text = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        except OSError:
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
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
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
        meta = json.loads((app_dir / "model" / "model.json").read_text())
        self.inputs = meta["signature"]["inputs"]
        self.outputs = meta["signature"]["outputs"]
        self.server = GunicornServer(app_dir, workers=workers)
        try:
            self.server.wait_ready()
        except Exception:
            self.server.stop()
            raise
        self.predict_url = f"{self.server.url}/v1/models/{meta['name']}:predict"

    def _post(self, what: str, body: bytes, ctype: str, accept: str = "application/json"):
        status, rtype, data = http("POST", self.predict_url, body, {"Content-Type": ctype, "Accept": accept})
        if status != 200:
            raise RuntimeError(f"flask-http: HTTP {status} for the {what} request: {data[:300].decode(errors='replace')}")
        return rtype, data

    def _json(self, what: str, doc: dict) -> dict:
        _, data = self._post(what, json.dumps(doc).encode(), "application/json")
        return json.loads(data)

    def predict(self, inputs):
        names = [t["name"] for t in self.inputs]
        outs = [t["name"] for t in self.outputs]
        x = {n: np.asarray(inputs[n]) for n in names}
        n_rows = len(x[names[0]])
        one_in, one_out = len(names) == 1, len(outs) == 1

        rows = x[names[0]].tolist() if one_in else [{n: x[n][i].tolist() for n in names} for i in range(n_rows)]
        preds = self._json("row-format", {"instances": rows})["predictions"]
        answer = {outs[0]: preds} if one_out else {o: [p[o] for p in preds] for o in outs}
        answer = self._typed(answer)

        cols = self._json("columnar", {"inputs": x[names[0]].tolist() if one_in else {n: x[n].tolist() for n in names}})
        self._same("columnar JSON", answer, self._typed({outs[0]: cols["outputs"]} if one_out else cols["outputs"]))

        if all(None not in t["shape"][1:] for t in self.inputs):
            b64 = {n: {"b64": base64.b64encode(x[n].astype(np.dtype(t["dtype"]).newbyteorder("<")).tobytes()).decode()}
                   for n, t in zip(names, self.inputs)}
            doc = self._json("b64", {"inputs": b64[names[0]] if one_in else b64})
            self._same("b64 values", answer, self._typed({outs[0]: doc["outputs"]} if one_out else doc["outputs"]))

        buf = io.BytesIO()
        if one_in:
            np.save(buf, x[names[0]])
        else:
            np.savez(buf, **x)
        rtype, data = self._post("npy", buf.getvalue(), "application/x-npy" if one_in else "application/x-npz",
                                 accept="application/x-npy" if one_out else "application/x-npz")
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        binary = {outs[0]: loaded} if one_out else {o: loaded[o] for o in outs}
        self._same(f"{rtype} body", answer, binary)
        return answer

    def _typed(self, answer: dict) -> dict:
        return {t["name"]: np.asarray(answer[t["name"]], dtype=t["dtype"]) for t in self.outputs}

    @staticmethod
    def _same(what: str, want: dict, got: dict) -> None:
        """Every wire format carries the same float32 bits, so the answers must be identical."""
        for k, v in want.items():
            g = np.asarray(got[k])
            if g.shape != v.shape or not np.array_equal(g, v):
                diff = float(np.max(np.abs(g.astype(np.float64) - v))) if g.shape == v.shape else "shape"
                raise RuntimeError(f"flask-http: the {what} answer for '{k}' differs from the row-format answer ({diff})")

    def close(self):
        self.server.stop()
