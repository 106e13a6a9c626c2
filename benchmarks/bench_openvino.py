"""OpenVINO next to onnxruntime and LiteRT: errors, sizes and CPU latency on the sample models and
MobileNetV2 224x224 (weights=None, BatchNorm statistics calibrated: nothing is downloaded).

    .venv/bin/python benchmarks/bench_openvino.py [OUT_DIR]

Each model goes through `kexport.export(..., ["openvino", "onnx", "tflite"])` with the openvino
float16/int8 variants; errors and sizes are the report's own (parity against Keras on the
seeded reference inputs). Latency: one child process without TensorFlow loads every artifact
(OpenVINO fp32/float16/int8 on the CPU device at f32 precision, onnxruntime CPU, LiteRT with its
default XNNPACK delegate), all with 1 thread, then times single-sample calls in interleaved
rounds (median), so load from other processes on a shared machine hits every runtime alike. On
a CPU with bf16 instructions the OpenVINO fp32 IR is also timed at the CPU plugin's default
precision (bf16), with its error on the reference inputs: what a deployment gets without the
f32 hint.
Results: OUT_DIR/bench_openvino.json and markdown tables on stdout (copied into docs/openvino.md).
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SAMPLES = ["digits_cnn", "wine_mlp", "token_lstm", "two_in_two_out", "iris_keras2"]
THREADS = 1
BF16 = False  # set in the worker
BUDGET_S = 3.0  # timing budget per artifact


def _bf16_cpu() -> bool:
    """The CPU plugin's default precision is bf16 only where the CPU has bf16 instructions."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def mobilenet(out: Path) -> Path:
    import keras

    from kexport.batchnorm_stats import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    calibrate_batchnorm(model, seed=0)
    path = out / "mobilenet_v2.keras"
    model.save(path)
    return path


def export(model: Path, out: Path) -> dict:
    import kexport
    from kexport.options import ExportOptions
    from kexport.targets.openvino import OpenVINOOptions

    opts = ExportOptions(target_options={"openvino": OpenVINOOptions(quantize="all")})
    t0 = time.perf_counter()
    result = kexport.export(str(model), ["openvino", "onnx", "tflite"], out, options=opts)
    rows = []
    for r in result.targets:
        p = next((p for p in r.parity if p.runtime in ("openvino-cpu", "onnxruntime", "litert")), None)
        rows.append({"target": r.target, "variant": r.variant, "status": r.status, "artifact": r.artifact,
                     "size_bytes": r.size_bytes, "convert_s": r.seconds,
                     "runtime": p.runtime if p else None, "parity": p.status if p else None,
                     "max_abs_err": p.max_abs_err if p else None, "max_rel_err": p.max_rel_err if p else None,
                     "top1": p.top1_agreement if p else None, "reason": p.reason if p else r.error})
    return {"rows": rows, "export_s": round(time.perf_counter() - t0, 1)}


def latency(out: Path, rows: list[dict]) -> dict:
    """{"<target>/<variant>": median ms} from the child process (no TensorFlow)."""
    runtime_of = {"openvino": "openvino-cpu", "onnx": "onnxruntime", "tflite": "litert"}
    arts = [[f"{r['target']}/{r['variant']}", runtime_of[r["target"]], str(out / r["artifact"])]
            for r in rows if r["status"] == "ok" and r["target"] in runtime_of]
    spec = out / "latency_spec.json"
    spec.write_text(json.dumps({"artifacts": arts, "sample": str(out / "reference" / "inputs.npz")}))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec)], capture_output=True, text=True,
                          timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["latency worker died"])[-1])
    return json.loads(lines[-1])


def _worker(spec_path: str) -> None:
    out = sys.stdout
    sys.stdout = sys.stderr
    from kexport.runtimes import get_runtime

    global BF16
    BF16 = _bf16_cpu()
    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["sample"], allow_pickle=False) as z:
        sample = {k: z[k][:1] for k in z.files}
    sessions, bf16_err = [], None
    for label, runtime, path in spec["artifacts"]:
        opts = {"num_threads": THREADS}
        if runtime == "openvino-cpu":
            opts["inference_precision"] = "f32"
        sessions.append((label, get_runtime(runtime).load(path, **opts)))
        if label == "openvino/fp32" and BF16:  # what a deployment without the f32 hint runs
            bf16 = get_runtime(runtime).load(path, num_threads=THREADS, inference_precision="bf16")
            sessions.append(("openvino/fp32@bf16", bf16))
            bf16_err = _max_err(bf16, Path(spec["sample"]).parent)
    for _, s in sessions:  # warm-up
        for _ in range(5):
            s.predict(sample)
    times = {label: [] for label, _ in sessions}
    start, rounds = time.perf_counter(), 0
    while rounds < 10 or (time.perf_counter() - start < BUDGET_S * len(sessions) and rounds < 2000):
        for label, s in sessions:
            t0 = time.perf_counter()
            s.predict(sample)
            times[label].append(time.perf_counter() - t0)
        rounds += 1
    assert "tensorflow" not in sys.modules
    print(json.dumps({"ms": {k: round(float(np.median(v)) * 1e3, 4) for k, v in times.items()},
                      "rounds": rounds, "threads": THREADS, "bf16_max_abs_err": bf16_err}), file=out)


def _max_err(session, reference: Path) -> float:
    with np.load(reference / "inputs.npz", allow_pickle=False) as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(reference / "outputs.npz", allow_pickle=False) as z:
        outputs = {k: z[k] for k in z.files}
    got = session.predict(inputs)
    return max(float(np.abs(got[k].astype(np.float64) - outputs[k]).max()) for k in outputs)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    models = {name: ROOT / "sample_models" / (name + (".h5" if name == "iris_keras2" else ".keras"))
              for name in SAMPLES}
    models["mobilenet_v2_224"] = mobilenet(out)
    results = {}
    for name, path in models.items():
        res = export(path, out / name)
        res["latency"] = latency(out / name, res["rows"])
        results[name] = res
        print(f"{name}: exported in {res['export_s']}s", file=sys.stderr)
    import openvino as ov

    meta = {"openvino": ov.get_version(), "cpu": ov.Core().get_property("CPU", "FULL_DEVICE_NAME"),
            "load_average": os.getloadavg(), "threads": THREADS}
    (out / "bench_openvino.json").write_text(json.dumps({"meta": meta, "models": results}, indent=1))
    print(table(results))


def table(results: dict) -> str:
    lines = ["| model | artifact | max abs err | max rel err | size (bytes) | latency ms (1 thread) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, res in results.items():
        for r in res["rows"]:
            key = f"{r['target']}/{r['variant']}"
            ms = res["latency"]["ms"].get(key)
            err = "—" if r["max_abs_err"] is None else f"{r['max_abs_err']:.2g}"
            rel = "—" if r["max_rel_err"] is None else f"{r['max_rel_err']:.2g}"
            lines.append(f"| {name} | {key} ({r['parity']}) | {err} | {rel} | {r['size_bytes']} | "
                         f"{'—' if ms is None else f'{ms:.3f}'} |")
            bf16 = res["latency"]["ms"].get(key + "@bf16")
            if bf16 is not None:
                lines.append(f"| {name} | {key}, bf16 CPU default (not verified) | "
                             f"{res['latency']['bf16_max_abs_err']:.2g} | | | {bf16:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/kexport-bench-openvino"))
