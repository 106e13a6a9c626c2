"""The JVM: runtimes `dl4j` (DL4J's KerasModelImport of a Keras 2 HDF5) and `onnxruntime-java`
(com.microsoft.onnxruntime on the JVM).

Both run in one long-lived Java process (runtimes/jvm, built by `make jvm-runner`), started on
first use and closed atexit: starting the JVM costs ~0.3 s and ND4J's native backend another
~2-3 s on the first DL4J model, a prediction milliseconds. Requests and replies are one JSON
object per line; tensors travel as .npy files in a private temporary directory (named by
position, never by the model's tensor names). Every wait has a timeout: a hung JVM (ND4J's
Orthogonal initializer can loop forever on some shapes) is an error, not a hang.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import owned
from .base import Runtime, register_runtime
from .child import Child, Pool, last_line

RUNNER_DIR = Path(__file__).resolve().parent / "jvm"
JAR = RUNNER_DIR / "target" / "kexport-jvm-runner.jar"
CLASSPATH = RUNNER_DIR / "target" / "classpath.txt"
START_TIMEOUT = 60.0
CALL_TIMEOUT = 300.0
INSTALL_HINT = ("install Java 17+ and Maven (apt-get install openjdk-17-jdk-headless maven), then "
                "`make jvm-runner` (mvn package in runtimes/jvm: DL4J, ND4J for linux-x86_64 and "
                "ONNX Runtime from Maven Central)")
# Logs go to stderr; DL4J's INFO lines about every imported layer are noise here.
# A native crash (ND4J) writes its hs_err file to the temporary directory, not into runtimes/jvm.
JVM_FLAGS = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dorg.slf4j.simpleLogger.logFile=System.err",
             f"-XX:ErrorFile={Path(tempfile.gettempdir()) / 'kexport-jvm-hs_err_pid%p.log'}"]


def jvm_missing() -> str | None:
    """Why the JVM runner cannot start here, or None."""
    if shutil.which("java") is None:
        return "java is not on PATH; " + INSTALL_HINT
    absent = [p for p in (JAR, CLASSPATH) if not p.exists()]
    if absent:
        how = "run `make jvm-runner`" if shutil.which("mvn") else "mvn is not on PATH; " + INSTALL_HINT
        return f"the JVM runner is not built (runtimes/{absent[0].relative_to(RUNNER_DIR.parent)} missing); {how}"
    jars = [p for p in CLASSPATH.read_text().strip().split(":") if p]
    gone = [p for p in jars if not Path(p).exists()]
    if gone:
        return (f"{len(gone)} of the JVM runner's {len(jars)} jars are gone from the Maven repository "
                f"(e.g. {Path(gone[0]).name}); run `make jvm-runner`")
    return None


def nd4j_platform_missing() -> str | None:
    """nd4j-native is pulled for linux-x86_64 only (runtimes/jvm/pom.xml)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the runner's nd4j-native is built for linux-x86_64 only (this is {sys.platform}/{platform.machine()})"
    return None


class JvmError(RuntimeError):
    pass


def _json_lines(stream, note):
    """One JSON object per line; anything else on fd 1 (a native library) is kept for errors."""
    for raw in stream:
        line = raw.decode(errors="replace").strip()
        try:
            yield dict(json.loads(line))
        except (ValueError, TypeError):
            note(line)


def _crash(tail: list[str]) -> str | None:
    """A JVM that died of a native crash (ND4J) prints a '#' banner: name the signal and the report."""
    text = [ln.strip("# ").strip() for ln in tail]
    signal = next((ln.split(" (")[0] for ln in text if ln.startswith("SIG")), None)
    if signal is None:
        return last_line(tail)
    report = next((text[i + 1] for i, ln in enumerate(text[:-1]) if "error report file" in ln), "")
    return f"native crash ({signal})" + (f", details in {report}" if report else "")


def _reply(message: dict) -> dict:
    if not message.get("ok"):
        raise JvmError(message.get("error") or "JVM runner error")
    return message


class JvmProcess(Child):
    """One `java kexport.jvm.Runner` (runtimes/child.py: lock, timeouts, restart)."""

    def __init__(self, _key=None):
        cp = f"{JAR}:{CLASSPATH.read_text().strip()}"
        super().__init__(["java", *JVM_FLAGS, "-cp", cp, "kexport.jvm.Runner"], cwd=str(RUNNER_DIR),
                         label="the JVM runner", error=JvmError, read=_json_lines, decode=_reply,
                         start_timeout=START_TIMEOUT, kill_wait=10.0, last_words=_crash)

    def call(self, request: dict, timeout: float = CALL_TIMEOUT) -> dict:
        return super().call((json.dumps(request) + "\n").encode(), request.get("cmd", "?"), timeout)


_POOL = Pool(JvmProcess)


def jvm_process() -> JvmProcess:
    """The shared JVM, (re)started when needed."""
    return _POOL.get()


def _as_dtype(value, dtype: str) -> np.ndarray:
    """The array the runner reads: strings as NumPy unicode ("<Un", UTF-32: the .npy form Java
    reads without a pickle), bytes decoded as UTF-8; numbers cast to the model's dtype."""
    a = np.asarray(value)
    if dtype == "str":
        if a.dtype.kind in "OS":
            a = np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[str])(a)
        a = a.astype(str)
        if a.dtype.itemsize == 0:  # only empty strings: "<U0" is not a dtype Java can size
            a = a.astype("<U1")
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a.astype(dtype))


class JvmSession:
    """A model loaded in the shared JVM. `names` maps the file's tensor names to Keras names
    (the dl4j target renames the layers DL4J's weight import would mangle)."""

    def __init__(self, kind: str, path: str, names: dict | None = None, threads: int | None = None):
        self.proc = jvm_process()
        request = {"cmd": "load", "kind": kind, "path": str(Path(path).resolve())}
        if threads:
            request["threads"] = int(threads)
        head = self.proc.call(request)
        self.id = head["id"]
        self.load_seconds = head["seconds"]
        self.inputs = head["inputs"]
        self.names = dict(names or {})
        self.tmp = owned.temp_dir("kexport-jvm-")
        self.predict_seconds: list[float] = []

    def predict(self, inputs):
        feeds = {}
        for i, spec in enumerate(self.inputs):
            key = self.names.get(spec["name"], spec["name"])
            if key not in inputs:
                raise JvmError(f"the model's input '{spec['name']}' has no array (got {sorted(inputs)})")
            path = self.tmp / f"in_{i}.npy"
            np.save(path, _as_dtype(inputs[key], spec.get("dtype", "float32")))
            feeds[spec["name"]] = str(path)
        try:
            head = self.proc.call({"cmd": "predict", "id": self.id, "inputs": feeds, "outdir": str(self.tmp)})
            self.predict_seconds.append(head["seconds"])
            return {self.names.get(k, k): np.load(v) for k, v in head["outputs"].items()}
        finally:
            for f in self.tmp.glob("*.npy"):
                f.unlink()

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.proc.alive():
            try:
                self.proc.call({"cmd": "dispose", "id": self.id}, timeout=30)
            except JvmError:
                pass


class _Jvm(Runtime):
    kind = ""
    install_hint = INSTALL_HINT

    def platform_missing(self) -> str | None:
        return None

    def available(self):
        reason = jvm_missing() or self.platform_missing()
        if reason:
            return reason
        # Starting the shared JVM is the real test (wrong Java version, broken jar); it is
        # reused for every session afterwards.
        try:
            jvm_process()
        except (JvmError, OSError) as e:
            return str(e)
        return None

    def prepare(self):
        if not (jvm_missing() or self.platform_missing()):
            jvm_process()  # the shared JVM, reused by available() and every session

    @property
    def device(self) -> str | None:
        """What `kexport doctor` prints under an available runtime: the JVM and library versions."""
        proc = _POOL.running()
        if proc is None:
            return None
        hello = proc.hello
        lib = (f"DL4J {hello.get('dl4j_version')} (nd4j-native linux-x86_64)" if self.kind == "dl4j"
               else f"ONNX Runtime {hello.get('onnxruntime_version')}")
        mvn = "mvn on PATH" if shutil.which("mvn") else "mvn not on PATH (needed only to rebuild: apt-get install maven)"
        return f"Java {hello.get('java')}, {lib}; {mvn}"


@register_runtime
class Dl4j(_Jvm):
    name = "dl4j"
    kind = "dl4j"

    def platform_missing(self):
        return nd4j_platform_missing()

    def load(self, path, **options):
        return JvmSession("dl4j", str(path), names=options.get("names"))


@register_runtime
class OnnxRuntimeJava(_Jvm):
    name = "onnxruntime-java"
    kind = "onnx"

    def load(self, path, **options):
        return JvmSession("onnx", str(path), names=options.get("names"), threads=options.get("num_threads"))
