"""`spark-local`: the generated Spark scoring package (target `spark`) run by a real Spark,
pyspark's `local[2]`, on the reference inputs written to Parquet.

One SparkSession per process, started at the first `load` and stopped at exit: Spark's JVM and
Python-worker start-up (10-20 s here) is paid once per test session or `kexport all` run, not
once per artifact. `predict` writes the inputs to Parquet (flat arrays, plus a `row_id` column
the job must carry through), runs the package's own `score.py` main() on that session — the same
code `spark-submit score.py` runs — reads the output Parquet back and returns the outputs by name.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import owned
from .base import Runtime, module_missing, register_runtime

MASTER = "local[2]"
ROW_ID = "row_id"
_LOCK = threading.Lock()
_SPARK = {}  # "session" -> the shared SparkSession


def java_problem() -> str | None:
    """None when a Java 17+ runtime answers, else why not."""
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not Path(java).exists():
        where = f"JAVA_HOME has no {java}" if java else "java not on PATH, JAVA_HOME unset"
        return f"no Java runtime ({where}); Spark 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)"
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{java} -version failed: {e}"
    first = out.strip().splitlines()[0] if out.strip() else ""
    try:
        major = int(first.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        return None  # unknown format: let Spark decide
    return None if major >= 17 else f"{first}: Spark 4 needs Java 17+"


@register_runtime
class SparkLocalRuntime(Runtime):
    name = "spark-local"
    install_hint = "pip install 'kexport[spark]' (pyspark, pyarrow) and a Java 17+ runtime"

    def available(self):
        for module in ("pyspark", "pyarrow"):
            reason = module_missing(module, "'kexport[spark]'")
            if reason:
                return reason
        if "java" not in _SPARK:
            _SPARK["java"] = java_problem()
        return _SPARK["java"]

    def prepare(self) -> None:
        """Start the SparkSession on the Spark thread while the model loads (not waited for here;
        a start that fails is started again, and reported, by the first `load`)."""
        if self.available() is None:
            on_spark_thread_async(_session)

    def load(self, path, **options):
        return SparkLocalSession(Path(path))


def shared_session():
    """The process-wide local[2] SparkSession (created on first use, stopped at exit)."""
    return on_spark_thread(_session)


def on_spark_thread(fn, *args):
    """Run `fn(*args)` on the process's one Spark thread and return its result.

    py4j pins one socket to each Python thread that calls the JVM; `kexport all` checks artifacts
    on verifier threads that come and go with every run, so each run would open (and a dying
    thread close) connections to the shared JVM. One long-lived thread keeps one connection for
    the whole process, and never two Spark jobs of this runtime at once.
    """
    return on_spark_thread_async(fn, *args).result()


def on_spark_thread_async(fn, *args):
    """The same, returning a Future. The thread is a daemon: a run that ends early (a refused
    model) does not wait at exit for a SparkSession that `prepare` is still starting."""
    from concurrent.futures import Future

    with _LOCK:
        if "queue" not in _SPARK:
            import queue

            _SPARK["queue"] = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_SPARK["queue"],), name="kexport-spark-local", daemon=True).start()
    future = Future()
    _SPARK["queue"].put((future, fn, args))
    return future


def _serve(jobs) -> None:
    while True:
        future, fn, args = jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # re-raised in the caller's thread by Future.result()  # noqa: BLE001
                future.set_exception(e)


def _alive(spark) -> bool:
    """Is this SparkSession's context still running (not stopped by someone else's job or test)?"""
    try:
        return spark.sparkContext._jsc is not None and not spark._jsparkSession.sparkContext().isStopped()
    except Exception:  # the gateway lost the object: as good as stopped  # noqa: BLE001
        return False


def _session():
    if "session" in _SPARK and not _alive(_SPARK["session"]):
        _SPARK.pop("session")  # stopped under us: start another on the same JVM
    if "session" not in _SPARK:
        import warnings

        # pyspark warns about pandas >= 3 on import; nothing here hands a row to pandas
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        from pyspark.sql import SparkSession

        # the Python workers must be this interpreter: it has the runtimes, pyarrow and numpy
        os.environ["PYSPARK_PYTHON"] = sys.executable
        _launch_quietly()
        spark = (SparkSession.builder.master(MASTER).appName("kexport-spark-local")
                 .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                 .config("spark.sql.shuffle.partitions", "2")
                 .getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        _SPARK["session"] = spark
        atexit.register(_stop)
    return _SPARK["session"]


def log_path() -> Path | None:
    """The file that holds the JVM's output (Spark's log4j lines, the Python workers' stderr)."""
    return _SPARK.get("log")


def _launch_quietly() -> None:
    """Start Spark's JVM with its stdout and stderr in a log file, not the user's terminal
    (log4j banners, "WARN Utils: Your hostname ...", the JDK's incubator notice). With --debug
    (KEXPORT_DEBUG=1) the JVM writes to the terminal as before. A JVM already started in this
    process (by the caller) is left as it is."""
    from pyspark import SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None or os.environ.get("KEXPORT_DEBUG"):
        return
    log = owned.temp_dir("kexport-spark-local-log-") / "spark.log"
    _SPARK["log"] = log
    atexit.register(_remove_log)
    with open(log, "ab") as out:  # Popen duplicates the descriptor; the JVM keeps writing after this closes
        try:
            gateway = launch_gateway(popen_kwargs={"stdout": out, "stderr": subprocess.STDOUT})
        except Exception as e:
            _SPARK["keep_log"] = True
            raise RuntimeError(f"Spark did not start: {log_error(log) or e} (Spark's log: {log})") from e
    SparkContext._ensure_initialized(gateway=gateway)


def log_error(log: Path | None) -> str:
    """The last line of the JVM's log that names an error or exception ('' if none)."""
    try:
        lines = Path(log).read_text(encoding="utf-8", errors="replace").splitlines() if log else []
    except OSError:
        return ""
    hits = [ln.strip() for ln in lines if ("Exception" in ln or "Error" in ln or " ERROR " in ln) and ln.strip()]
    return hits[-1][:300] if hits else ""


def _remove_log() -> None:
    log = _SPARK.get("log")
    if log is not None and not _SPARK.get("keep_log"):  # a failure's log stays for the user to read
        shutil.rmtree(log.parent, ignore_errors=True)


def _stop() -> None:
    spark = _SPARK.pop("session", None)
    app = None
    if spark is not None:
        with contextlib.suppress(Exception):
            app = "".join(c if c.isalnum() or c in "_.-" else "_" for c in spark.sparkContext.applicationId)
        with contextlib.suppress(Exception):
            spark.stop()
    if app:  # the copies the packages' jobs staged for this application (kexport_spark/job.py)
        shutil.rmtree(Path(tempfile.gettempdir()) / f"kexport-spark-{app}", ignore_errors=True)


def _np_dtype(dtype: str):
    """schema.json's dtype as NumPy's: a "string" tensor is an object array of str (Arrow/Parquet strings)."""
    return np.dtype(object) if dtype == "string" else np.dtype(dtype)


def write_parquet(path: Path, inputs: dict, specs: list[dict]) -> int:
    """The reference inputs as a Parquet table: `row_id` plus one column per input (a scalar for
    one-value inputs, else a flat array of the row's values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(np.asarray(inputs[specs[0]["name"]]))
    cols, names = [pa.array(np.arange(n, dtype=np.int64))], [ROW_ID]
    for spec in specs:
        x = np.asarray(inputs[spec["name"]]).astype(_np_dtype(spec["dtype"]), copy=False)
        if not spec["dims"]:
            cols.append(pa.array(x))
        else:
            flat = x.reshape(n, -1)
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * flat.shape[1])
            cols.append(pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1))))
        names.append(spec["name"])
    pq.write_table(pa.table(cols, names=names), path)
    return n


def read_outputs(path: Path, specs: list[dict], n: int) -> dict:
    """The scored Parquet folder back as arrays keyed by output name, in row_id order."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.num_rows != n:
        raise RuntimeError(f"spark-local: the job wrote {table.num_rows} rows for {n} input rows")
    order = np.argsort(table.column(ROW_ID).to_numpy())
    if not np.array_equal(table.column(ROW_ID).to_numpy()[order], np.arange(n)):
        raise RuntimeError("spark-local: the row_id column did not come through the job unchanged")
    out = {}
    for spec in specs:
        col = table.column(spec["column"]).combine_chunks()
        if col.null_count:
            raise RuntimeError(f"spark-local: output {spec['name']!r} has {col.null_count} null rows")
        for _ in spec["dims"]:
            col = col.flatten()
        values = col.to_numpy(zero_copy_only=False).reshape((n,) + tuple(spec["dims"]))
        out[spec["name"]] = values[order].astype(_np_dtype(spec["dtype"]), copy=False)
    return out


class _Py4JTrouble(RuntimeError):
    """The job lost its SparkSession (py4j could not reach its JVM objects); not a verdict."""


class SparkLocalSession:
    def __init__(self, package_dir: Path):
        self.dir = Path(package_dir)
        self.schema = json.loads((self.dir / "schema.json").read_text(encoding="utf-8"))
        spec = importlib.util.spec_from_file_location(f"kexport_spark_score_{id(self)}", self.dir / "score.py")
        self.job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.job)
        self.spark = shared_session()  # started (or its failure raised) before the first predict; a
        # session stopped by someone else is replaced in _predict

    def predict(self, inputs):
        try:
            return on_spark_thread(self._predict, inputs)
        except _Py4JTrouble:  # the session's JVM objects were lost between jobs: once more, on a live session
            return on_spark_thread(self._predict, inputs)

    def _predict(self, inputs):
        spark = _session()
        work = owned.temp_dir("kexport-spark-local-run-")
        try:
            n = write_parquet(work / "in.parquet", inputs, self.schema["inputs"])
            err = io.StringIO()  # the job's one `error:` line (score.py main's stderr=, not sys.stderr:
            # swapping sys.stderr would capture, and race with, every other thread of the process)
            code = self.job.main(["--input", str(work / "in.parquet"), "--output", str(work / "out.parquet"),
                                  "--master", MASTER], spark=spark, stderr=err)
            if code != 0:
                lines = err.getvalue().strip().splitlines()
                if lines and lines[-1].startswith("error: Py4JError"):  # py4j lost a JVM object: not a verdict
                    _SPARK.pop("session", None)  # the next try starts from a fresh session
                    raise _Py4JTrouble(lines[-1])
                log = log_path()
                if log is not None:
                    _SPARK["keep_log"] = True
                raise RuntimeError(f"score.py exited with {code}: {lines[-1] if lines else 'no message'}"
                                   + (f" (Spark's log: {log})" if log is not None else ""))
            return read_outputs(work / "out.parquet", self.schema["outputs"], n)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def close(self):
        pass  # the SparkSession is shared; it stops at exit
