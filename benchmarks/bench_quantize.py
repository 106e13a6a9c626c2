"""Latency of every quantized variant next to its fp32 artifact, in its runtime, in one run.

    .venv/bin/python benchmarks/bench_quantize.py [OUT_DIR]

Models: the digits sample model (held-out split as --eval) and MobileNetV2 224x224
(weights=None: nothing is downloaded; BatchNorm statistics calibrated so it is not degenerate).
Each model goes through `kexport.export(..., quantize="all")` on tflite and onnx: the latency
numbers are the report's own (runtimes/latency.py: all variants loaded in one process, timed in
interleaved rounds, median of single-sample calls). For MobileNetV2 the TFLite fp32/int8 pair is
then re-timed with 1 and 2 threads, with and without LiteRT's default XNNPACK delegate, to
explain the int8/fp32 ratio. Results: OUT_DIR/bench_quantize.json and a markdown table on stdout
(copied into docs/quantization.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MOBILENET_SAMPLES = 48


def mobilenet(out: Path) -> tuple[Path, Path, Path]:
    """MobileNetV2 (random weights, calibrated BatchNorm) and seeded data in its [-1, 1] range."""
    import keras

    from kexport.batchnorm_stats import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    calibrate_batchnorm(model, seed=0)
    path = out / "mobilenet_v2.keras"
    model.save(path)
    rng = np.random.default_rng(1)
    # smooth random images (upsampled noise) rather than white noise: closer to photo statistics
    small = rng.random((2 * MOBILENET_SAMPLES, 7, 7, 3), dtype=np.float32)
    imgs = np.repeat(np.repeat(small, 32, axis=1), 32, axis=2) * 2.0 - 1.0
    from kexport.loader import signature_of

    name = signature_of(model).input_names[0]  # the name kexport (and the .npz) use
    cal, ev = out / "mobilenet_calibration.npz", out / "mobilenet_eval.npz"
    np.savez(cal, **{name: imgs[:MOBILENET_SAMPLES]})
    np.savez(ev, **{name: imgs[MOBILENET_SAMPLES:]})
    return path, cal, ev


def run(model: Path, cal: Path, ev: Path, out: Path) -> list[dict]:
    import kexport
    from kexport.options import ExportOptions

    t0 = time.perf_counter()
    # The gate is opened (nothing refused) so every variant stays on disk for the timing below;
    # its verdict at the default thresholds is recomputed from the numbers in markdown().
    opts = ExportOptions(quantize="all", calibration=str(cal), eval=str(ev), min_agreement=0.0,
                         max_accuracy_drop=100.0)
    result = kexport.export(str(model), ["tflite", "onnx"], out, options=opts,
                             progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"{model.name}: exported and measured in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    keys = ("target", "variant", "status", "size_bytes", "size_ratio", "top1_agreement", "accuracy",
            "accuracy_delta", "latency_ms", "latency_ratio", "latency_rounds", "gate")
    return [{k: t.get(k) for k in keys} | {"model": model.stem} for t in result.to_json()["targets"]]


_LITERT_TIMER = r"""
import json, sys, time, numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
paths, threads, xnnpack = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
runs = []
for p in paths:
    it = Interpreter(model_path=p, num_threads=threads, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.zeros(d["shape"], d["dtype"])
    runs.append((it, d["index"], x))
times = [[] for _ in runs]
for r in range(25):
    for (it, idx, x), ts in zip(runs, times):
        it.set_tensor(idx, x); t = time.perf_counter(); it.invoke(); ts.append(time.perf_counter() - t)
print(json.dumps([float(np.median(ts[3:])) * 1e3 for ts in times]))
"""


def litert_threads_and_delegates(tflite_dir: Path) -> list[dict]:
    """fp32 vs int8 MobileNetV2 in LiteRT with 1/2 threads, with/without the XNNPACK delegate."""
    paths = [str(tflite_dir / "model.tflite"), str(tflite_dir / "model_int8.tflite")]
    rows = []
    for threads in (1, 2):
        for xnnpack in (True, False):
            out = subprocess.run([sys.executable, "-c", _LITERT_TIMER, json.dumps(paths), str(threads),
                                  "1" if xnnpack else "0"], capture_output=True, text=True, timeout=900)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
            if not line:
                rows.append({"threads": threads, "xnnpack": xnnpack, "error": out.stderr.strip()[-300:]})
                continue
            fp32, int8 = json.loads(line[-1])
            rows.append({"threads": threads, "xnnpack": xnnpack, "fp32_ms": round(fp32, 2),
                         "int8_ms": round(int8, 2), "int8_over_fp32": round(int8 / fp32, 3)})
    return rows


def _default_gate(r: dict) -> str:
    """The gate's verdict at the default thresholds (0.98 agreement, 1 point of accuracy)."""
    if r["variant"] == "fp32":
        return "baseline"
    if r["top1_agreement"] is None:
        return "skipped"
    bad = r["top1_agreement"] < 0.98 or (r["accuracy_delta"] is not None and r["accuracy_delta"] < -0.01)
    return "refused" if bad else "passed"


def markdown(rows: list[dict], diag: list[dict]) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| model | target | variant | size | size ratio | top-1 agreement | accuracy (delta) | latency ms | latency ratio | gate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f} ({r['accuracy_delta'] * 100:+.2f} pt)"
        lines.append(f"| {r['model']} | {r['target']} | {r['variant']} | {r['size_bytes'] or 0:,} | "
                     f"{f(r['size_ratio'], '.3f')} | {f(r['top1_agreement'], '.3f')} | {acc} | "
                     f"{f(r['latency_ms'], '.3f')} | {f(r['latency_ratio'], '.2f')} | "
                     f"{_default_gate(r)} |")
    lines += ["", "| LiteRT MobileNetV2 | threads | XNNPACK | fp32 ms | int8 ms | int8/fp32 |", "|---|---|---|---|---|---|"]
    for d in diag:
        lines.append(f"| | {d['threads']} | {'yes' if d['xnnpack'] else 'no'} | {d.get('fp32_ms', '-')} | "
                     f"{d.get('int8_ms', '-')} | {d.get('int8_over_fp32', d.get('error', '-'))} |")
    return "\n".join(lines)


def main(out_dir: str = "bench-quantize-out") -> None:
    from sample_models.make_eval_data import write_digits_data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal, ev = write_digits_data(out / "data")
    rows = run(ROOT / "sample_models" / "digits_cnn.keras", cal, ev, out / "digits")
    mpath, mcal, mev = mobilenet(out / "data")
    rows += run(mpath, mcal, mev, out / "mobilenet_v2")
    diag = litert_threads_and_delegates(out / "mobilenet_v2" / "tflite")
    info = {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows, "litert_mobilenet": diag}
    (out / "bench_quantize.json").write_text(json.dumps(info, indent=2, default=str))
    print(markdown(rows, diag))
    print(f"\n(os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
