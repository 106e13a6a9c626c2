"""Benchmark the generated Flask server against its floor (the in-process runtime call) and its
peer (`mlflow models serve --env-manager local` on the same Keras model).

    .venv/bin/python benchmarks/bench_flask.py [--models digits,mobilenetv2] [--mlflow-python PATH]
                                              [--json OUT.json]

For each model: p50/p99 latency at batch 1 (one client, keep-alive) and throughput under 16
concurrent clients, for JSON and .npy bodies with micro-batching on and off; the same for the
in-process onnxruntime call; cold start (process start -> /readyz 200). MLflow runs from its own
virtualenv (`--mlflow-python`, default /tmp/mlflow-venv/bin/python) so the pinned stack is not
touched; when it cannot run, the reason is printed and recorded.

Not a test: numbers depend on the machine (they are written to docs/flask.md by hand).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from kexport.runtimes.flask_http import GunicornServer, free_port  # noqa: E402

CLIENTS = 16
BUDGET_S = 20.0  # per measurement: a slow server (MLflow's Keras predict) gets fewer requests


class Client:
    """A keep-alive HTTP/1.1 connection (http.client: little client-side overhead)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: bytes, ctype: str) -> bytes:
        try:
            self.conn.request("POST", path, body=body, headers={"Content-Type": ctype})
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed an idle keep-alive connection (gunicorn keepalive = 5 s): reconnect
            # once, as HTTP client libraries do
            self.conn.close()
            self.conn.request("POST", path, body=body, headers={"Content-Type": ctype})
            r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        return data


def stats(samples_s: list[float]) -> dict:
    a = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def latency(call, n: int, warm: int = 5) -> dict:
    for _ in range(warm):
        call()
    times = []
    deadline = time.perf_counter() + BUDGET_S
    while len(times) < n and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {**stats(times), "n": len(times)}


def throughput(make_call, per_client: int) -> float:
    """Requests per second with CLIENTS threads, each with its own connection."""
    calls = [make_call() for _ in range(CLIENTS)]
    for c in calls:
        c()
    barrier = threading.Barrier(CLIENTS + 1)
    errors, done = [], []

    def run(c):
        barrier.wait()
        deadline = time.perf_counter() + BUDGET_S
        try:
            for _ in range(per_client):
                if time.perf_counter() > deadline:
                    break
                c()
                done.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]}")
    return round(len(done) / (time.perf_counter() - t0), 1)


def bodies(x: np.ndarray, name: str) -> dict:
    buf = io.BytesIO()
    np.save(buf, x)
    b64 = base64.b64encode(x[0].astype(x.dtype.newbyteorder("<")).tobytes()).decode()
    return {"json": (json.dumps({"instances": x.tolist()}).encode(), "application/json"),
            "b64": (json.dumps({"instances": [{"b64": b64}]}).encode(), "application/json"),
            "npy": (buf.getvalue(), "application/x-npy")}


def build_model(name: str, workdir: Path) -> Path:
    if name == "digits":
        return ROOT / "sample_models" / "digits_cnn.keras"
    import keras

    from kexport.batchnorm_stats import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    calibrate_batchnorm(model, seed=0)  # random BN statistics would make the output uniform
    path = workdir / "mobilenetv2.keras"
    model.save(path)
    return path


def bench_server(app: Path, model_name: str, x: np.ndarray, n_lat: int, per_client: int, window_ms: float) -> dict:
    server = GunicornServer(app, workers=2, env={"BATCH_WINDOW_MS": str(window_ms)})
    try:
        cold = server.wait_ready()
        path = f"/v1/models/{model_name}:predict"
        out = {"cold_start_s": round(cold, 3)}
        for fmt, (body, ctype) in bodies(x, model_name).items():
            c = Client(server.port)
            lat = latency(lambda: c.post(path, body, ctype), n_lat)

            def make():
                cl = Client(server.port)
                return lambda: cl.post(path, body, ctype)

            out[fmt] = {**lat, "rps_16_clients": throughput(make, per_client)}
        return out
    finally:
        server.stop()


def bench_in_process(onnx_path: Path, input_name: str, x: np.ndarray, n_lat: int, per_client: int, threads: int) -> dict:
    from kexport.runtimes.onnxruntime_runtime import OnnxSession

    sess = OnnxSession(str(onnx_path), threads)
    lat = latency(lambda: sess.predict({input_name: x}), n_lat)
    return {**lat, "rps_16_clients": throughput(lambda: (lambda: sess.predict({input_name: x})), per_client)}


MLFLOW_LOG = r"""
import sys, keras, mlflow
mlflow.keras.save_model(keras.saving.load_model(sys.argv[1]), sys.argv[2])
"""


def bench_mlflow(python: str, keras_path: Path, x: np.ndarray, n_lat: int, per_client: int, workdir: Path) -> dict:
    if not Path(python).exists():
        return {"skipped": f"{python} not found; create it with: python -m venv /tmp/mlflow-venv && "
                           "/tmp/mlflow-venv/bin/pip install mlflow"}
    model_dir = workdir / f"mlflow_{keras_path.stem}"
    # mlflow starts `uvicorn` by name: its venv's bin must be on PATH
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run([python, "-c", MLFLOW_LOG, str(keras_path), str(model_dir)], capture_output=True, text=True,
                       env=env, timeout=600)
    if p.returncode != 0:
        return {"skipped": "mlflow could not save the Keras model: " + (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    port = free_port()
    mlflow_bin = str(Path(python).with_name("mlflow"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", str(model_dir), "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "mlflow.log", "w"),
                            start_new_session=True)  # its own process group: uvicorn and workers stop with it
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                tail = (workdir / "mlflow.log").read_text().strip().splitlines()[-3:]
                return {"skipped": "mlflow models serve exited: " + " | ".join(tail)[:400]}
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                return {"skipped": "mlflow models serve was not ready within 300 s"}
            time.sleep(0.1)
        cold = time.perf_counter() - t0
        body = json.dumps({"instances": x.tolist()}).encode()
        c = Client(port)
        c.post("/invocations", body, "application/json")
        lat = latency(lambda: c.post("/invocations", body, "application/json"), n_lat)

        def make():
            cl = Client(port)
            return lambda: cl.post("/invocations", body, "application/json")

        return {"cold_start_s": round(cold, 3), "json": {**lat, "rps_16_clients": throughput(make, per_client)}}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def median_of(runs: list[dict]) -> dict:
    """Element-wise median of nested result dicts (one per round)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in runs]) for k in first}
    return round(float(np.median(runs)), 3)


def machine() -> dict:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,mobilenetv2")
    ap.add_argument("--mlflow-python", default="/tmp/mlflow-venv/bin/python")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the server measurements, alternating batching off/on, and keep the median "
                         "(a shared machine is noisy)")
    ap.add_argument("--no-mlflow", action="store_true", help="skip the MLflow peer")
    args = ap.parse_args(argv)
    import kexport
    from kexport.options import ExportOptions

    results = {"machine": machine(), "models": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-flask-"))
    try:
        for name in args.models.split(","):
            n_lat, per_client = (300, 40) if name == "digits" else (40, 4)
            keras_path = build_model(name, work)
            out = work / name
            kexport.export(str(keras_path), ["flask"], out, options=ExportOptions(verify=False))
            app = out / "flask"
            meta = json.loads((app / "model" / "model.json").read_text())
            spec = meta["signature"]["inputs"][0]
            rng = np.random.default_rng(0)
            x = rng.random((1,) + tuple(spec["shape"][1:]), dtype=np.float64).astype(spec["dtype"])
            r = {"onnx_bytes": (app / "model" / "model.onnx").stat().st_size}
            r["in_process_1_thread"] = bench_in_process(app / "model" / "model.onnx", spec["name"], x, n_lat, per_client, 1)
            runs = {0.0: [], 2.0: []}
            for _ in range(args.rounds):
                for window in runs:
                    runs[window].append(bench_server(app, meta["name"], x, n_lat, per_client, window))
            for window, rs in runs.items():
                r[f"server_batch_window_{window:g}ms"] = median_of(rs)
            if args.no_mlflow:
                r["mlflow"] = {"skipped": "--no-mlflow"}
            else:
                r["mlflow"] = bench_mlflow(args.mlflow_python, keras_path, x, n_lat, per_client, work)
            results["models"][name] = r
            print(json.dumps({name: r}, indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    """The table docs/flask.md shows."""
    lines = ["| model | setup | body | p50 ms (batch 1) | p99 ms | req/s, 16 clients | cold start s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        floor = r["in_process_1_thread"]
        lines.append(f"| {name} | in-process onnxruntime (floor) | - | {floor['p50_ms']} | {floor['p99_ms']} | "
                     f"{floor['rps_16_clients']} | - |")
        for window in ("0", "2"):
            srv = r[f"server_batch_window_{window}ms"]
            for fmt in ("json", "b64", "npy"):
                if fmt in srv:
                    m = srv[fmt]
                    lines.append(f"| {name} | kexport app, micro-batching {'off' if window == '0' else 'on (2 ms)'} | "
                                 f"{fmt} | {m['p50_ms']} | {m['p99_ms']} | {m['rps_16_clients']} | {srv['cold_start_s']} |")
        ml = r["mlflow"]
        if "skipped" in ml:
            lines.append(f"| {name} | mlflow models serve | json | skipped: {ml['skipped']} | | | |")
        else:
            m = ml["json"]
            lines.append(f"| {name} | mlflow models serve (Keras, 2 workers) | json | {m['p50_ms']} | {m['p99_ms']} | "
                         f"{m['rps_16_clients']} | {ml['cold_start_s']} |")
    mach = results["machine"]
    lines.append(f"\nmachine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, {mach['platform']}, "
                 f"1-min load average at the end {mach['load_avg_1m']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
