"""TF.js under Node: start time, model load and single-sample latency, cpu vs wasm, and the
browser page's backend and latency, for the digits sample model and MobileNetV2.

    .venv/bin/python benchmarks/bench_tfjs.py [OUT_DIR] [--no-browser]

Each model is exported once with `kexport.export(..., ["tfjs"])` (graph format; that run's
parity rows are printed too). Then, per backend, a *fresh* Node process is started 3 times
(start = spawn until TF.js reports the backend ready), the model is loaded, and single-sample
predictions are timed (1 warm-up, then ROUNDS, median and p90). MobileNetV2 is 224x224, alpha
1.0, weights=None with calibrated BatchNorm (nothing is downloaded). Results go to
OUT_DIR/bench_tfjs.json and a markdown table on stdout (copied into docs/tfjs.md).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

ROUNDS = 20
STARTS = 3


def mobilenet(out: Path) -> Path:
    from kexport.batchnorm_stats import application

    path = out / "mobilenet_v2.keras"
    if not path.exists():
        application("MobileNetV2", (224, 224, 3), seed=0).save(path)
    return path


def node_numbers(model_dir: Path, sample: dict, backend: str) -> dict:
    from kexport.runtimes.tfjs_node import NodeProcess, TfjsNodeSession, _POOL

    starts = []
    for _ in range(STARTS):
        p = NodeProcess(backend)
        starts.append(p.start_seconds)
        p.kill()
    _POOL.pop(backend, None)
    s = TfjsNodeSession(backend, str(model_dir))
    s.predict(sample)
    for _ in range(ROUNDS):
        s.predict(sample)
    s.close()
    lat = sorted(x * 1e3 for x in s.predict_seconds[1:])
    return {"node_start_s_median": round(statistics.median(starts), 3), "load_s": round(s.load_seconds, 3),
            "first_predict_ms": round(s.predict_seconds[0] * 1e3, 2), "predict_ms_median": round(statistics.median(lat), 2),
            "predict_ms_p90": round(lat[int(0.9 * (len(lat) - 1))], 2)}


def browser_numbers(model_dir: Path, sample: dict) -> dict:
    from kexport.runtimes.tfjs_chromium import TfjsChromium, TfjsChromiumSession, browser

    reason = TfjsChromium().available()
    if reason:
        return {"skipped": reason}
    s = TfjsChromiumSession(str(model_dir))
    s.predict(sample)
    for _ in range(ROUNDS // 2):
        s.predict(sample)
    s.close()
    lat = sorted(x * 1e3 for x in s.predict_seconds[1:])
    return {"backend": s.backend, "launch_s": browser().launch_seconds, "load_s": round(s.load_seconds, 3),
            "first_predict_ms": round(s.predict_seconds[0] * 1e3, 1), "predict_ms_median": round(statistics.median(lat), 2)}


def bench(name: str, model: Path, out: Path, with_browser: bool) -> dict:
    import kexport
    from kexport.options import ExportOptions

    t0 = time.perf_counter()
    result = kexport.export(str(model), ["tfjs"], out / name, options=ExportOptions(samples=8))
    row = result.targets[0]
    model_dir = out / name / row.artifact
    with np.load(out / name / "reference" / "inputs.npz") as z:
        sample = {k: z[k][:1] for k in z.files}
    entry = {"model": name, "export_s": round(time.perf_counter() - t0, 1), "size_bytes": row.size_bytes,
             "parity": {p.runtime: [p.status, p.max_abs_err] for p in row.parity}}
    for backend in ("cpu", "wasm"):
        entry[f"node-{backend}"] = node_numbers(model_dir, sample, backend)
    if with_browser:
        entry["chromium"] = browser_numbers(model_dir, sample)
    return entry


def main(argv: list[str]) -> None:
    out = Path(next((a for a in argv if not a.startswith("--")), "bench-tfjs-out"))
    out.mkdir(parents=True, exist_ok=True)
    with_browser = "--no-browser" not in argv
    results = [bench("digits_cnn", ROOT / "sample_models" / "digits_cnn.keras", out, with_browser),
               bench("mobilenet_v2_224", mobilenet(out), out, with_browser)]
    (out / "bench_tfjs.json").write_text(json.dumps(results, indent=2))
    print("| model | backend | Node start (s) | load (s) | first predict (ms) | predict median (ms) | p90 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for b in ("cpu", "wasm"):
            n = r[f"node-{b}"]
            print(f"| {r['model']} | node {b} | {n['node_start_s_median']} | {n['load_s']} | {n['first_predict_ms']} "
                  f"| {n['predict_ms_median']} | {n['predict_ms_p90']} |")
        c = r.get("chromium")
        if c and "backend" in c:
            print(f"| {r['model']} | chromium {c['backend']} | (launch {c['launch_s']}) | {c['load_s']} "
                  f"| {c['first_predict_ms']} | {c['predict_ms_median']} | |")
    print(json.dumps([{k: r[k] for k in ("model", "export_s", "size_bytes", "parity")} for r in results], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
