"""The generated Flask app under real gunicorn, over real HTTP: TF-Serving wire format, parity
with Keras, every bad-input case with its status, a bounded load test, schemathesis against the
app's own openapi.json, graceful shutdown, and the app's own tests run from inside its folder.

gunicorn starts once per app per module (digits: `kexport flask` through the CLI with labels;
two_in_two_out: through the API, for multi-input/multi-output shapes).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
from kexport.runtimes.flask_http import GunicornServer

LABELS = [f"digit-{i}" for i in range(10)]
ATOL, RTOL = 1e-5, 1e-4  # FP32, as the flask target verifies (exporter/targets/base.py)
requests = pytest.importorskip("requests")


def _reference(app_dir: Path):
    with np.load(app_dir / "tests" / "reference_inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(app_dir / "tests" / "reference_outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    return inputs, outputs


def _close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= ATOL + RTOL * float(np.max(np.abs(want))), err


@pytest.fixture(scope="module")
def digits_app(tmp_path_factory):
    from kexport.cli import main

    tmp = tmp_path_factory.mktemp("flask_digits")
    labels = tmp / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp / "out"
    code = main(["flask", str(SAMPLE_MODELS["digits_cnn"]), "-o", str(out), "--name", "digits",
                 "--class-labels", str(labels), "--json"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def digits(digits_app):
    # micro-batching on here (the default is off), so the load test runs requests through it
    server = GunicornServer(digits_app / "flask", workers=2, env={"BATCH_WINDOW_MS": "2"})
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def multi_app(tmp_path_factory):
    import kexport

    out = tmp_path_factory.mktemp("flask_multi")
    result = kexport.export(str(SAMPLE_MODELS["two_in_two_out"]), ["flask"], out, verify=False)
    assert result.targets[0].status == "ok", result.targets[0].error
    server = GunicornServer(out / "flask", workers=1)
    server.wait_ready()
    yield out / "flask", server
    server.stop()


def predict_url(server, name="digits"):
    return f"{server.url}/v1/models/{name}:predict"


# ---------------------------------------------------------------- the export itself

def test_cli_export_passes_parity_over_http(digits_app):
    report = json.loads((digits_app / "report.json").read_text())
    (row,) = [r for r in report["targets"] if r["target"] == "flask"]
    assert row["status"] == "ok"
    (p,) = row["parity"]
    assert p["runtime"] == "flask-http" and p["status"] == "passed", p


def test_app_is_standalone_and_pinned_without_tensorflow(digits_app):
    app = digits_app / "flask"
    reqs = dict(line.split("==") for line in (app / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert "tensorflow" not in " ".join(reqs).lower()
    for pkg in ("onnxruntime", "flask", "gunicorn", "numpy"):
        assert reqs[pkg] == metadata.version(pkg)
    sources = "\n".join(p.read_text() for p in app.rglob("*.py"))
    import re

    assert "import tensorflow" not in sources
    assert not re.search(r"^\s*(from kexport[.\s]|import kexport\b)", sources, re.M), "the app must not need kexport"
    for f in ("app.py", "wsgi.py", "gunicorn.conf.py", "Dockerfile", "README.md", "openapi.json", "model/model.onnx",
              "kexport_runtime/base.py", "kexport_runtime/onnxruntime_runtime.py"):
        assert (app / f).is_file(), f
    assert "curl" in (app / "README.md").read_text()


def test_generated_app_tests_pass_inside_the_app_folder(digits_app):
    app = digits_app / "flask"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=app,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


# ---------------------------------------------------------------- TF-Serving API

def test_status_and_versions_as_tf_serving_reports_them(digits):
    want = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{digits.url}/v1/models/digits").json() == want
    assert requests.get(f"{digits.url}/v1/models/digits/versions/1").json() == want
    for path in ("/v1/models/other", "/v1/models/digits/versions/2", "/v1/models/other/metadata"):
        r = requests.get(digits.url + path)
        assert r.status_code == 404 and "Servable not found" in r.json()["error"]
    assert requests.get(f"{digits.url}/healthz").status_code == 200
    assert requests.get(f"{digits.url}/readyz").json() == {"status": "ready"}


def test_metadata_is_the_signature_def(digits):
    for path in ("/v1/models/digits/metadata", "/v1/models/digits/versions/1/metadata"):
        doc = requests.get(digits.url + path).json()
        assert doc["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
        sd = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
        dims = [int(d["size"]) for d in sd["inputs"]["pixels"]["tensor_shape"]["dim"]]
        assert dims == [-1, 8, 8, 1] and sd["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
        assert list(sd["outputs"]) == ["digit"] and sd["method_name"] == "tensorflow/serving/predict"


def test_every_format_matches_keras(digits, digits_app):
    inputs, outputs = _reference(digits_app / "flask")
    x, want = inputs["pixels"], outputs["digit"]
    for url in (predict_url(digits), f"{digits.url}/v1/models/digits/versions/1:predict"):
        preds = requests.post(url, json={"instances": x.tolist()}).json()["predictions"]
        assert isinstance(preds, list) and len(preds) == len(x) and isinstance(preds[0], list)
        _close(preds, want)
    _close(requests.post(predict_url(digits), json={"inputs": x.tolist()}).json()["outputs"], want)
    _close(requests.post(predict_url(digits), json={"inputs": {"pixels": x.tolist()}}).json()["outputs"], want)
    rows = [{"pixels": {"b64": base64.b64encode(r.astype("<f4").tobytes()).decode()}} for r in x]
    _close(requests.post(predict_url(digits), json={"instances": rows}).json()["predictions"], want)
    buf = io.BytesIO()
    np.save(buf, x)
    r = requests.post(predict_url(digits), data=buf.getvalue(),
                      headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert r.headers["Content-Type"] == "application/x-npy"
    _close(np.load(io.BytesIO(r.content)), want)
    r = requests.post(predict_url(digits), data=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    _close(r.json()["outputs"], want)


def test_labels_on_request(digits, digits_app):
    inputs, outputs = _reference(digits_app / "flask")
    doc = requests.post(predict_url(digits) + "?labels=true", json={"instances": inputs["pixels"].tolist()}).json()
    assert doc["labels"] == [LABELS[i] for i in outputs["digit"].argmax(-1)]
    plain = requests.post(predict_url(digits), json={"instances": inputs["pixels"].tolist()}).json()
    assert set(plain) == {"predictions"}


def test_multi_input_multi_output_shapes(multi_app):
    app, server = multi_app
    inputs, outputs = _reference(app)
    url = predict_url(server, "two_in_two_out")
    rows = [{"image": inputs["image"][i].tolist(), "meta": inputs["meta"][i].tolist()} for i in range(len(inputs["meta"]))]
    preds = requests.post(url, json={"instances": rows}).json()["predictions"]
    assert all(set(p) == {"class_probs", "score"} for p in preds)
    for name in ("class_probs", "score"):
        _close([p[name] for p in preds], outputs[name])
    cols = requests.post(url, json={"inputs": {k: v.tolist() for k, v in inputs.items()}}).json()["outputs"]
    assert set(cols) == {"class_probs", "score"}
    buf = io.BytesIO()
    np.savez(buf, **inputs)
    r = requests.post(url, data=buf.getvalue(), headers={"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
    got = np.load(io.BytesIO(r.content))
    for name in ("class_probs", "score"):
        _close(cols[name], outputs[name])
        _close(got[name], outputs[name])


# ---------------------------------------------------------------- bad input

ROW = np.zeros((8, 8, 1)).tolist()
NPY_WRONG = io.BytesIO()
np.save(NPY_WRONG, np.zeros((2, 8, 8), np.float32))
NPY_OBJECT = io.BytesIO()
np.save(NPY_OBJECT, np.array([{"a": 1}], dtype=object), allow_pickle=True)
JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}
BAD = [
    ("wrong input name", {"inputs": {"image": [ROW]}}, JSON, 400),
    ("wrong shape", {"instances": [np.zeros((8, 7, 1)).tolist()]}, JSON, 400),
    ("wrong rank", {"instances": [np.zeros((8, 8)).tolist()]}, JSON, 400),
    ("ragged rows", {"instances": [ROW, ROW[:7]]}, JSON, 400),
    ("strings", {"instances": [[[["a"]] * 8] * 8]}, JSON, 400),
    ("booleans", {"inputs": [[[[True]] * 8] * 8]}, JSON, 400),
    ("empty instances", {"instances": []}, JSON, 400),
    ("both formats", {"instances": [ROW], "inputs": [ROW]}, JSON, 400),
    ("neither format", {"examples": [ROW]}, JSON, 400),
    ("unknown signature", {"signature_name": "classify", "instances": [ROW]}, JSON, 400),
    ("not an object", [ROW], JSON, 400),
    ("malformed JSON", b'{"instances": [[[[0.0]', JSON, 400),
    ("empty body", b"", JSON, 400),
    ("NaN", b'{"instances": [[[[NaN]]]]}', JSON, 400),
    ("Infinity", b'{"inputs": [[[[-Infinity]]]]}', JSON, 400),
    ("overflowing float32", json.dumps({"inputs": [[[[1e39]] * 8] * 8]}).encode(), JSON, 400),
    ("bad base64", {"instances": [{"b64": "not base64!"}]}, JSON, 400),
    ("base64 of the wrong size", {"instances": [{"b64": base64.b64encode(b"\0" * 12).decode()}]}, JSON, 400),
    ("nested too deep", b"[" * 100000 + b"]" * 100000, JSON, 400),
    ("npy of the wrong shape", NPY_WRONG.getvalue(), NPY, 400),
    ("pickled npy", NPY_OBJECT.getvalue(), NPY, 400),
    ("garbage npy", b"\x93NUMPY garbage", NPY, 400),
]


@pytest.mark.parametrize("what,body,headers,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_one_line_4xx(digits, what, body, headers, status):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(predict_url(digits), data=data, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    err = r.json()["error"]
    assert err and "\n" not in err and "Traceback" not in err and len(err) < 400


def test_oversize_body_is_413_through_gunicorn(digits):
    body = b'{"inputs": [' + b"0.5," * (17 * 1024 * 1024 // 4) + b"0.5]}"
    r = requests.post(predict_url(digits), data=body, headers=JSON)
    assert r.status_code == 413 and "MAX_CONTENT_LENGTH" in r.json()["error"]
    assert requests.get(f"{digits.url}/healthz").status_code == 200


def test_wrong_method_and_path(digits):
    r = requests.put(predict_url(digits), json={"instances": [ROW]})
    assert r.status_code == 405 and "POST" in r.headers.get("Allow", "") and r.json()["error"]
    r = requests.get(f"{digits.url}/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]


def test_batch_mismatch_and_missing_input(multi_app):
    _, server = multi_app
    url = predict_url(server, "two_in_two_out")
    img, meta = np.zeros((2, 8, 8, 1)).tolist(), np.zeros((3, 4)).tolist()
    for body in ({"inputs": {"image": img, "meta": meta}}, {"inputs": {"image": img}}, {"instances": [{"image": img[0]}]},
                 {"inputs": img}):
        r = requests.post(url, json=body)
        assert r.status_code == 400 and "\n" not in r.json()["error"], r.text


# ---------------------------------------------------------------- load, fuzzing, shutdown

def test_load_16_clients_x_200_requests(digits, digits_app):
    inputs, outputs = _reference(digits_app / "flask")
    x, want = inputs["pixels"], outputs["digit"]
    errors, wrong, done = [], [], []

    def client(k):
        with requests.Session() as s:
            for i in range(200):
                j = (k + i) % len(x)
                try:
                    r = s.post(predict_url(digits), json={"instances": [x[j].tolist()]}, timeout=30)
                    got = np.asarray(r.json()["predictions"][0])
                    if r.status_code != 200:
                        errors.append(r.status_code)
                    elif np.max(np.abs(got - want[j])) > ATOL + RTOL * np.max(np.abs(want[j])):
                        wrong.append(j)
                    else:
                        done.append(1)
                except Exception as e:  # any transport error counts
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong, (errors[:5], wrong[:5])
    assert len(done) == 16 * 200
    print(f"load: 3200 requests in {time.perf_counter() - t0:.1f}s")


def test_schemathesis_finds_no_server_error(digits, digits_app, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("schemathesis is not installed (pip install -c constraints.txt schemathesis)")
    proc = subprocess.run(
        [str(cli), "run", str(digits_app / "flask" / "openapi.json"), "--url", digits.url, "-n", "25", "--seed", "7",
         # not response_schema_conformance: float32-max inputs overflow the model to NaN, which the
         # app writes as TF-Serving does (a bare NaN token) and JSON Schema validators reject;
         # response shapes are checked exactly by the tests above instead.
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,unsupported_method",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_sigterm_lets_in_flight_requests_finish(digits_app):
    """A request whose body is still arriving when SIGTERM lands is completed and answered."""
    app = digits_app / "flask"
    inputs, outputs = _reference(app)
    server = GunicornServer(app, workers=1)
    try:
        server.wait_ready()
        body = json.dumps({"instances": inputs["pixels"].tolist()}).encode()
        head = (f"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        socks = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(head + body[: len(body) // 2])
            socks.append(s)
        time.sleep(0.5)  # the worker has picked the connections up and is reading their bodies
        server.proc.send_signal(15)
        time.sleep(0.5)
        assert server.proc.poll() is None
        for s in socks:
            s.sendall(body[len(body) // 2 :])
        for s in socks:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            status, _, payload = data.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 200"), data[:300]
            _close(json.loads(payload)["predictions"], outputs["digit"])
        assert server.proc.wait(timeout=30) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        server.stop()
