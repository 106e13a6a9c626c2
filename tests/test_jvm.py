"""The JVM: target `dl4j` (Keras 2 HDF5 for DL4J's KerasModelImport) verified in DL4J, and the
ONNX artifact verified by ONNX Runtime for Java, both in the one shared Java process.

The parity tests read the session's sample exports (tests/conftest.py), so in `make test` they
add no export time. A quick run of this file alone:
    KEXPORT_TEST_TARGETS=dl4j,onnx .venv/bin/python -m pytest tests/test_jvm.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import kexport
from conftest import SAMPLE_MODELS, TEST_TARGETS
from kexport.runtimes import get_runtime
from kexport.runtimes import jvm_runner

ALL = "all" in TEST_TARGETS


def _need(runtime: str, target: str):
    if not ALL and target not in TEST_TARGETS:
        pytest.skip(f"{target} not in KEXPORT_TEST_TARGETS")
    reason = get_runtime(runtime).available()
    if reason:
        pytest.skip(f"{runtime}: {reason}")


def _row(sample_export, model: str, target: str):
    result, out = sample_export(model)
    rows = [r for r in result.targets if r.target == target and r.variant == "fp32"]
    assert rows, f"{target} missing from the export of {model}"
    return rows[0], out


@pytest.mark.parametrize("model", list(SAMPLE_MODELS))
def test_dl4j_parity(sample_export, model):
    """Every sample model imports into DL4J and computes what Keras computes (fp32 tolerance)."""
    _need("dl4j", "dl4j")
    row, out = _row(sample_export, model, "dl4j")
    assert row.status == "ok", row.error
    (p,) = [p for p in row.parity if p.runtime == "dl4j"]
    assert p.status == "passed", p.reason
    assert p.max_abs_err is not None and p.max_abs_err <= 1e-5
    names = row.extra["runtime_options"]["names"]
    keras_names = []
    for part in ("inputs", "outputs"):
        with np.load(out / "reference" / f"{part}.npz") as z:
            keras_names += z.files
    assert sorted(names.values()) == sorted(keras_names)
    assert (out / row.artifact).name == "model.h5"


@pytest.mark.parametrize("model", list(SAMPLE_MODELS))
def test_onnxruntime_java_parity(sample_export, model):
    _need("onnxruntime-java", "onnx")
    row, _ = _row(sample_export, model, "onnx")
    assert row.status == "ok", row.error
    (p,) = [p for p in row.parity if p.runtime == "onnxruntime-java"]
    assert p.status == "passed", p.reason


def test_onnxruntime_java_matches_python(sample_export):
    """Same file, same inputs: ONNX Runtime for Java and for Python give the same outputs."""
    _need("onnxruntime-java", "onnx")
    row, out = _row(sample_export, "two_in_two_out", "onnx")
    with np.load(out / "reference" / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    got = {}
    for name in ("onnxruntime", "onnxruntime-java"):
        session = get_runtime(name).load(str(out / row.artifact))
        try:
            got[name] = session.predict(inputs)
        finally:
            session.close()
    assert sorted(got["onnxruntime-java"]) == ["class_probs", "score"]
    for k, v in got["onnxruntime"].items():
        np.testing.assert_allclose(got["onnxruntime-java"][k], v, rtol=1e-5, atol=1e-6)


def test_dl4j_parity_fails_on_changed_weights(sample_export, tmp_path):
    """The comparison is real: the same file with one kernel scaled by 1.5 fails in DL4J."""
    import h5py

    from kexport.parity import check_artifact
    from kexport.targets.base import FP32, Artifact

    _need("dl4j", "dl4j")
    row, out = _row(sample_export, "wine_mlp", "dl4j")
    with np.load(out / "reference" / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(out / "reference" / "outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    opts = row.extra["runtime_options"]
    good, bad = tmp_path / "good.h5", tmp_path / "bad.h5"
    shutil.copy(out / row.artifact, good)
    shutil.copy(out / row.artifact, bad)
    with h5py.File(bad, "r+") as f:
        kernel = f["model_weights/hidden/hidden/kernel:0"]
        kernel[...] = kernel[...] * 1.5
    (ok,) = check_artifact(Artifact(good, runtime_options=opts), ["dl4j"], inputs, outputs, FP32)
    (broken,) = check_artifact(Artifact(bad, runtime_options=opts), ["dl4j"], inputs, outputs, FP32)
    assert ok.status == "passed", ok.reason
    assert broken.status == "failed", (broken.status, broken.reason)


def test_dl4j_lists_every_layer_it_cannot_import(tmp_path):
    """GRU, LayerNormalization and a GELU activation: one `unsupported` row naming all three."""
    import keras

    inp = keras.Input((6, 4), name="seq")
    x = keras.layers.GRU(5, return_sequences=True, name="gru")(inp)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Dense(3, activation="gelu", name="head")(x)
    out = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    path = tmp_path / "gru_ln.keras"
    keras.Model(inp, out).save(path)
    result = kexport.export(str(path), ["dl4j"], tmp_path / "out")
    (row,) = result.targets
    assert row.status == "unsupported"
    assert "layer 'gru' (GRU): DL4J imports LSTM and SimpleRNN only" in row.error
    assert "layer 'ln' (LayerNormalization): no Keras import for it in DL4J" in row.error
    assert "layer 'head' (Dense): activation 'gelu' has no identical DL4J activation" in row.error
    assert "pool" not in row.error
    assert result.exit_code == 1
    assert not (tmp_path / "out" / "dl4j").exists()


def test_layer_names_dl4j_would_mangle_are_renamed():
    """DL4J deletes the layer name (as a regex) from each weight name: `embed` eats `embeddings`."""
    import keras

    from kexport.targets.dl4j.twin import unsafe_names

    inp = keras.Input((5,), dtype="int32", name="ids")
    x = keras.layers.Embedding(10, 4, name="embed")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(4, name="e")(x)  # "e" is inside "kernel:0"
    x = keras.layers.Dense(3, name="dense.x")(x)  # "." is a regex wildcard
    out = keras.layers.Dense(2, name="out")(x)
    renames = unsafe_names(keras.Model(inp, out))
    assert renames == {"embed": "embed_dl4j", "e": "e_dl4j", "dense.x": "dense_x_dl4j"}


def test_runner_reports_errors_and_keeps_serving(tmp_path):
    _need("onnxruntime-java", "onnx")
    bad = tmp_path / "not_onnx.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(jvm_runner.JvmError, match="OrtException"):
        jvm_runner.JvmSession("onnx", str(bad))
    with pytest.raises(jvm_runner.JvmError, match="unknown model kind"):
        jvm_runner.JvmSession("tensorflow", str(bad))
    assert jvm_runner.jvm_process().call({"cmd": "dispose", "id": 999})["ok"]


def test_unavailable_reasons(monkeypatch, tmp_path):
    monkeypatch.setattr(jvm_runner, "JAR", Path(jvm_runner.RUNNER_DIR) / "target" / "absent.jar")
    reason = get_runtime("dl4j").available()
    assert "not built" in reason and "make jvm-runner" in reason
    monkeypatch.setattr(jvm_runner.shutil, "which", lambda name: None)
    for name in ("dl4j", "onnxruntime-java"):
        reason = get_runtime(name).available()
        assert reason.startswith("java is not on PATH") and "apt-get install openjdk-17-jdk-headless maven" in reason
        assert "make jvm-runner" in get_runtime(name).install_hint


def _java_programs() -> dict[str, str]:
    """{class name: source} of the complete Java programs in docs/jvm.md."""
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "jvm.md").read_text()
    blocks = re.findall(r"```java\n(.*?)```", text, re.S)
    return {re.search(r"public class (\w+)", b).group(1): b for b in blocks}


def test_docs_java_programs_compile_and_match(sample_export, tmp_path):
    """docs/jvm.md's DL4J and ONNX Runtime programs, compiled and run on the two_in_two_out export."""
    import subprocess

    _need("dl4j", "dl4j")
    _need("onnxruntime-java", "onnx")
    programs = _java_programs()
    assert sorted(programs) == ["PredictDl4j", "PredictOnnx"]
    for name, src in programs.items():
        (tmp_path / f"{name}.java").write_text(src)
    cp = jvm_runner.CLASSPATH.read_text().strip()
    subprocess.run(["javac", "-cp", cp, "-d", str(tmp_path), *(f"{n}.java" for n in programs)],
                   cwd=tmp_path, check=True, capture_output=True, timeout=300)
    java = ["java", *jvm_runner.JVM_FLAGS, "-cp", f"{tmp_path}:{cp}"]

    dl4j_row, out = _row(sample_export, "two_in_two_out", "dl4j")
    with np.load(out / "reference" / "inputs.npz") as z:
        for k in z.files:
            np.save(tmp_path / f"{k}.npy", z[k])
    with np.load(out / "reference" / "outputs.npz") as z:
        reference = {k: z[k] for k in z.files}
    subprocess.run([*java, "PredictDl4j", str(out / dl4j_row.artifact), "image.npy", "meta.npy"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=300)
    for k, ref in reference.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{k}.npy"), ref, atol=1e-5, rtol=1e-4)

    onnx_row, _ = _row(sample_export, "two_in_two_out", "onnx")
    run = subprocess.run([*java, "PredictOnnx", str(out / onnx_row.artifact)], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300)
    printed = {line.split(" ", 1)[0]: np.array(json.loads(line.split(" ", 1)[1]), np.float32)
               for line in run.stdout.splitlines() if line.startswith(("class_probs ", "score "))}
    session = get_runtime("onnxruntime").load(str(out / onnx_row.artifact))
    want = session.predict({"image": np.full((1, 8, 8, 1), 0.5, np.float32),
                            "meta": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)})
    for k, v in want.items():
        np.testing.assert_allclose(printed[k], v[0], atol=1e-6, rtol=1e-5)


# ---- runtimes/child.py: the long-lived child both runners use ------------------------------------

def _echo_child(tmp_path, script: str, **kw):
    """A Python child speaking JSON lines, through the same helper as the JVM runner."""
    import sys

    from kexport.runtimes.child import Child

    (tmp_path / "child.py").write_text(script)
    return Child([sys.executable, str(tmp_path / "child.py")], cwd=str(tmp_path), label="the test child",
                 error=jvm_runner.JvmError, read=jvm_runner._json_lines, decode=jvm_runner._reply,
                 start_timeout=kw.pop("start_timeout", 30), kill_wait=5, **kw)


ECHO = ("import json, sys, time\nprint(json.dumps({'ok': True}), flush=True)\n"
        "for line in sys.stdin:\n    r = json.loads(line)\n"
        "    if r['cmd'] == 'sleep': time.sleep(30)\n"
        "    if r['cmd'] == 'die': sys.stderr.write('dying now\\n'); sys.stderr.flush(); sys.exit(3)\n"
        "    print('stray native line', flush=True)\n"
        "    print(json.dumps({'ok': r['cmd'] != 'fail', 'error': 'it failed', 'echo': r}), flush=True)\n")


def test_child_answers_times_out_and_reports_its_death(tmp_path):
    import json as _json

    child = _echo_child(tmp_path, ECHO)
    try:
        assert child.call(_json.dumps({"cmd": "hi"}).encode() + b"\n", "hi", 10)["echo"] == {"cmd": "hi"}
        with pytest.raises(jvm_runner.JvmError, match="^it failed$"):
            child.call(b'{"cmd": "fail"}\n', "fail", 10)
        assert child.alive()  # an error reply keeps it serving
        with pytest.raises(jvm_runner.JvmError, match=r"did not answer 'sleep' within 1s \(killed\)"):
            child.call(b'{"cmd": "sleep"}\n', "sleep", 1)
        assert not child.alive()
        with pytest.raises(jvm_runner.JvmError, match=r"the test child is not running \(exit code"):
            child.call(b'{"cmd": "hi"}\n', "hi", 10)
    finally:
        child.kill()
    child = _echo_child(tmp_path, ECHO)
    with pytest.raises(jvm_runner.JvmError, match="exited during 'die': dying now"):
        child.call(b'{"cmd": "die"}\n', "die", 10)


def test_pool_restarts_a_dead_child(tmp_path):
    from kexport.runtimes.child import Pool

    pool = Pool(lambda key: _echo_child(tmp_path, ECHO))
    try:
        first = pool.get()
        assert pool.get() is first
        first.kill()
        second = pool.get()
        assert second is not first and second.alive()
    finally:
        pool.close()


def test_a_native_jvm_crash_is_named():
    tail = ["#", "# A fatal error has been detected by the Java Runtime Environment:", "#",
            "#  SIGSEGV (0xb) at pc=0x00007f2088c81123, pid=30803, tid=30806", "#",
            "# An error report file with more information is saved as:", "# /tmp/kexport-jvm-hs_err_pid30803.log",
            "#", "#   https://bugs.debian.org/openjdk-17", "#"]
    assert jvm_runner._crash(tail) == "native crash (SIGSEGV), details in /tmp/kexport-jvm-hs_err_pid30803.log"
    assert jvm_runner._crash(["Exception in thread main", "#"]) == "Exception in thread main"
