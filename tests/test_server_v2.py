"""The Open Inference Protocol (KServe v2 / Triton HTTP) of the generated server, asked with
the official `tritonclient[http]` client: health, metadata with the Keras names, round trips
equal to Keras in JSON and with the binary data extension, requested outputs, INT32 tokens,
v2 error bodies, and a bounded load test. Datatypes the sample models lack (FP16, INT64, BOOL)
are checked on the protocol code itself, with the client parsing the server's answer.

One export and one gunicorn per model per module (two_in_two_out: 2 inputs, 2 outputs;
token_lstm: INT32 tokens).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from conftest import SAMPLES, app_modules
from kexport.runtimes.flask_http import GunicornServer

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'kexport[triton]' (tritonclient[http])")
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4  # FP32, as the flask target verifies


def _export(tmp_path_factory, model: str, name: str):
    import kexport

    out = tmp_path_factory.mktemp(f"v2_{name}")
    result = kexport.export(str(SAMPLES / f"{model}.keras"), ["flask"], out, verify=False)
    assert result.targets[0].status == "ok", result.targets[0].error
    app = out / "flask"
    with np.load(app / "tests" / "reference_inputs.npz") as z:
        x = {k: z[k] for k in z.files}
    with np.load(app / "tests" / "reference_outputs.npz") as z:
        y = {k: z[k] for k in z.files}
    return app, x, y


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    app, x, y = _export(tmp_path_factory, "two_in_two_out", "two_in_two_out")
    server = GunicornServer(app, workers=2)
    server.wait_ready()
    yield server, x, y
    server.stop()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    app, x, y = _export(tmp_path_factory, "token_lstm", "token_lstm")
    server = GunicornServer(app, workers=1)
    server.wait_ready()
    yield server, x, y
    server.stop()


def _client(server, **kw):
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", **kw)


def _close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.max(np.abs(got.astype(np.float64) - want)) <= ATOL + RTOL * np.max(np.abs(want))


def _inputs(x: dict, binary: bool, types: dict):
    out = []
    for name, arr in x.items():
        t = httpclient.InferInput(name, list(arr.shape), types[name])
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


def test_health_and_metadata_list_the_keras_names(multi):
    server, _, _ = multi
    c = _client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("two_in_two_out") and c.is_model_ready("two_in_two_out", "1")
    assert not c.is_model_ready("two_in_two_out", "2") and not c.is_model_ready("other")
    meta = c.get_model_metadata("two_in_two_out")
    assert meta["name"] == "two_in_two_out" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]},
                              {"name": "meta", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "class_probs", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    assert c.get_model_metadata("two_in_two_out", "1") == meta
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_round_trips_equal_keras(multi, binary):
    server, x, y = multi
    c = _client(server)
    inputs = _inputs(x, binary, {"image": "FP32", "meta": "FP32"})
    result = c.infer("two_in_two_out", inputs)  # every output, binary (the client's default)
    for name in ("class_probs", "score"):
        _close(result.as_numpy(name), y[name])
    # requested outputs: only the one asked, in the encoding asked
    result = c.infer("two_in_two_out", inputs, outputs=[httpclient.InferRequestedOutput("score", binary_data=binary)],
                     model_version="1", request_id="req-7")
    _close(result.as_numpy("score"), y["score"])
    assert result.as_numpy("class_probs") is None and result.get_response()["id"] == "req-7"
    out = result.get_output("score")
    assert ("data" in out) != binary and out["datatype"] == "FP32" and out["shape"] == list(y["score"].shape)


def test_int32_tokens_round_trip_and_range_check(tokens):
    server, x, y = tokens
    c = _client(server)
    meta = c.get_model_metadata("token_lstm")
    assert meta["inputs"] == [{"name": "tokens", "datatype": "INT32", "shape": [-1, 20]}]
    for binary in (True, False):
        result = c.infer("token_lstm", _inputs(x, binary, {"tokens": "INT32"}))
        _close(result.as_numpy("label"), y["label"])
    bad = x["tokens"].copy()
    bad[0, 0] = 10**6  # beyond the Embedding's input_dim: the runtime would crash on it
    with pytest.raises(InferenceServerException) as e:
        c.infer("token_lstm", _inputs({"tokens": bad}, True, {"tokens": "INT32"}))
    assert e.value.status() == "400" and "must lie in" in e.value.message()


def test_errors_are_v2_error_bodies(multi):
    server, x, _ = multi
    c = _client(server)
    cases = [
        ("other", _inputs(x, True, {"image": "FP32", "meta": "FP32"}), "404", "unknown model"),
        ("two_in_two_out", _inputs({"image": x["image"]}, True, {"image": "FP32"}), "400", "missing input"),
        ("two_in_two_out", _inputs({k: v.astype(np.float64) for k, v in x.items()}, True,
                                   {"image": "FP64", "meta": "FP64"}), "400", "does not match"),
        ("two_in_two_out", _inputs({"image": x["image"][:, :4], "meta": x["meta"]}, False,
                                   {"image": "FP32", "meta": "FP32"}), "400", "shape"),
    ]
    for model, inputs, status, needle in cases:
        with pytest.raises(InferenceServerException) as e:
            c.infer(model, inputs)
        assert e.value.status() == status and needle in e.value.message(), (status, e.value.message())
        assert "\n" not in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        c.infer("two_in_two_out", _inputs(x, True, {"image": "FP32", "meta": "FP32"}),
                outputs=[httpclient.InferRequestedOutput("nope")])
    assert e.value.status() == "400" and "unexpected inference output" in e.value.message()


def test_load_8_clients_with_the_triton_client(multi):
    """8 clients x 40 binary-data inferences, bounded to 60 s: no error, every answer equal to Keras."""
    server, x, y = multi
    errors, done = [], []
    deadline = time.monotonic() + 60

    def worker(i):
        c = _client(server)
        rows = slice(i % len(x["image"]), i % len(x["image"]) + 1)
        inputs = _inputs({k: v[rows] for k, v in x.items()}, True, {"image": "FP32", "meta": "FP32"})
        for _ in range(40):
            if time.monotonic() > deadline:
                return
            try:
                result = c.infer("two_in_two_out", inputs)
                _close(result.as_numpy("class_probs"), y["class_probs"][rows])
                done.append(1)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(done) == 320


# ---------------------------------------------------------------- datatypes the samples lack

@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """v2.py and codec.py of a rendered app whose inputs are FP16, INT64 and BOOL."""
    from kexport.signature import ModelSignature, TensorSpec
    from kexport.targets.flask.app import AppSpec, render_app

    sig = ModelSignature(inputs=(TensorSpec("half", (None, 3), "float16"), TensorSpec("ids", (None, 2), "int64"),
                                 TensorSpec("mask", (None, 2), "bool")),
                         outputs=(TensorSpec("y", (None, 3), "float16"),))
    dest = tmp_path_factory.mktemp("v2_types") / "app"
    spec = AppSpec(name="types", signature=sig, runtime="onnxruntime", artifact="model.onnx", source_file="t.keras",
                   model_sha256="0" * 64, inputs={"half": np.zeros((1, 3), np.float16), "ids": np.zeros((1, 2), np.int64),
                                                  "mask": np.zeros((1, 2), bool)},
                   outputs={"y": np.zeros((1, 3), np.float16)}, atol=1e-3, rtol=1e-3)
    render_app(dest, spec)
    with app_modules(dest, sig) as mods:
        yield mods


def test_fp16_int64_bool_inputs_and_outputs_through_the_triton_client(protocol):
    from flask import Flask

    codec, v2, specs = protocol
    x = {"half": np.array([[0.5, -1.25, 65504]], np.float16), "ids": np.array([[2**40, -3]], np.int64),
         "mask": np.array([[True, False]])}
    types = {"half": "FP16", "ids": "INT64", "mask": "BOOL"}
    for binary in (True, False):
        inputs = _inputs(x, binary, types)
        body, header_length = httpclient._utils._get_inference_request(
            inputs=inputs, request_id="", outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
            priority=0, timeout=None, custom_parameters=None)
        body = body if isinstance(body, bytes) else body.encode()
        doc, raw = v2.split_body(body, None if header_length is None else str(header_length))
        got = v2.decode_inputs(doc, raw, specs)
        for k in x:
            assert got[k].dtype == x[k].dtype and np.array_equal(got[k], x[k]), k
        with Flask("t").test_request_context():
            resp = v2.encode_response(doc, {"y": got["half"], "m": got["mask"], "i": got["ids"]},
                                      {"y": binary, "m": binary, "i": False}, "types", "1")
        length = resp.headers.get("Inference-Header-Content-Length")
        result = httpclient.InferResult.from_response_body(resp.get_data(), header_length=None if length is None else int(length))
        assert np.array_equal(result.as_numpy("y"), x["half"]) and result.as_numpy("y").dtype == np.float16
        assert np.array_equal(result.as_numpy("m"), x["mask"]) and np.array_equal(result.as_numpy("i"), x["ids"])
    bad = {"inputs": [{"name": "half", "shape": [1, 3], "datatype": "FP16", "data": [1e6, 0, 0]},
                      {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                      {"name": "mask", "shape": [1, 2], "datatype": "BOOL", "data": [1, 0]}]}
    with pytest.raises(codec.BadRequest, match="non-finite|booleans"):
        v2.decode_inputs(bad, memoryview(b""), specs)
    bad["inputs"][0]["data"] = [1, 0, 0]
    with pytest.raises(codec.BadRequest, match="booleans"):
        v2.decode_inputs(bad, memoryview(b""), specs)
    assert json.loads(codec.dumps({"ok": 1})) == {"ok": 1}


def test_a_name_with_spaces_and_non_ascii_is_served_on_both_apis(multi):
    """MODEL_NAME may be any text (the default is the model's file name): clients quote it."""
    import urllib.parse

    import requests

    base, x, y = multi
    name = 'mödel "näme" ü 1'  # a file stem: no '/' possible
    server = GunicornServer(base.app_dir, workers=1, env={"MODEL_NAME": name})
    try:
        server.wait_ready()
        c = _client(server)
        assert c.is_model_ready(name) and c.get_model_metadata(name)["name"] == name
        result = c.infer(name, _inputs(x, True, {"image": "FP32", "meta": "FP32"}))
        _close(result.as_numpy("score"), y["score"])
        r = requests.post(f"{server.url}/v1/models/{urllib.parse.quote(name, safe='')}:predict",
                          json={"inputs": {k: v.tolist() for k, v in x.items()}})
        assert r.status_code == 200, r.text
        _close(np.asarray(r.json()["outputs"]["class_probs"], np.float32), y["class_probs"])
    finally:
        server.stop()
