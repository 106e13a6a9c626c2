"""The generated server probed as an attacker would (issue 11): a model file name that is Python
code, gunicorn's own error pages, GET on :predict, chunked bodies over the limit, .npy headers
declaring huge shapes, slow clients, and the memory one large JSON request costs a worker.

One export (digits, under a hostile file name, through the CLI) and one gunicorn per module;
the slow-client and memory tests use the app's defaults except shorter read deadlines.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
import zipfile

import numpy as np
import pytest

from conftest import SAMPLES
from kexport.runtimes.flask_http import GunicornServer

requests = pytest.importorskip("requests")

HOSTILE = 'x" if getattr(__import__("os"), "system")("touch PWNED") else "y'
ATOL, RTOL = 1e-5, 1e-4
HEADER_TIMEOUT, BODY_TIMEOUT = 3, 4  # seconds, shorter than the defaults (10, 30) to keep the test short
ROW = np.zeros((8, 8, 1)).tolist()


@pytest.fixture(scope="module")
def hostile_export(tmp_path_factory):
    from kexport.cli import main

    tmp = tmp_path_factory.mktemp("hostile")
    model = tmp / f"{HOSTILE}.keras"
    shutil.copyfile(SAMPLES / "digits_cnn.keras", model)
    cwd = os.getcwd()
    os.chdir(tmp)  # os.system("touch PWNED") would land here (or in the app folder, gunicorn's cwd)
    try:
        code = main(["flask", str(model), "-o", str(tmp / "out"), "--json"])
    finally:
        os.chdir(cwd)
    return tmp, code


@pytest.fixture(scope="module")
def app_dir(hostile_export):
    return hostile_export[0] / "out" / "flask"


@pytest.fixture(scope="module")
def server(app_dir):
    srv = GunicornServer(app_dir, workers=2, env={"HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                                                  "BODY_TIMEOUT": str(BODY_TIMEOUT)})
    srv.wait_ready()
    yield srv
    srv.stop()


def _url(server, tail=":predict"):
    return f"{server.url}/v1/models/{urllib.parse.quote(HOSTILE, safe='')}{tail}"


def _reference(app_dir):
    with np.load(app_dir / "tests" / "reference_inputs.npz") as z:
        x = z["pixels"]
    with np.load(app_dir / "tests" / "reference_outputs.npz") as z:
        y = z["digit"]
    return x, y


def _one_line_json(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err and "\n" not in err and "Traceback" not in err and "<html" not in r.text
    return err


# ---------------------------------------------------------------- a file name that is code

def test_hostile_file_name_runs_no_code_and_the_export_passes(hostile_export, app_dir, server):
    tmp, code = hostile_export
    assert code == 0
    assert not list(tmp.rglob("PWNED")) and not os.path.exists("PWNED")
    report = json.loads((tmp / "out" / "report.json").read_text())
    (row,) = [r for r in report["targets"] if r["target"] == "flask"]
    assert row["parity"][0]["status"] == "passed", row  # parity asked the server at the quoted URL
    defaults = ast.parse((app_dir / "app.py").read_text(encoding="utf-8"))
    names = [ast.literal_eval(n.value) for n in ast.walk(defaults)
             if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DEFAULTS"]
    assert names[0]["MODEL_NAME"] == HOSTILE
    for line in (app_dir / "Dockerfile").read_text(encoding="utf-8").splitlines():
        assert "touch" not in line or line.startswith("#")
    readme = (app_dir / "README.md").read_text(encoding="utf-8")
    for line in readme.splitlines():
        if line.startswith("curl") and "/models/" in line:
            assert '"' not in line.split("-d")[0] and "%22" in line, line
    assert not list(tmp.rglob("PWNED")), "starting the server ran the name"


def test_both_apis_answer_under_the_hostile_name(server, app_dir):
    x, y = _reference(app_dir)
    r = requests.post(_url(server), json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["predictions"])
    assert np.max(np.abs(got - y)) <= ATOL + RTOL * np.max(np.abs(y))
    meta = requests.get(f"{server.url}/v2/models/{urllib.parse.quote(HOSTILE, safe='')}").json()
    assert meta["name"] == HOSTILE and [t["name"] for t in meta["inputs"]] == ["pixels"]


@pytest.mark.parametrize("name", ['a"""\nb\'`$(touch X)', "mödel näme ünïcode", "```fence`` \u2028 \\x00"])
def test_every_template_escapes_a_nasty_name(tmp_path, name):
    """Rendered without a model: every Python file compiles and keeps the name as a literal;
    comments stay one line; Markdown fences outlast the name's backticks."""
    from kexport.signature import ModelSignature, TensorSpec
    from kexport.targets.flask.app import AppSpec, render_app

    sig = ModelSignature(inputs=(TensorSpec(f"in {name}", (None, 2), "float32"),),
                         outputs=(TensorSpec(f"out {name}", (None, 3), "float32"),))
    spec = AppSpec(name=name, signature=sig, runtime="onnxruntime", artifact="model.onnx",
                   source_file=f"{name}.keras", model_sha256="0" * 64,
                   inputs={f"in {name}": np.zeros((2, 2), np.float32)},
                   outputs={f"out {name}": np.zeros((2, 3), np.float32)}, atol=1e-5, rtol=1e-4,
                   labels={f"out {name}": [name, "b", "c"]})
    render_app(tmp_path, spec)
    for py in tmp_path.rglob("*.py"):
        tree = ast.parse(py.read_text(encoding="utf-8"), str(py))
        if py.name == "app.py":
            (defaults,) = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DEFAULTS"]
            assert ast.literal_eval(defaults.value)["MODEL_NAME"] == name
    for f in ("Dockerfile", "requirements.txt"):
        for line in (tmp_path / f).read_text(encoding="utf-8").splitlines():
            assert not line.strip() or line.startswith("#") or "touch" not in line, (f, line)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    longest = max((len(run) for run in name.split("\0") for run in __import__("re").findall("`+", run)), default=0)
    python_fences = [ln for ln in readme.splitlines() if ln.lstrip("`") == "python"]
    assert python_fences and all(len(f) - len("python") > max(longest, 2) for f in python_fences)
    assert "\u2028" not in readme and "\x00" not in readme


def test_a_template_cannot_paste_a_raw_string(tmp_path):
    from kexport.targets.flask.escape import environment

    (tmp_path / "t.j2").write_text("NAME = {{ name }}\n")
    with pytest.raises(TypeError, match="unescaped"):
        environment(tmp_path).get_template("t.j2").render(name='x" + evil + "')
    (tmp_path / "ok.j2").write_text("NAME = {{ name | py }}  # {{ name | comment }}\n")
    text = environment(tmp_path).get_template("ok.j2").render(name='x"\ny')
    assert ast.literal_eval(text.split("=", 1)[1].split("#")[0].strip()) == 'x"\ny' and text.count("\n") == 1


# ---------------------------------------------------------------- gunicorn's own errors, methods

def _raw(server, data: bytes, timeout=5.0) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("what,request_bytes,status", [
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("too many headers", b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
    ("header too large", b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ("garbage request line", b"HELLO\r\n\r\n", 400),
    ("bad chunk size", b"POST /v1/models/" + urllib.parse.quote(HOSTILE, safe="").encode()
     + b":predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
])
def test_gunicorn_errors_are_the_apps_json(server, what, request_bytes, status):
    code, headers, body = _raw(server, request_bytes)
    assert code == status, (what, code, body[:200])
    assert headers["content-type"] == "application/json", (what, headers)
    err = json.loads(body)["error"]
    assert err and "\n" not in err and b"<html" not in body


def test_get_on_predict_is_405(server):
    for tail in (":predict", "/versions/1:predict"):
        r = requests.get(_url(server, tail))
        assert _one_line_json(r, 405) and r.headers["Allow"] == "POST"
    r = requests.get(f"{server.url}/v2/models/{urllib.parse.quote(HOSTILE, safe='')}/infer")
    _one_line_json(r, 405)


# ---------------------------------------------------------------- bodies over the limit

def test_chunked_body_over_the_limit_is_413(server):
    limit = 16 * 1024 * 1024
    # a valid document whose first 16 MiB also parse: cutting at the limit would answer 200
    doc = json.dumps({"instances": [ROW]}).encode()
    body = doc + b" " * (limit + 1024 * 1024 - len(doc))

    def chunks(data, size=1 << 20):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    r = requests.post(_url(server), data=chunks(body), headers={"Content-Type": "application/json"})
    err = _one_line_json(r, 413)
    assert "MAX_CONTENT_LENGTH" in err and "npy" in err  # says what to do instead
    r = requests.post(_url(server), data=chunks(doc + b" " * 1000), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert requests.get(f"{server.url}/healthz").status_code == 200


def _npy_header(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_npy_and_npz_declaring_huge_shapes_are_refused_before_allocating(server):
    npy = {"Content-Type": "application/x-npy"}
    huge = _npy_header((2**40, 8, 8, 1)) + b"\0" * 1024
    assert "declares" in _one_line_json(requests.post(_url(server), data=huge, headers=npy), 413)
    short = _npy_header((3, 8, 8, 1)) + np.zeros((2, 8, 8, 1), np.float32).tobytes()
    assert "holds" in _one_line_json(requests.post(_url(server), data=short, headers=npy), 400)
    overflow = _npy_header((2**62, 2**62, 8, 1)) + b"\0" * 64
    _one_line_json(requests.post(_url(server), data=overflow, headers=npy), 413)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # a small member whose header declares 4 TiB
        zf.writestr("pixels.npy", _npy_header((2**40, 8, 8, 1)) + b"\0" * 256)
    r = requests.post(_url(server), data=buf.getvalue(), headers={"Content-Type": "application/x-npz"})
    assert r.status_code in (400, 413)
    _one_line_json(r, r.status_code)
    x = np.zeros((2, 8, 8, 1), np.float32)
    ok = io.BytesIO()
    np.save(ok, x)
    assert requests.post(_url(server), data=ok.getvalue(), headers=npy).status_code == 200


def test_v2_bad_input_is_a_one_line_4xx(server):
    url = f"{server.url}/v2/models/{urllib.parse.quote(HOSTILE, safe='')}/infer"
    good = {"name": "pixels", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.5] * 64}
    cases = [
        ({"inputs": [dict(good, name="image")]}, {}, 400),
        ({"inputs": [dict(good, name={})], "outputs": [{"name": []}]}, {}, 400),  # found by schemathesis: was a 500
        ({"inputs": [dict(good, datatype="FP64")]}, {}, 400),
        ({"inputs": [dict(good, shape=[1, 8, 8, 2])]}, {}, 400),
        ({"inputs": [dict(good, data=[0.5] * 63)]}, {}, 400),
        ({"inputs": [dict(good, data=["a"] * 64)]}, {}, 400),
        ({"inputs": []}, {}, 400),
        ({"inputs": [good], "outputs": [{"name": "nope"}]}, {}, 400),
        ({"inputs": [good, good]}, {}, 400),
        ({"inputs": [dict(good, data=None, parameters={"binary_data_size": 10**12})]}, {}, 400),
        (b'{"inputs": [{"name": "pixels", "shape": [1,8,8,1], "datatype": "FP32", "data": [NaN]}]}', {}, 400),
        (b"{not json", {}, 400),
        (json.dumps({"inputs": [good]}).encode(), {"Inference-Header-Content-Length": "999999"}, 400),
        (json.dumps({"inputs": [good]}).encode(), {"Inference-Header-Content-Length": "x"}, 400),
    ]
    for body, headers, status in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        _one_line_json(requests.post(url, data=data, headers=headers), status)
    _one_line_json(requests.post(f"{server.url}/v2/models/other/infer", json={"inputs": [good]}), 404)
    _one_line_json(requests.get(f"{server.url}/v2/models/other"), 404)


# ---------------------------------------------------------------- slow clients

def _slow_clients(port, path, n_header, n_body, seconds, stop, events):
    """n_header clients dribble their headers, n_body clients their body, one byte per 0.3 s each,
    reconnecting when the server drops them; bounded by `seconds`."""
    def connect(i):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        if i < n_header:
            return [s, f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode() + b"a" * 4000, 0, b""]
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100000\r\n\r\n".encode())
        return [s, b"[" * 100000, 0, b""]

    conns = [connect(i) for i in range(n_header + n_body)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        for i, c in enumerate(conns):
            s, data, pos, got = c
            try:
                chunk = s.recv(4096)
                if chunk:
                    c[3] = got + chunk
                    continue
                events.append((i < n_header, c[3]))  # closed by the server, with what it said
                s.close()
                conns[i] = connect(i)
                continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                conns[i] = connect(i)
                continue
            try:
                s.send(data[pos:pos + 1])
                c[2] = pos + 1
            except (BlockingIOError, OSError):
                pass
        time.sleep(0.3)
    for c in conns:
        c[0].close()


def test_slow_clients_do_not_starve_normal_requests(server, app_dir):
    """48 slow-header and 48 slow-body clients; meanwhile >= 95% of normal v1 and v2 requests
    succeed within 5 s, and the slow ones are cut off with a 408 after their deadline."""
    x, y = _reference(app_dir)
    path = "/v1/models/" + urllib.parse.quote(HOSTILE, safe="") + ":predict"
    stop, events = threading.Event(), []
    slow = threading.Thread(target=_slow_clients, args=(server.port, path, 48, 48, 14, stop, events))
    slow.start()
    time.sleep(1.0)
    v1 = json.dumps({"instances": x[:1].tolist()})
    v2 = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 8, 8, 1], "datatype": "FP32",
                                 "data": x[:1].reshape(-1).tolist()}]})
    ok = total = 0
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            total += 1
            try:
                if total % 2:
                    r = requests.post(_url(server), data=v1, timeout=5, headers={"Connection": "close"})
                    got = np.asarray(r.json()["predictions"]) if r.status_code == 200 else None
                else:
                    r = requests.post(f"{server.url}/v2/models/{urllib.parse.quote(HOSTILE, safe='')}/infer",
                                      data=v2, timeout=5, headers={"Connection": "close"})
                    got = np.asarray(r.json()["outputs"][0]["data"]).reshape(1, 10) if r.status_code == 200 else None
                ok += got is not None and np.max(np.abs(got - y[:1])) <= ATOL + RTOL * np.max(np.abs(y))
            except requests.RequestException:
                pass
            time.sleep(0.05)
    finally:
        stop.set()
        slow.join()
    assert total >= 40 and ok >= 0.95 * total, (ok, total)
    said = [json.loads(body.partition(b"\r\n\r\n")[2]) for header_phase, body in events if b" 408 " in body[:20]]
    assert said and all("error" in d for d in said), events[:3]
    assert any(not header_phase and b" 408 " in body[:20] for header_phase, body in events), "no slow body was cut off"


def test_read_deadlines_per_phase(server):
    """Headers of the first request: HEADER_TIMEOUT from the connect (408); a kept-alive
    connection: closed quietly after KEEPALIVE idle, or 408 when its next request's headers
    dribble past HEADER_TIMEOUT; a body dribbling past BODY_TIMEOUT: 408 from the app."""
    def connect():
        s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        return s

    def read_all(s):
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk

    def read_response(s):
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += s.recv(65536)
        return head

    t0 = time.monotonic()
    with connect() as s:  # sends nothing at all
        assert b" 408 " in read_all(s)[:20] and HEADER_TIMEOUT - 0.5 < time.monotonic() - t0 < HEADER_TIMEOUT + 3
    with connect() as s:  # one good request, then silence: closed after KEEPALIVE (5 s), no answer
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in read_response(s)[:20]
        t0 = time.monotonic()
        assert read_all(s) == b"" and 4 < time.monotonic() - t0 < 9
    with connect() as s:  # one good request, then the next one's headers a byte per 0.5 s
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in read_response(s)[:20]
        s.settimeout(0.5)
        got, t0 = b"", time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                s.send(bytes([byte]))
                got += s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if got:
                break
        assert b" 408 " in got[:20] and b"HEADER_TIMEOUT" in got, got[:200]
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
    with connect() as s:  # a body a byte per 0.5 s: the app answers 408 after BODY_TIMEOUT
        path = "/v1/models/" + urllib.parse.quote(HOSTILE, safe="") + ":predict"
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode())
        s.settimeout(0.5)
        got, t0 = b"", time.monotonic()
        while time.monotonic() - t0 < BODY_TIMEOUT + 5 and not got:
            try:
                s.send(b"[")
                got = s.recv(65536)
            except socket.timeout:
                pass
        assert b" 408 " in got[:20] and b"BODY_TIMEOUT" in got, got[:200]


# ---------------------------------------------------------------- memory

def _worker_pids(server):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                        out.append(int(pid))
            except OSError:
                pass
    return out


def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for RSS")
def test_large_json_requests_cost_bounded_worker_memory(app_dir):
    """Three concurrent ~15 MiB JSON requests on one worker: its peak RSS grows by less than
    150 MB (Python floats cost ~400 MB per such request before the direct parser)."""
    srv = GunicornServer(app_dir, workers=1)
    try:
        srv.wait_ready()
        (pid,) = _worker_pids(srv)
        base = _status_kb(pid, "VmRSS")
        rows = np.random.default_rng(0).random((24000, 8, 8, 1)).round(4)
        body = json.dumps({"instances": rows.tolist()}).encode()
        assert 14 * 2**20 < len(body) < 16 * 2**20
        results = []

        def send():
            r = requests.post(f"{srv.url}/v1/models/{urllib.parse.quote(HOSTILE, safe='')}:predict", data=body,
                              headers={"Content-Type": "application/json"}, timeout=120)
            results.append((r.status_code, len(r.json().get("predictions", []))))

        threads = [threading.Thread(target=send) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = _status_kb(pid, "VmHWM")
        assert results == [(200, 24000)] * 3, results
        growth_mb = (peak - base) / 1024
        print(f"worker RSS {base / 1024:.0f} MB, peak {peak / 1024:.0f} MB (+{growth_mb:.0f} MB) "
              f"for 3 concurrent {len(body) / 2**20:.1f} MiB JSON requests")
        assert growth_mb < 150, growth_mb
    finally:
        srv.stop()


# ---------------------------------------------------------------- image-sized inputs (issue 10)

def test_flask_http_parity_on_a_224x224_model_stays_within_the_limit(tmp_path):
    """8 reference images of 224x224x3 are ~24 MB of JSON numbers, over the 16 MiB limit: the
    flask-http runtime splits each format's batch, and parity passes; a user sending the same
    batch as one JSON body gets a 413 that says what to send instead."""
    import keras

    import kexport

    inp = keras.Input((224, 224, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=8, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="probs")(x))
    path = tmp_path / "image224.keras"
    model.save(path)
    result = kexport.export(str(path), ["flask"], tmp_path / "out")
    (row,) = result.targets
    assert row.status == "ok", row.error
    statuses = [p.status for p in row.parity]
    assert statuses == ["passed"], [(p.status, p.reason) for p in row.parity]
    with np.load(tmp_path / "out" / "flask" / "tests" / "reference_inputs.npz") as z:
        images = z["image"]
    body = json.dumps({"instances": images.tolist()}).encode()
    assert len(body) > 16 * 2**20
    srv = GunicornServer(tmp_path / "out" / "flask", workers=1)
    try:
        srv.wait_ready()
        r = requests.post(f"{srv.url}/v1/models/image224:predict", data=body, headers={"Content-Type": "application/json"})
        err = _one_line_json(r, 413)
        assert ".npy" in err and "b64" in err and "split the batch" in err, err
    finally:
        srv.stop()
