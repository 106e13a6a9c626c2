"""Fast checks of the generated app's pieces without gunicorn: request validation (int tokens,
b64), the micro-batcher, strict template rendering, CLI usage errors, and the LiteRT variant."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
from kexport.signature import ModelSignature, TensorSpec

SIG = ModelSignature(
    inputs=(TensorSpec("tokens", (None, 4), "int32", int_high=50), TensorSpec("x", (None, 2), "float32")),
    outputs=(TensorSpec("label", (None, 3), "float32"),),
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from kexport.targets.flask.app import AppSpec, render_app

    dest = tmp_path_factory.mktemp("flask_units") / "app"
    rng = np.random.default_rng(0)
    spec = AppSpec(name="toy", signature=SIG, runtime="onnxruntime", artifact="model.onnx", source_file="toy.keras",
                   model_sha256="0" * 64, inputs={"tokens": rng.integers(0, 50, (2, 4)).astype("int32"),
                                                  "x": rng.random((2, 2), dtype=np.float32)},
                   outputs={"label": rng.random((2, 3), dtype=np.float32)}, atol=1e-5, rtol=1e-4,
                   labels={"label": ["a", "b", "c"]})
    render_app(dest, spec)
    return dest, spec


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclass-free modules, but keep imports consistent
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def codec(rendered):
    return _module(rendered[0] / "codec.py", "kexport_generated_codec")


def _specs(codec):
    return [codec.Spec(t.to_json()) for t in SIG.inputs]


def test_int_inputs_are_range_checked(codec):
    specs = _specs(codec)
    ok, fmt = codec.decode_json_request({"inputs": {"tokens": [[1, 2, 3, 49]], "x": [[0.5, 1]]}}, specs)
    assert fmt == "columnar" and ok["tokens"].dtype == np.int32 and ok["x"].dtype == np.float32
    ok, _ = codec.decode_json_request({"instances": [{"tokens": [1.0, 2.0, 3.0, 4.0], "x": [0, 1]}]}, specs)
    assert ok["tokens"].tolist() == [[1, 2, 3, 4]]
    for tokens, needle in (([[1, 2, 3, 50]], "[0, 50)"), ([[-1, 2, 3, 4]], "[0, 50)"), ([[1.5, 2, 3, 4]], "integers"),
                           ([[2**40, 2, 3, 4]], "range"), ([[1, 2, 3]], "shape")):
        with pytest.raises(codec.BadRequest, match=None) as e:
            codec.decode_json_request({"inputs": {"tokens": tokens, "x": [[0, 1]]}}, specs)
        assert needle in str(e.value) and e.value.status == 400


def test_b64_rows_and_columns(codec):
    import base64

    specs = _specs(codec)
    toks = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], "<i4")
    x = np.array([[0.25, 0.5], [1, 2]], "<f4")
    b = lambda a: {"b64": base64.b64encode(a.tobytes()).decode()}  # noqa: E731
    cols, _ = codec.decode_json_request({"inputs": {"tokens": b(toks), "x": b(x)}}, specs)
    rows, _ = codec.decode_json_request({"instances": [{"tokens": b(toks[i]), "x": x[i].tolist()} for i in range(2)]}, specs)
    for got in (cols, rows):
        assert np.array_equal(got["tokens"], toks) and np.array_equal(got["x"], x)
    with pytest.raises(codec.BadRequest, match="\\[0, 50\\)"):
        codec.decode_json_request({"inputs": {"tokens": b(toks * 10), "x": b(x)}}, specs)
    with pytest.raises(codec.BadRequest, match="bytes"):
        codec.decode_json_request({"instances": [{"tokens": b(toks), "x": [0, 1]}]}, specs)


def test_labels_and_multi_output_encoding(codec):
    out = {"label": np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]], np.float32)}
    doc = codec.encode_json(out, ["label"], "row", {"label": ["a", "b", "c"]})
    assert doc == {"predictions": out["label"].tolist(), "labels": ["b", "a"]}
    two = {"p": np.zeros((2, 3), np.float32), "s": np.ones((2, 1), np.float32)}
    assert codec.encode_json(two, ["p", "s"], "row")["predictions"][1] == {"p": [0.0, 0.0, 0.0], "s": [1.0]}
    assert codec.encode_json(two, ["p", "s"], "columnar")["outputs"]["s"] == [[1.0], [1.0]]


def test_micro_batcher_merges_concurrent_requests_and_splits_answers(rendered):
    batcher = _module(rendered[0] / "batcher.py", "kexport_generated_batcher")
    calls = []

    def predict(inputs):
        calls.append(len(inputs["x"]))
        time.sleep(0.01)  # a model call takes time: requests arriving meanwhile queue up
        return {"y": inputs["x"] * 2}

    mb = batcher.MicroBatcher(predict, window_ms=20, max_rows=32)
    results, errors = {}, []
    start = threading.Barrier(16)

    def client(k):
        start.wait()
        with mb.slot():
            x = np.full((1, 3), k, np.float32)
            results[k] = mb.run({"x": x}, 1)["y"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(16):
        assert np.array_equal(results[k], np.full((1, 3), 2 * k, np.float32))
    assert sum(calls) == 16 and len(calls) < 16, calls

    calls.clear()
    t0 = time.perf_counter()
    with mb.slot():
        mb.run({"x": np.ones((1, 3), np.float32)}, 1)
    assert time.perf_counter() - t0 < 0.015 + 0.01, "a lone request waited for the batching window"


def test_templates_render_strictly(rendered, monkeypatch):
    from kexport.targets.flask import app as flask_app

    dest, spec = rendered
    original = flask_app._template_values
    monkeypatch.setattr(flask_app, "_template_values", lambda s: {k: v for k, v in original(s).items() if k != "workers"})
    with pytest.raises(RuntimeError, match="gunicorn.conf.py.j2|README.md.j2"):
        flask_app.render_app(dest.parent / "broken", spec)
    api = json.loads((dest / "openapi.json").read_text())
    assert {"/v1/models/{model_name}:predict", "/v1/models/{model_name}/versions/{version}:predict"} <= set(api["paths"])


def test_cli_usage_errors(tmp_path, capsys):
    from kexport.cli import main

    model = str(SAMPLE_MODELS["digits_cnn"])
    assert main(["flask", model, "-o", str(tmp_path / "a"), "--name", "a/b"]) == 2
    assert "--name" in capsys.readouterr().err
    assert main(["flask", model, "-o", str(tmp_path / "b"), "--class-labels", str(tmp_path / "missing.txt")]) == 2
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    code = main(["flask", model, "-o", str(tmp_path / "c"), "--class-labels", str(labels), "--no-verify"])
    err = capsys.readouterr()
    assert code != 0 and "3 labels fit no classifier output" in err.out + err.err
    assert not (tmp_path / "c" / "flask").exists()


def test_litert_app_serves_correctly(tmp_path):
    import kexport
    from kexport.options import ExportOptions
    from kexport.targets.flask import FlaskOptions

    opts = ExportOptions(target_options={"flask": FlaskOptions(runtime="litert", batch_window_ms=0)})
    result = kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["flask"], tmp_path, options=opts)
    (row,) = result.targets
    assert row.status == "ok" and row.parity[0].status == "passed", (row.error, row.parity)
    app = tmp_path / "flask"
    reqs = (app / "requirements.txt").read_text()
    assert "ai-edge-litert==" in reqs and "onnxruntime" not in reqs and "tensorflow" not in reqs
    assert (app / "model" / "model.tflite").is_file() and (app / "kexport_runtime" / "litert.py").is_file()
