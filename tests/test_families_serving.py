"""Issue 10 families through the generated Flask server and the Triton repository.

- free_hw (input `image` [None, None, None, 3], fully convolutional): flask-http passes at both
  reference sizes; the running server takes any size the model accepts, validates rank and the
  fixed channel dimension, and answers a size the model cannot take with a 400 (not a 500, and
  not a server that fails to start, as its warm-up at 1x1 did).
- strings (`Input(dtype="string")` + StringLookup): flask-http passes (JSON strings, v2 BYTES);
  .npy bodies are refused with a 400 that says what to send; the triton target writes TYPE_STRING
  and triton-config checks and runs it.
- the codec on rendered apps, without gunicorn: strings in rows/columns/b64, npy refusal, free
  dimensions validated by rank, the bracket-structure reader on free dimensions, v2 BYTES as
  tritonclient serializes them, and model calls bounded for padded strings.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import requests

from conftest import app_modules

import kexport
from kexport.runtimes.flask_http import GunicornServer
from test_generality import family  # noqa: F401  (session fixture: builds and saves the family models)

ATOL, RTOL = 1e-5, 1e-4  # the flask target's fp32 tolerance


def _row(result, target):
    return next(t for t in result.targets if t.target == target)


def _close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.max(np.abs(got - want)) <= ATOL + RTOL * np.max(np.abs(want))


def _error(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def free_hw(family, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("serve_free_hw")
    return kexport.export(str(family("free_hw")), ["flask"], out), out, family("free_hw")


@pytest.fixture(scope="module")
def strings(family, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("serve_strings")
    return kexport.export(str(family("strings")), ["flask", "triton"], out), out, family("strings")


@pytest.fixture(scope="module")
def keras_model():
    import keras

    loaded = {}

    def get(path):
        if path not in loaded:
            loaded[path] = keras.models.load_model(path)
        return loaded[path]

    return get


# ---------------------------------------------------------------- free spatial dimensions

def test_free_hw_flask_http_passes_at_both_reference_sizes(free_hw):
    result, _, _ = free_hw
    row = _row(result, "flask")
    assert row.status == "ok", row.error
    (check,) = row.parity
    assert (check.runtime, check.status) == ("flask-http", "passed"), check.reason
    sizes = [s["image"] for s in check.input_shapes]
    assert len(sizes) == 2 and sizes[0] != sizes[1], sizes


def test_free_hw_server_takes_any_size_and_validates_rank_and_fixed_dims(free_hw, keras_model):
    _, out, path = free_hw
    model = keras_model(path)
    srv = GunicornServer(out / "flask", workers=1)
    try:
        srv.wait_ready()
        url = f"{srv.url}/v1/models/free_hw:predict"
        rng = np.random.default_rng(1)
        for shape in ((2, 37, 53, 3), (1, 64, 48, 3)):  # sizes never seen at export, odd and non-square
            x = rng.random(shape, dtype=np.float32)
            want = model.predict(x, verbose=0)
            r = requests.post(url, json={"instances": x.tolist()})
            assert r.status_code == 200, r.text[:300]
            _close(r.json()["predictions"], want)
            buf = io.BytesIO()
            np.save(buf, x)
            r = requests.post(url, data=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
            assert r.status_code == 200, r.text[:300]
            _close(r.json()["outputs"], want)
        err = _error(requests.post(url, json={"inputs": np.zeros((1, 9, 9), np.float32).tolist()}), 400)
        assert "rank 4" in err, err
        err = _error(requests.post(url, json={"inputs": np.zeros((1, 9, 9, 4), np.float32).tolist()}), 400)
        assert "[-1, -1, -1, 3]" in err, err
        # 3x3 is too small for two valid 3x3 convolutions: the request's fault, said in one line
        err = _error(requests.post(url, json={"inputs": np.zeros((1, 3, 3, 3), np.float32).tolist()}), 400)
        assert "cannot run on input shapes" in err and "[3, 3, 3]" in err, err
        assert requests.get(f"{srv.url}/readyz").status_code == 200
    finally:
        srv.stop()


# ---------------------------------------------------------------- string inputs

def test_strings_pass_flask_http(strings):
    result, _, _ = strings
    flask = _row(result, "flask")
    assert flask.status == "ok", flask.error
    assert [(p.runtime, p.status) for p in flask.parity] == [("flask-http", "passed")], \
        [(p.runtime, p.reason) for p in flask.parity]


def test_strings_triton_repository_has_type_string_and_triton_config_passes(strings):
    result, out, _ = strings
    triton = _row(result, "triton")
    assert triton.status == "ok", triton.error
    by_runtime = {p.runtime: p for p in triton.parity}
    assert by_runtime["triton-config"].status == "passed", by_runtime["triton-config"].reason
    assert by_runtime["tritonserver"].status in ("passed", "skipped"), by_runtime["tritonserver"].reason
    config = (out / "triton" / "strings" / "config.pbtxt").read_text()
    assert "data_type: TYPE_STRING" in config
    warm = (out / "triton" / "strings" / "warmup" / "input_0.bin").read_bytes()
    (length,) = struct.unpack_from("<I", warm)
    assert len(warm) == 4 + length and warm[4:].decode() in ("paris", "rome", "oslo", "lima")


def test_strings_server_json_b64_v2_bytes_and_npy_refusal(strings, keras_model):
    _, out, path = strings
    cities = np.array([["rome"], ["nowhere"], ["lima"], ["Ünïcode"]], dtype=object)
    import tensorflow as tf

    want = np.asarray(keras_model(path)(tf.constant(cities.astype(str))))
    srv = GunicornServer(out / "flask", workers=1)
    try:
        srv.wait_ready()
        url = f"{srv.url}/v1/models/strings:predict"
        meta = requests.get(f"{srv.url}/v1/models/strings/metadata").json()
        sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert sig["inputs"]["city"]["dtype"] == "DT_STRING"
        r = requests.post(url, json={"instances": cities.tolist()})
        assert r.status_code == 200, r.text[:300]
        _close(r.json()["predictions"], want)
        b64 = [[{"b64": base64.b64encode(c.encode()).decode()}] for c in cities[:, 0]]
        r = requests.post(url, json={"inputs": b64})
        assert r.status_code == 200, r.text[:300]
        _close(r.json()["outputs"], want)
        v2 = requests.get(f"{srv.url}/v2/models/strings").json()
        assert v2["inputs"] == [{"name": "city", "datatype": "BYTES", "shape": [-1, 1]}]
        buf = io.BytesIO()
        np.save(buf, cities.astype(str))
        err = _error(requests.post(url, data=buf.getvalue(), headers={"Content-Type": "application/x-npy"}), 400)
        assert "city" in err and "numeric inputs only" in err and "JSON" in err, err
        err = _error(requests.post(url, json={"instances": [[1.5], [2]]}), 400)
        assert "values must be strings" in err, err
        httpclient = pytest.importorskip("tritonclient.http")
        client = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        for binary in (True, False):
            x = httpclient.InferInput("city", list(cities.shape), "BYTES")
            x.set_data_from_numpy(cities, binary_data=binary)
            res = client.infer("strings", [x], outputs=[httpclient.InferRequestedOutput("probs", binary_data=binary)])
            _close(res.as_numpy("probs"), want)
    finally:
        srv.stop()


# ---------------------------------------------------------------- the codec, without gunicorn

@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """codec.py and v2.py of a rendered app with a string input and a free-size image input."""
    from kexport.signature import ModelSignature, TensorSpec
    from kexport.targets.flask.app import AppSpec, render_app

    sig = ModelSignature(inputs=(TensorSpec("words", (None, 2), "string"),
                                 TensorSpec("image", (None, None, None, 3), "float32")),
                         outputs=(TensorSpec("y", (None, 3), "float32"),))
    dest = tmp_path_factory.mktemp("families_codec") / "app"
    spec = AppSpec(name="units", signature=sig, runtime="onnxruntime", artifact="model.onnx", source_file="u.keras",
                   model_sha256="0" * 64, inputs={"words": np.array([["a", "b"]]), "image": np.zeros((1, 8, 8, 3), np.float32)},
                   outputs={"y": np.zeros((1, 3), np.float32)}, atol=1e-5, rtol=1e-4)
    render_app(dest, spec)
    assert json.loads((dest / "model" / "model.json").read_text())["warmup_shapes"] == {"words": [2], "image": [8, 8, 3]}
    with app_modules(dest, sig) as mods:
        yield mods


def test_codec_reads_strings_in_rows_columns_and_b64(protocol):
    codec, _, specs = protocol
    img = np.zeros((1, 5, 7, 3)).tolist()
    got, fmt = codec.decode_json_request({"instances": [{"words": ["héllo", ""], "image": img[0]}]}, specs)
    assert fmt == "row" and got["words"].dtype == object and got["words"].tolist() == [["héllo", ""]]
    b64 = {"b64": base64.b64encode("ünï".encode()).decode()}
    got, fmt = codec.decode_json_request({"inputs": {"words": [["x", b64], ["y", "z"]], "image": img * 2}}, specs)
    assert fmt == "columnar" and got["words"].tolist() == [["x", "ünï"], ["y", "z"]]
    assert got["image"].shape == (2, 5, 7, 3)
    for words, needle in (([[1, 2]], "values must be strings"), ([["a"], ["b", "c"]], "ragged"),
                          ([["a", "b", "c"]], "expected shape"), (["a", "b"], "found a string at depth 1"),
                          ([["a", {"b64": base64.b64encode(b"\xff").decode()}]], "UTF-8")):
        with pytest.raises(codec.BadRequest, match=needle):
            codec.decode_json_request({"inputs": {"words": words, "image": img * len(words)}}, specs)


def test_npy_and_npz_bodies_with_a_string_input_are_400(protocol):
    codec, _, specs = protocol
    buf = io.BytesIO()
    np.savez(buf, words=np.array([["a", "b"]]), image=np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(codec.BadRequest, match=r"string input\(s\) \['words'\]: .npy/.npz bodies .* numeric inputs only") as e:
        codec.decode_npy_request(buf.getvalue(), specs, 1 << 20)
    assert e.value.status == 400


def test_free_dimensions_are_validated_by_rank_and_fixed_dims(protocol):
    codec, _, specs = protocol
    image = specs[1]
    for shape in ((1, 5, 9, 3), (3, 31, 17, 3)):
        assert codec.check_array(np.zeros(shape, np.float32), image, "x").shape == shape
    for shape, needle in (((1, 5, 9), "expected rank 4"), ((1, 5, 9, 4), "expected shape"),
                          ((1, 0, 9, 3), "expected shape")):
        with pytest.raises(codec.BadRequest, match=needle):
            codec.check_array(np.zeros(shape, np.float32), image, "x")


def test_free_dimensions_take_the_direct_json_reader(protocol):
    """Image-sized JSON for an input with free H x W is read by the bracket-checked reader
    (~2x the body in memory), not as Python floats; a ragged body still falls back and fails."""
    codec, _, specs = protocol
    x = np.random.default_rng(0).random((2, 20, 30, 3)).astype(np.float32)
    for key in ("instances", "inputs"):
        body = json.dumps({key: x.tolist()}).encode()
        found = codec.fast_json_request(body, [specs[1]])
        assert found is not None, key
        assert np.array_equal(found[0]["image"], x) and found[1] == ("row" if key == "instances" else "columnar")
    ragged = x.tolist()
    ragged[1] = ragged[1][:-1]  # second example one row shorter
    body = json.dumps({"instances": ragged}).encode()
    assert codec.fast_json_request(body, [specs[1]]) is None
    with pytest.raises(codec.BadRequest, match="ragged"):
        codec.decode_json_body(body, [specs[1]])
    wrong_channels = json.dumps({"inputs": np.zeros((1, 4, 4, 2)).tolist()}).encode() + b" " * 64
    assert codec.fast_json_request(wrong_channels, [specs[1]]) is None


def test_v2_bytes_as_tritonclient_sends_them(protocol):
    httpclient = pytest.importorskip("tritonclient.http")
    codec, v2, specs = protocol
    words = np.array([["ä", "bb"], ["", "ccc"]], dtype=object)
    for binary in (True, False):
        inputs = []
        for name, arr, datatype in (("words", words, "BYTES"), ("image", np.ones((2, 3, 4, 3), np.float32), "FP32")):
            t = httpclient.InferInput(name, list(arr.shape), datatype)
            t.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(t)
        body, header_length = httpclient._utils._get_inference_request(
            inputs=inputs, request_id="", outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
            priority=0, timeout=None, custom_parameters=None)
        body = body if isinstance(body, bytes) else body.encode()
        doc, raw = v2.split_body(body, None if header_length is None else str(header_length))
        got = v2.decode_inputs(doc, raw, specs)
        assert got["words"].tolist() == words.tolist() and got["image"].shape == (2, 3, 4, 3)
    head = {"inputs": [{"name": "words", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}},
                       {"name": "image", "shape": [1, 1, 1, 3], "datatype": "FP32", "data": [0, 0, 0]}]}
    short = struct.pack("<I", 1) + b"a" + struct.pack("<I", 9)  # the second string's length runs past the data
    with pytest.raises(codec.BadRequest, match="exactly 2 elements"):
        v2.decode_inputs(head, memoryview(short), specs)


def test_model_calls_stay_bounded_for_padded_strings(protocol):
    """A runtime holds strings as a fixed-width array (4 bytes x the longest): one long string
    gets a model call of its own instead of widening every row; one example over the limit is 413."""
    codec, _, _ = protocol
    words = np.empty((1001, 2), dtype=object)
    words[:] = "a"
    words[500, 1] = "x" * 100_000
    arrays = {"words": words, "image": np.zeros((1001, 2, 2, 3), np.float32)}
    slices = codec.run_slices(arrays, 1 << 18, 1 << 24)
    assert slices[0][0] == 0 and slices[-1][1] == 1001
    assert all(a < b for a, b in slices) and all(s[1] == t[0] for s, t in zip(slices, slices[1:]))
    assert (500, 501) in slices and len(slices) <= 4, slices
    with pytest.raises(codec.BadRequest, match="one example's strings") as e:
        codec.run_slices(arrays, 1 << 18, 1 << 19)
    assert e.value.status == 413
    even = codec.run_slices({"image": np.zeros((100, 64, 64, 3), np.float32)}, 1 << 18, 1 << 24)
    assert len(even) == 20  # 48 KiB per example at this request's size (not at 1x1): 5 per 256 KiB call
