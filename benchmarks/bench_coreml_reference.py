"""Time the coreml-reference interpreter on keras.applications models (batch 1).

Converts each model once (random weights, calibrated BatchNorm), then runs the ML Program in the
NumPy interpreter `--repeat` times and prints the median and best seconds per image, plus the
error against Keras. The number in docs/coreml.md comes from:

    .venv/bin/python benchmarks/bench_coreml_reference.py MobileNetV2 --size 224 --precision float16 float32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bench(name: str, size: int, precision: str, repeat: int, workdir: Path) -> dict:
    from kexport.api import build_context
    from kexport.batchnorm_stats import application
    from kexport.options import ExportOptions
    from kexport.targets import get_target
    from kexport.targets.coreml import CoreMLOptions
    from kexport.runtimes.coreml_reference import ReferenceSession

    path = workdir / f"{name}_{size}.keras"
    if not path.exists():
        application(name, (size, size, 3), seed=1).save(path)
    ctx = build_context(path, ExportOptions(samples=2))
    variant = "float16" if precision == "float16" else "fp32"
    t0 = time.perf_counter()
    art = get_target("coreml").export(ctx, workdir / f"{name}_{variant}", CoreMLOptions(precision=precision), variant)
    convert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    session = ReferenceSession(str(art.path))
    load_s = time.perf_counter() - t0
    x = {k: v[:1] for k, v in ctx.inputs.items()}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = session.predict(x)
        times.append(time.perf_counter() - t0)
    name_out = ctx.signature.output_names[0]
    ref = ctx.outputs[name_out][:1]
    err = float(abs(out[name_out] - ref).max())
    return {"model": name, "size": size, "precision": precision, "convert_s": round(convert_s, 1),
            "load_s": round(load_s, 2), "median_s": round(statistics.median(times), 3), "best_s": round(min(times), 3),
            "max_abs_err": err, "max_rel_err": err / float(abs(ref).max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["MobileNetV2"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--precision", nargs="+", default=["float16"], choices=["float16", "float32"])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kexport-bench-") as tmp:
        for name in args.models:
            for precision in args.precision:
                print(json.dumps(bench(name, args.size, precision, args.repeat, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
