"""Rolling restart and scale-out of the generated server behind nginx (tests/rolling.py), with
the long windows of issue 13: 8 clients x 30 s, SIGTERM to one of three replicas at 10 s and its
replacement started; then 1 -> 3 replicas, 15 s of the same load on each.

    .venv/bin/python benchmarks/bench_rolling.py [--model sample_models/digits_cnn.keras] [--json OUT]

Needs nginx (Debian: apt-get install nginx-light; `make test` installs it). Numbers depend on the
machine; they are copied into docs/deploy.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import kexport  # noqa: E402
from rolling import Cluster, nginx_binary, predict_request, run_load  # noqa: E402

CLIENTS = 8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "sample_models" / "digits_cnn.keras"))
    ap.add_argument("--window", type=float, default=30.0, help="restart load window, seconds (default 30)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "bench_rolling_results.json"))
    args = ap.parse_args()
    if nginx_binary() is None:
        print("nginx not installed: apt-get install nginx-light", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kexport-bench-rolling-") as tmp:
        out = Path(tmp) / "out"
        kexport.export(args.model, ["flask"], out, verify=False, raise_on_failure=True)
        app = out / "flask"
        path, body = predict_request(app)
        results = {"model": Path(args.model).name, "clients": CLIENTS, "cpus": os.cpu_count(),
                   "machine": platform.platform(), "load_average_before": [round(x, 1) for x in os.getloadavg()]}

        cluster = Cluster(app, replicas=3)
        try:
            step = {}

            def tick(elapsed):
                if elapsed >= args.window / 3 and not step:
                    step["thread"] = cluster.sigterm_and_replace(1)

            r = run_load(cluster.nginx.port, path, body, CLIENTS, args.window, on_tick=tick)
            step["thread"].join(timeout=60)
            results["rolling_restart"] = {**r.summary(), "old_replica_exit_codes": cluster.exit_codes}
        finally:
            cluster.stop()
        print("rolling restart (3 replicas, SIGTERM one at", f"{args.window / 3:.0f}s):", results["rolling_restart"])

        cluster = Cluster(app, replicas=1)
        try:
            one = run_load(cluster.nginx.port, path, body, CLIENTS, args.window / 2)
            t0 = time.monotonic()
            cluster.scale_to(3)
            scale_s = time.monotonic() - t0
            three = run_load(cluster.nginx.port, path, body, CLIENTS, args.window / 2)
        finally:
            cluster.stop()
        results["one_replica"] = one.summary()
        results["three_replicas"] = {**three.summary(), "seconds_to_scale": round(scale_s, 2)}
        print("1 replica:", results["one_replica"])
        print("3 replicas:", results["three_replicas"])
    results["load_average_after"] = [round(x, 1) for x in os.getloadavg()]  # other work on the box skews rps
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("written", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
