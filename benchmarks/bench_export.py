"""kexport vs the vendor tools run one by one, on MobileNetV2 (224x224, weights=None).

    .venv/bin/python benchmarks/bench_export.py [--out docs/benchmarks_export.json]

Vendor path = what a user runs today, one fresh process per tool (each pays the TensorFlow
import and the model load): TFLiteConverter.from_keras_model, Keras' own ONNX export,
Keras' own SavedModel export. kexport = one `kexport` process for the same three targets,
with and without verification. Wall-clock seconds; results go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

VENDOR = {
    "tflite (TFLiteConverter.from_keras_model)": """
import sys, keras, tensorflow as tf
m = keras.models.load_model(sys.argv[1])
open(sys.argv[2] + '/model.tflite', 'wb').write(tf.lite.TFLiteConverter.from_keras_model(m).convert())
""",
    "onnx (keras export format=onnx)": """
import sys, numpy as np, keras
m = keras.models.load_model(sys.argv[1])
m.predict(np.zeros((1, 224, 224, 3), 'float32'), verbose=0)  # Keras 3.15 refuses a never-called model
m.export(sys.argv[2] + '/model.onnx', format='onnx', verbose=False)
""",
    "saved-model (keras export format=tf_saved_model)": """
import sys, keras
m = keras.models.load_model(sys.argv[1])
m.export(sys.argv[2] + '/saved_model', format='tf_saved_model', verbose=False)
""",
}


def timed(cmd) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, res.stderr.strip().splitlines()[-1:] and res.stderr.strip().splitlines()[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_export.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from kexport.batchnorm_stats import application

    work = Path(tempfile.mkdtemp(prefix="kexport-bench-"))
    model = work / "mobilenetv2.keras"
    application("MobileNetV2", (224, 224, 3)).save(model)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
               "load_average_before": os.getloadavg()[0], "vendor": {}, "kexport": {}}
    for name, code in VENDOR.items():
        d = tempfile.mkdtemp(dir=work)
        sec, rc, err = timed([PY, "-c", code, str(model), d])
        results["vendor"][name] = {"seconds": round(sec, 2), "ok": rc == 0, "error": None if rc == 0 else err}
        print(f"{name:55} {sec:6.1f}s {'ok' if rc == 0 else 'FAILED: ' + str(err)}")
    results["vendor_sum"] = round(sum(v["seconds"] for v in results["vendor"].values()), 2)
    for label, extra in (("kexport saved-model+tflite+onnx, no verify", ["--no-verify"]),
                         ("kexport saved-model+tflite+onnx, verified", [])):
        out = work / label.replace(" ", "_").replace(",", "").replace("+", "_")
        # kexport does all three in one process: `all` would include every registered target, so
        # the three are requested through the API in one run.
        code = ("import sys, kexport; r = kexport.export(sys.argv[1], ['saved-model','tflite','onnx'], sys.argv[2], "
                f"verify={not extra}); print(r.seconds); sys.exit(r.exit_code)")
        sec, rc, err = timed([PY, "-c", code, str(model), str(out)])
        report = json.loads((out / "report.json").read_text())
        results["kexport"][label] = {
            "seconds": round(sec, 2), "ok": rc == 0,
            "per_target_seconds": {t["target"]: t["seconds"] for t in report["targets"]},
            "parity": {t["target"]: [(p["runtime"], p["status"], p["max_abs_err"]) for p in t["parity"]] for t in report["targets"]},
            "steps": report["seconds"],
        }
        print(f"{label:55} {sec:6.1f}s")
    results["load_average_after"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
