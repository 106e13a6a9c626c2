"""Raspberry Pi (64-bit Raspberry Pi OS = Debian bookworm arm64), proven here under qemu user-mode
emulation: the TFLite artifact (fp32 and int8) in LiteRT's official aarch64 wheel, and the
generated Flask server (onnxruntime's aarch64 wheel) answering a request.

The arm64 root is built when missing (runtimes/arm64/build_root.sh, about a minute); these tests
skip, with the build's own error, only when it cannot be built here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLE_MODELS
from kexport.runtimes import arm64, get_runtime

FP32_ATOL, FP32_RTOL = 1e-5, 1e-4  # exporter/targets/base.py FP32, as the tflite/flask targets verify


@pytest.fixture(scope="session")
def arm64_root():
    """The built root (rebuilt when its versions are stale; 0.1 s when up to date), or a skip
    naming why it cannot be built here."""
    proc = subprocess.run(["bash", str(arm64.BUILD_SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        pytest.skip(f"the arm64 root cannot be built here: {lines[-1] if lines else proc.returncode}")
    reason = arm64.unavailable()
    assert reason is None, f"build_root.sh succeeded but the root is unusable: {reason}"
    return arm64.root_dir()


def _emulated(pid: int) -> bool:
    """The process really runs under qemu's aarch64 emulator (not a host Python fallback)."""
    return "qemu-aarch64" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))


@pytest.fixture(scope="module")
def digits_tflite(arm64_root, tmp_path_factory):
    """digits_cnn -> tflite fp32 + int8 (calibrated on real digits), through the export API."""
    import kexport
    from kexport.options import ExportOptions
    from sample_models.make_eval_data import write_digits_data

    cal, _ = write_digits_data(tmp_path_factory.mktemp("digits_data"))
    out = tmp_path_factory.mktemp("arm64_tflite")
    opts = ExportOptions(quantize="int8", calibration=str(cal))
    result = kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["tflite"], out, options=opts)
    return result, out


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_litert_arm64_parity(digits_tflite, variant):
    result, _ = digits_tflite
    row = next(t for t in result.targets if t.variant == variant)
    assert row.status == "ok", row.error
    rows = {p.runtime: p for p in row.parity}
    arm, x86 = rows["litert-arm64"], rows["litert"]
    assert arm.status == "passed", arm.reason
    assert x86.status == "passed", x86.reason
    if variant == "fp32":  # the strict fp32 bound, not a loosened one
        assert (arm.atol, arm.rtol) == (FP32_ATOL, FP32_RTOL)
    else:  # int8: one quantization step is the whole difference from the x86 kernels
        assert arm.max_abs_err < 0.05 and arm.top1_agreement >= 0.9


def test_report_row_says_emulated(digits_tflite):
    _, out = digits_tflite
    report = json.loads((out / "report.json").read_text())
    for row in report["targets"]:
        (p,) = [p for p in row["parity"] if p["runtime"] == "litert-arm64"]
        assert "emulated" in (p.get("device") or "")


def test_child_is_aarch64_under_qemu_without_tensorflow(digits_tflite):
    _, out = digits_tflite
    session = get_runtime("litert-arm64").load(str(out / "tflite" / "model_int8.tflite"))
    try:
        assert _emulated(session.proc.pid)
        assert session.tensorflow_loaded is False
        x = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
        y = session.predict({"pixels": x})  # Keras names in and out, int8 (de)quantized inside
        assert set(y) == {"digit"} and y["digit"].shape == (3, 10) and y["digit"].dtype == np.float32
        np.testing.assert_allclose(y["digit"].sum(axis=1), 1.0, atol=0.05)  # a softmax, dequantized
    finally:
        session.close()
    assert not session._shim.exists()


def test_skipped_with_reason_when_the_root_is_missing(tmp_path, monkeypatch, digits_tflite):
    """No root: the row is `skipped` naming `make arm64-root`, never passed or failed."""
    from kexport.parity import check_artifact
    from kexport.targets import Artifact
    from kexport.targets.base import FP32

    _, out = digits_tflite
    monkeypatch.setenv("KEXPORT_ARM64_ROOT", str(tmp_path / "none"))
    with np.load(out / "reference" / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(out / "reference" / "outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    art = Artifact(path=out / "tflite" / "model.tflite", variant="fp32")
    (row,) = check_artifact(art, ["litert-arm64"], inputs, outputs, FP32)
    assert row.status == "skipped" and "make arm64-root" in row.reason


def test_docs_python_on_pi_lines_run_in_the_root(digits_tflite, tmp_path):
    """The Python lines of docs/raspberry_pi.md, as written, in the arm64 root on the exported
    model: the names are the model's real ones and the numbers are LiteRT's on x86."""
    import re

    from kexport.runtimes.isolated import IsolatedSession

    _, out = digits_tflite
    doc = (ROOT / "docs" / "raspberry_pi.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "get_signature_runner" in b)
    (tmp_path / "model.tflite").symlink_to(out / "tflite" / "model.tflite")
    script = code + "\nnp.savez('seen.npz', pixels=pixels, digit=digit)\n"
    proc = subprocess.run([*arm64.guest_python(), "-c", script], cwd=tmp_path, env=arm64.guest_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-600:]
    with np.load(tmp_path / "seen.npz") as z:
        pixels, digit = z["pixels"], z["digit"]
    assert proc.stdout.strip() == str(digit.argmax(axis=1))
    native = IsolatedSession("litert", str(out / "tflite" / "model.tflite"))
    try:
        want = native.predict({"pixels": pixels})["digit"]
    finally:
        native.close()
    np.testing.assert_allclose(digit, want, atol=FP32_ATOL, rtol=0)


def test_root_has_the_versions_the_generated_server_pins(flask_app, arm64_root):
    """The emulated server runs exactly the stack its requirements.txt pins."""
    site = arm64_root / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
    have = {}
    for d in site.glob("*.dist-info"):
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        have[name.lower().replace("_", "-")] = version
    pins = [ln.split("==") for ln in (flask_app / "requirements.txt").read_text().splitlines()
            if "==" in ln and not ln.startswith("#")]
    assert pins
    for name, version in pins:
        assert have.get(name.strip().lower().replace("_", "-")) == version.strip(), (name, version, have)


def test_build_script_is_idempotent(arm64_root):
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(arm64.BUILD_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "up to date" in proc.stdout
    assert time.perf_counter() - t0 < 10
    stamp = (arm64_root / arm64.STAMP).read_text()
    pins = (ROOT / "constraints.txt").read_text()
    assert "ai-edge-litert==2.3.0" in stamp and "ai-edge-litert==2.3.0" in pins


@pytest.fixture(scope="module")
def flask_app(arm64_root, tmp_path_factory):
    import kexport

    out = tmp_path_factory.mktemp("arm64_flask")
    result = kexport.export(str(SAMPLE_MODELS["two_in_two_out"]), ["flask"], out)
    assert result.targets[0].status == "ok", result.targets[0].error
    return out / "flask"


def test_flask_server_under_qemu_answers_with_keras_values(flask_app, tmp_path):
    """The generated app (onnxruntime, Flask, gunicorn: the Pi's server, TF-Serving has no arm64
    image) started in the arm64 root under emulation, asked over HTTP on 127.0.0.1."""
    from kexport.runtimes.flask_http import free_port, http

    meta = json.loads((flask_app / "model" / "model.json").read_text())
    with np.load(flask_app / "tests" / "reference_inputs.npz") as z:
        x = {k: z[k] for k in z.files}
    with np.load(flask_app / "tests" / "reference_outputs.npz") as z:
        want = {k: z[k] for k in z.files}
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w+")
    env = arm64.guest_env({"WEB_CONCURRENCY": "1", "THREADS": "2", "HOME": str(tmp_path)})
    proc = subprocess.Popen([*arm64.guest_python(), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"],
                            cwd=flask_app, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"gunicorn exited: {Path(log.name).read_text()[-600:]}"
            try:
                if http("GET", url + "/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"not ready in 120 s: {Path(log.name).read_text()[-600:]}")
        assert _emulated(proc.pid)
        body = json.dumps({"inputs": {k: v.tolist() for k, v in x.items()}}).encode()
        status, _, data = http("POST", f"{url}/v1/models/{meta['name']}:predict", body,
                               {"Content-Type": "application/json"}, timeout=120)
        assert status == 200, data[:300]
        got = json.loads(data)["outputs"]
        assert set(got) == set(want)  # outputs by their Keras names
        for name, ref in want.items():
            val = np.asarray(got[name], dtype=np.float64)
            assert val.shape == ref.shape, name
            bound = FP32_ATOL + FP32_RTOL * float(np.max(np.abs(ref)))
            assert float(np.max(np.abs(val - ref))) <= bound, name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
