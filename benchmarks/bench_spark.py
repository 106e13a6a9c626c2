"""Benchmark kexport's Spark scoring job against `mlflow.pyfunc.spark_udf` on the same Keras model.

    .venv/bin/python benchmarks/bench_spark.py [--models digits,mobilenetv2] [--digits-rows 100000]
        [--mobilenet-rows 2000] [--mlflow-python PATH] [--json OUT.json]

Per model, both engines get the same Parquet table (one flat float array column per row), the
same Spark settings (local[2], the same spark.sql.execution.arrow.maxRecordsPerBatch, driver
memory) and write the same kind of output (Parquet, one array column). Each engine runs in its
own child process with a fresh SparkSession:

* session start: SparkSession.builder...getOrCreate() (the JVM);
* executor start-up: a 2-row table in 2 partitions scored and discarded, so both Python workers
  start and load the model (kexport: onnxruntime on the ONNX file; MLflow: TensorFlow + Keras);
* throughput: the whole table scored and written, rows per second of wall time;
* CPU seconds of the whole run (driver, JVM, Python workers; user + system), and rows per CPU
  second: on a shared machine wall time depends on the other load, the work done does not;
* peak memory: the child's process tree (driver Python, JVM, Python workers) sampled every 0.2 s.

MLflow runs from its own virtualenv (`--mlflow-python`, default /tmp/mlflow-spark-venv/bin/python:
mlflow pins gunicorn < 27 and pyarrow below the pinned stack's); create it with
    python -m venv /tmp/mlflow-spark-venv && /tmp/mlflow-spark-venv/bin/pip install \
        mlflow==3.17.2 pyspark==4.3.0 tensorflow==2.19.0 keras==3.15.1 numpy==2.1.3 h5py
When it cannot run, the reason is printed and recorded. Not a test: numbers depend on the
machine (they are copied into docs/spark.md by hand).
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
MASTER = "local[2]"
SPARK_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.driver.memory": "4g",
              "spark.sql.shuffle.partitions": "2"}
BATCH = {"digits": 4096, "mobilenetv2": 32}  # rows per Arrow batch, the same for both engines


# ---------------------------------------------------------------- child side (either venv)

def _session(batch: int):
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    b = SparkSession.builder.master(MASTER).appName("bench-spark")
    for k, v in SPARK_CONF.items():
        b = b.config(k, v)
    spark = b.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch)).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def tree_cpu_s() -> dict:
    """CPU seconds (user + system) used so far by this process, the JVM and the Python workers:
    a measure of work that, unlike wall time, does not depend on what else the machine runs."""
    import psutil

    me = psutil.Process()
    out = {"total": 0.0, "jvm": 0.0, "python_workers": 0.0}
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            kind = "jvm" if "java" in (p.cmdline() or [""])[0] else "python_workers" if p.pid != me.pid else None
        except psutil.Error:
            continue
        out["total"] += t.user + t.system
        if kind:
            out[kind] += t.user + t.system
    return out


def child(engine: str, model: str, data: str, warm: str, out: str, batch: int, column: str, shape: list,
          repeat: int = 1) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    spark = _session(batch)
    res = {"session_start_s": time.perf_counter() - t0}
    rows = spark.read.parquet(data).count()
    if engine == "kexport":
        sys.path.insert(0, model)
        import score

        def run(src, dst):
            code = score.main(["--input", src, "--output", dst, "--batch-size", str(batch), "--overwrite"], spark=spark)
            if code != 0:
                raise RuntimeError(f"score.py exited with {code}")
    else:
        import mlflow.pyfunc
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType

        udf = mlflow.pyfunc.spark_udf(spark, model, result_type=ArrayType(FloatType()), env_manager="local")

        def run(src, dst):
            df = spark.read.parquet(src)
            df.withColumn("prediction", udf(F.col(column))).drop(column).write.mode("overwrite").parquet(dst)

    t = time.perf_counter()
    run(warm, out + "-warm")
    res["executor_startup_s"] = time.perf_counter() - t
    runs = []
    for _ in range(repeat):  # the first run is cold (the JVM compiles the hot paths); later ones are warm
        cpu = tree_cpu_s()
        t = time.perf_counter()
        run(data, out)
        wall = time.perf_counter() - t
        after = tree_cpu_s()
        runs.append({"score_s": wall, "cpu_s": after["total"] - cpu["total"], "cpu_jvm_s": after["jvm"] - cpu["jvm"],
                     "cpu_python_workers_s": after["python_workers"] - cpu["python_workers"]})
    for r in runs:
        r["rows_per_s"], r["rows_per_cpu_s"] = rows / r["score_s"], rows / r["cpu_s"]
    warm_runs = runs[1:] or runs
    res.update(sorted(warm_runs, key=lambda r: r["score_s"])[len(warm_runs) // 2])  # headline: the median warm run
    res.update({"cold_" + k: v for k, v in runs[0].items()})  # and the cold one beside it
    res["runs"] = runs
    res["rows"] = rows
    res["output_rows"] = spark.read.parquet(out).count()
    res["load_avg_1m"] = os.getloadavg()[0]  # the machine's load while this engine ran
    spark.stop()
    return res


# ---------------------------------------------------------------- orchestrator (kexport's venv)

class PeakMemory:
    """Peak RSS of a process tree, sampled in a thread: total, JVM, Python workers."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak = {"total_mb": 0.0, "jvm_mb": 0.0, "python_workers_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
                total = jvm = workers = 0
                for p in procs:
                    try:
                        rss = p.memory_info().rss / 2**20
                        cmd = " ".join(p.cmdline())
                    except psutil.Error:
                        continue
                    total += rss
                    if "java" in cmd.split(" ")[0]:
                        jvm += rss
                    elif "pyspark.daemon" in cmd or "pyspark.worker" in cmd or p.pid != self.root.pid:
                        workers += rss
                for k, v in (("total_mb", total), ("jvm_mb", jvm), ("python_workers_mb", workers)):
                    self.peak[k] = max(self.peak[k], v)
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: round(v) for k, v in self.peak.items()}


def run_child(python: str, args: list[str], log: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with open(log, "w") as f:
        proc = subprocess.Popen([python, __file__, "--child", *args], stdout=subprocess.PIPE, stderr=f, env=env,
                                text=True, start_new_session=True)
        mem = PeakMemory(proc.pid)
        out, _ = proc.communicate(timeout=3600)
        peak = mem.stop()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"skipped": f"exit code {proc.returncode}: " + " | ".join(tail)[:500]}
    res = json.loads(lines[-1])
    res["peak_memory"] = peak
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}


def build_model(name: str, work: Path) -> Path:
    if name == "digits":
        return ROOT / "sample_models" / "digits_cnn.keras"
    import keras

    from kexport.batchnorm_stats import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    calibrate_batchnorm(model, seed=0)  # random BN statistics would make the output uniform
    path = work / "mobilenetv2.keras"
    model.save(path)
    return path


def write_tables(work: Path, name: str, column: str, shape: list, rows: int) -> tuple[Path, Path]:
    """The scored table (`rows` rows, several files) and a 2-file, 2-row warm-up table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    per_row = int(np.prod(shape))
    rng = np.random.default_rng(0)
    data, warm = work / f"{name}.parquet", work / f"{name}-warm.parquet"
    data.mkdir()
    warm.mkdir()
    # several files, so that local[2] gets several partitions: about 32 MiB each, at least 8
    files = max(8, -(-rows * per_row * 4 // (32 * 2**20)))
    chunk = max(1, -(-rows // files))
    done, part = 0, 0
    while done < rows:
        n = min(chunk, rows - done)
        flat = rng.random((n, per_row), dtype=np.float32)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_row)
        table = pa.table({"id": pa.array(np.arange(done, done + n, dtype=np.int64)),
                          column: pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))})
        pq.write_table(table, data / f"part-{part:05d}.parquet")
        if part == 0:
            pq.write_table(table.slice(0, 1), warm / "part-0.parquet")
            pq.write_table(table.slice(1, 1), warm / "part-1.parquet")
        done, part = done + n, part + 1
    return data, warm


MLFLOW_SAVE = r"""
import sys, json, numpy as np, keras, mlflow
from mlflow.models import infer_signature
model = keras.saving.load_model(sys.argv[1])
shape = json.loads(sys.argv[3])
x = np.zeros([2] + shape, np.float32)
mlflow.keras.save_model(model, sys.argv[2], signature=infer_signature(x, model.predict(x, verbose=0)))
"""


def machine() -> dict:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.strip().splitlines()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "java": java[0] if java else "?",
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def bench_model(name: str, rows: int, work: Path, mlflow_python: str | None, pairs: int = 1,
                repeat: int = 1) -> dict:
    import kexport
    from kexport.options import ExportOptions

    keras_path = build_model(name, work)
    out = work / f"kexport-{name}"
    result = kexport.export(str(keras_path), ["spark"], out, options=ExportOptions(verify=False))
    if result.targets[0].status != "ok":
        raise RuntimeError(f"kexport spark {name}: {result.targets[0].error}")
    pkg = out / "spark"
    schema = json.loads((pkg / "schema.json").read_text())
    (spec,) = schema["inputs"]
    column, shape = spec["name"], spec["dims"]
    data, warm = write_tables(work, name, column, shape, rows)
    common = [str(data), str(warm), "", str(BATCH[name]), column, json.dumps(shape), str(repeat)]
    r = {"rows": rows, "batch_rows": BATCH[name], "input_values_per_row": int(__import__("numpy").prod(shape)),
         "repeat": repeat, "pairs": []}
    mlflow_model = None
    if not mlflow_python:
        mlflow_skip = "--no-mlflow"
    elif not Path(mlflow_python).exists():
        mlflow_skip = f"{mlflow_python} not found (see this script's docstring)"
    else:
        mlflow_model = work / f"mlflow-{name}"
        p = subprocess.run([mlflow_python, "-c", MLFLOW_SAVE, str(keras_path), str(mlflow_model), json.dumps(shape)],
                           capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)
        mlflow_skip = None if p.returncode == 0 else \
            "mlflow could not save the Keras model: " + (p.stderr.strip().splitlines() or ["?"])[-1][:300]
    # interleaved pairs (kexport, then MLflow, again): on a shared machine both engines of a pair
    # see about the same background load, so the ratio within a pair is what counts
    for i in range(pairs):
        pair = {}
        args = ["kexport", str(pkg)] + common
        args[4] = str(work / f"out-kexport-{name}")
        pair["kexport"] = run_child(sys.executable, args, work / f"kexport-{name}-{i}.log")
        if mlflow_skip:
            pair["mlflow"] = {"skipped": mlflow_skip}
        else:
            args = ["mlflow", str(mlflow_model)] + common
            args[4] = str(work / f"out-mlflow-{name}")
            pair["mlflow"] = run_child(mlflow_python, args, work / f"mlflow-{name}-{i}.log")
        k, m = pair["kexport"], pair["mlflow"]
        if "rows_per_s" in k and "rows_per_s" in m:
            pair["speedup"] = round(k["rows_per_s"] / m["rows_per_s"], 2)
            pair["speedup_per_cpu_s"] = round(k["rows_per_cpu_s"] / m["rows_per_cpu_s"], 2)
            pair["cold_speedup"] = round(k["cold_rows_per_s"] / m["cold_rows_per_s"], 2)
            pair["cold_speedup_per_cpu_s"] = round(k["cold_rows_per_cpu_s"] / m["cold_rows_per_cpu_s"], 2)
        print(json.dumps({name: {f"pair {i + 1}": pair}}), flush=True)
        r["pairs"].append(pair)
    # the table shows the pair with the median wall-time speed-up (or the first, without MLflow)
    ranked = sorted(r["pairs"], key=lambda q: q.get("speedup", 0))
    median = ranked[len(ranked) // 2]
    r["kexport"], r["mlflow"] = median["kexport"], median["mlflow"]
    for key in ("speedup", "speedup_per_cpu_s", "cold_speedup", "cold_speedup_per_cpu_s"):
        values = sorted(q[key] for q in r["pairs"] if key in q)
        if values:
            r[key] = values[len(values) // 2]
            r[key + "_range"] = [values[0], values[-1]]
    print(json.dumps({name: r}, indent=1), flush=True)
    return r


def markdown(results: dict) -> str:
    lines = ["| model | rows | engine | rows/s wall: warm (cold) | CPU-s warm (JVM / Python workers) | rows per CPU-s: "
             "warm (cold) | session start s | executor start-up s | peak memory MB (total / JVM / Python workers) | "
             "load avg | speed-up wall, per CPU-s: warm (cold) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for engine, label in (("kexport", "kexport job (onnxruntime, mapInArrow)"),
                              ("mlflow", "mlflow.pyfunc.spark_udf (Keras/TensorFlow)")):
            e = r[engine]
            if "skipped" in e:
                lines.append(f"| {name} | {r['rows']} | {label} | skipped: {e['skipped']} | | | | | | | |")
                continue
            pm = e["peak_memory"]
            speed = ""
            if engine == "kexport" and "speedup" in r:
                speed = (f"{r['speedup']}x, {r['speedup_per_cpu_s']}x ({r['cold_speedup']}x, "
                         f"{r['cold_speedup_per_cpu_s']}x)")
            lines.append(f"| {name} | {e['rows']} | {label} | {e['rows_per_s']:.1f} ({e['cold_rows_per_s']:.1f}) | "
                         f"{e['cpu_s']:.1f} ({e['cpu_jvm_s']:.1f} / {e['cpu_python_workers_s']:.1f}) | "
                         f"{e['rows_per_cpu_s']:.0f} ({e['cold_rows_per_cpu_s']:.0f}) | {e['session_start_s']:.1f} | "
                         f"{e['executor_startup_s']:.1f} | {pm['total_mb']} / {pm['jvm_mb']} / {pm['python_workers_mb']} "
                         f"| {e.get('load_avg_1m', '?')} | {speed} |")
    m = results["machine"]
    lines.append(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['java']}, "
                 f"1-min load average at the end {m['load_avg_1m']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        engine, model, data, warm, out, batch, column, shape, repeat = sys.argv[2:11]
        print(json.dumps(child(engine, model, data, warm, out, int(batch), column, json.loads(shape), int(repeat))),
              flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,mobilenetv2")
    ap.add_argument("--digits-rows", type=int, default=100_000)
    ap.add_argument("--mobilenet-rows", type=int, default=2_000)
    ap.add_argument("--mlflow-python", default="/tmp/mlflow-spark-venv/bin/python")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--pairs", type=int, default=3, help="interleaved kexport/MLflow runs per model (default 3)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="full-table runs per engine and session for digits: the first cold, the median of the rest "
                         "is the headline (default 3)")
    ap.add_argument("--mobilenet-repeat", type=int, default=2, help="the same for MobileNetV2 (default 2)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (tables, packages, logs)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    results = {"models": {}}
    try:
        for name in args.models.split(","):
            rows = args.digits_rows if name == "digits" else args.mobilenet_rows
            results["models"][name] = bench_model(name, rows, work, None if args.no_mlflow else args.mlflow_python,
                                                  args.pairs, args.repeat if name == "digits" else args.mobilenet_repeat)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = machine()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
