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

import atexit
import json
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .base import Runtime, register_runtime

RUNNER_DIR = Path(__file__).resolve().parent / "jvm"
JAR = RUNNER_DIR / "target" / "kexport-jvm-runner.jar"
CLASSPATH = RUNNER_DIR / "target" / "classpath.txt"
START_TIMEOUT = 60.0
CALL_TIMEOUT = 300.0
INSTALL_HINT = ("install Java 17+ and Maven (apt-get install openjdk-17-jdk-headless maven), then "
                "`make jvm-runner` (mvn package in runtimes/jvm: DL4J, ND4J for linux-x86_64 and "
                "ONNX Runtime from Maven Central)")
# Logs go to stderr; DL4J's INFO lines about every imported layer are noise here.
JVM_FLAGS = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dorg.slf4j.simpleLogger.logFile=System.err"]


def jvm_missing() -> str | None:
    """Why the JVM runner cannot start here, or None."""
    if shutil.which("java") is None:
        return "java is not on PATH; " + INSTALL_HINT
    absent = [p for p in (JAR, CLASSPATH) if not p.exists()]
    if absent:
        how = "run `make jvm-runner`" if shutil.which("mvn") else "mvn is not on PATH; " + INSTALL_HINT
        return f"the JVM runner is not built ({absent[0].relative_to(RUNNER_DIR.parent.parent)} missing); {how}"
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


class JvmProcess:
    """One `java kexport.jvm.Runner`; requests are serialised by a lock."""

    def __init__(self):
        t0 = time.perf_counter()
        cp = f"{JAR}:{CLASSPATH.read_text().strip()}"
        self.proc = subprocess.Popen(
            ["java", *JVM_FLAGS, "-cp", cp, "kexport.jvm.Runner"], cwd=str(RUNNER_DIR),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.lock = threading.Lock()
        self.hello = self._wait(START_TIMEOUT, "start")
        self.start_seconds = round(time.perf_counter() - t0, 3)

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            try:
                self.lines.put(dict(json.loads(line)))
            except (ValueError, TypeError):  # a native library writing to fd 1: keep it for errors
                if line:
                    self.stderr_tail = (self.stderr_tail + [line])[-20:]
        self.lines.put(None)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [raw.decode(errors="replace").rstrip()])[-20:]

    def _wait(self, timeout: float, what: str) -> dict:
        try:
            reply = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise JvmError(f"the JVM runner did not answer '{what}' within {timeout:.0f}s (killed)") from None
        if reply is None:
            tail = [ln for ln in self.stderr_tail if ln.strip()]
            raise JvmError(f"the JVM runner exited during '{what}'" + (f": {tail[-1]}" if tail else ""))
        if not reply.get("ok"):
            raise JvmError(reply.get("error") or "JVM runner error")
        return reply

    def call(self, request: dict, timeout: float = CALL_TIMEOUT) -> dict:
        with self.lock:
            if self.proc.poll() is not None:
                raise JvmError(f"the JVM runner is not running (exit code {self.proc.returncode})")
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            except BrokenPipeError as e:
                raise JvmError("the JVM runner closed its input") from e
            return self._wait(timeout, request.get("cmd", "?"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)


_PROC: list[JvmProcess] = []
_PROC_LOCK = threading.Lock()


def jvm_process() -> JvmProcess:
    """The shared JVM, (re)started when needed."""
    with _PROC_LOCK:
        if not _PROC or not _PROC[0].alive():
            _PROC[:] = [JvmProcess()]
        return _PROC[0]


@atexit.register
def _close():
    for p in _PROC:
        p.kill()
    _PROC.clear()


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
        self.tmp = Path(tempfile.mkdtemp(prefix="kexport-jvm-"))
        self.predict_seconds: list[float] = []

    def predict(self, inputs):
        feeds = {}
        for i, spec in enumerate(self.inputs):
            key = self.names.get(spec["name"], spec["name"])
            if key not in inputs:
                raise JvmError(f"the model's input '{spec['name']}' has no array (got {sorted(inputs)})")
            path = self.tmp / f"in_{i}.npy"
            np.save(path, np.ascontiguousarray(np.asarray(inputs[key]).astype(spec.get("dtype", "float32"))))
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
        if not _PROC or not _PROC[0].alive():
            return None
        hello = _PROC[0].hello
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
