"""TF.js beyond the parity matrix (which already runs every sample model in graph format on
tfjs-node-cpu, tfjs-node-wasm and tfjs-chromium): the layers format on every sample model,
quantized variants on real digits, the demo page in a real browser, MobileNetV2 on wasm,
the repairs of the converter's output, bad input and missing runtimes.

Each export below runs once per session (module fixtures); the browser is launched once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import kexport
from conftest import SAMPLE_MODELS
from kexport.options import ExportOptions
from kexport.targets.tfjs import TfjsOptions

RUNTIMES = ("tfjs-node-cpu", "tfjs-node-wasm", "tfjs-chromium")


def _export(model, out, **kw):
    inputs = kw.pop("inputs", None)
    quantize = kw.get("quantize")
    return kexport.export(str(model), ["tfjs"], out, options=ExportOptions(
        inputs=inputs, quantize=quantize, target_options={"tfjs": TfjsOptions(**kw)}))


def _assert_passed(row, runtimes=RUNTIMES) -> list[str]:
    """Every runtime row passed or was skipped; returns the skip reasons. A skipped runtime does
    not skip the test: the other rows (and what the caller asserts next) are still checked."""
    assert row.status in ("ok", "unverified"), (row.variant, row.error)
    seen = {p.runtime: p for p in row.parity}
    skipped = []
    for name in runtimes:
        p = seen[name]
        if p.status == "skipped":
            skipped.append(f"{name}: {p.reason}")
            continue
        assert p.status == "passed", (row.variant, name, p.reason)
    if len(skipped) == len(runtimes):
        pytest.skip("; ".join(skipped))
    return skipped


# ---- layers format, every sample model ---------------------------------------------------------

@pytest.fixture(scope="module")
def layers_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfjs_layers")
    return {name: _export(path, root / name, format="layers") for name, path in SAMPLE_MODELS.items()}


@pytest.mark.parametrize("model", list(SAMPLE_MODELS))
def test_layers_format_loads_and_matches_everywhere(layers_exports, model):
    result = layers_exports[model]
    (row,) = result.targets
    assert row.extra["format"] == "layers"
    topo = json.loads((Path(result.out_dir) / row.artifact / "model.json").read_text())
    assert topo["format"] == "layers-model"
    # the Keras 2 form TF.js reads: no Keras 3 keys left anywhere in the topology
    text = json.dumps(topo["modelTopology"])
    assert '"batch_shape"' not in text and "DTypePolicy" not in text and '"keras_history"' not in text
    _assert_passed(row)


def test_layers_preflight_lists_every_problem_at_once():
    import keras

    from kexport.targets.tfjs.layers import layers_problems

    inp = keras.Input((4,), name="x")
    a = keras.layers.Lambda(lambda t: t * 2, name="double")(inp)
    b = keras.layers.Dense(3, activation="hard_sigmoid", name="hs")(a)
    c = keras.layers.Normalization(axis=None, invert=True, name="denorm", mean=0.0, variance=1.0)(b)
    d = keras.layers.UnitNormalization(name="unit")(c)
    problems = layers_problems(keras.Model(inp, d))
    text = " | ".join(problems)
    assert "Lambda layer 'double'" in text
    assert "activation 'hard_sigmoid'" in text
    assert "'denorm'" in text
    assert "'unit' (UnitNormalization)" in text
    assert len(problems) == 4


def test_tfjs_layer_list_matches_the_installed_package():
    """TFJS_LAYERS is a copy of what TF.js registers; it must not claim a class TF.js lacks."""
    import subprocess

    from kexport.targets.tfjs.layers import TFJS_LAYERS
    from kexport.runtimes.tfjs_node import RUNNER_DIR, node_missing

    if node_missing():
        pytest.skip(node_missing())
    js = ("const tf=require('@tensorflow/tfjs');"
          "process.stdout.write(JSON.stringify(Object.keys(tf.serialization.SerializationMap.getMap().classNameMap)))")
    out = subprocess.run(["node", "-e", js], cwd=RUNNER_DIR, capture_output=True, text=True, timeout=60)
    registered = set(json.loads(out.stdout))
    assert TFJS_LAYERS <= registered, sorted(TFJS_LAYERS - registered)


# ---- quantized variants on real digits, and the demo page --------------------------------------

@pytest.fixture(scope="module")
def digits_real(tmp_path_factory):
    """Held-out scikit-learn digits (real images, not noise) as reference inputs."""
    import sys

    sys.path.insert(0, str(SAMPLE_MODELS["digits_cnn"].parent))
    from build import digits_data

    _, xte, _, _ = digits_data()
    path = tmp_path_factory.mktemp("digits_data") / "digits_test.npz"
    np.savez(path, pixels=xte[:200].astype("float32"))
    return path


@pytest.fixture(scope="module")
def digits_quantized(tmp_path_factory, digits_real):
    out = tmp_path_factory.mktemp("tfjs_digits")
    result = _export(SAMPLE_MODELS["digits_cnn"], out, inputs=str(digits_real),
                     quantize="float16,uint8,uint16", demo=True, shard_size=64 * 1024)
    return result, out


def test_quantized_variants_agree_with_keras_and_are_smaller(digits_quantized):
    result, out = digits_quantized
    rows = {r.variant: r for r in result.targets}
    assert list(rows) == ["fp32", "float16", "uint8", "uint16"]
    for variant, row in rows.items():
        _assert_passed(row)
        for p in row.parity:
            if p.status == "passed":
                assert p.top1_agreement >= 0.99, (variant, p.runtime, p.top1_agreement)
    fp32 = rows["fp32"].size_bytes
    # weights dominate: 2 bytes instead of 4, 1 instead of 4 (plus the same model.json)
    assert rows["float16"].extra["size_ratio"] == pytest.approx(rows["float16"].size_bytes / fp32, abs=1e-3)
    assert rows["float16"].extra["size_ratio"] < 0.6
    assert rows["uint16"].extra["size_ratio"] < 0.6
    assert rows["uint8"].extra["size_ratio"] < 0.35
    # quantized rows use the looser documented tolerance, fp32 the strict one
    assert rows["fp32"].parity[0].atol == 1e-5 and rows["uint8"].parity[0].rtol == 1e-1
    report = json.loads((out / "report.json").read_text())
    assert {t["variant"]: t["size_ratio"] for t in report["targets"]}["uint8"] < 0.35


def test_shard_size_splits_weights(digits_quantized):
    result, out = digits_quantized
    row = result.targets[0]
    shards = sorted((out / row.artifact).glob("*.bin"))
    assert len(shards) == row.extra["weight_shards"] >= 3  # ~155 kB of fp32 weights, 64 kB shards
    assert max(f.stat().st_size for f in shards) <= 64 * 1024


def test_node_start_and_latency_are_in_the_report_with_benchmark(digits_quantized, tmp_path):
    _, out = digits_quantized
    assert "runtime_timing" not in json.loads((out / "report.json").read_text())["targets"][0]  # only when asked
    kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["tfjs"], tmp_path, options=ExportOptions(benchmark=True))
    report = json.loads((tmp_path / "report.json").read_text())
    timing = report["targets"][0]["runtime_timing"]
    for backend in ("tfjs-node-cpu", "tfjs-node-wasm"):
        t = timing[backend]
        if "skipped" in t:
            pytest.skip(t["skipped"])
        assert 0 < t["node_start_s"] < 60 and t["predict_ms_median"] > 0, t
    assert timing["tfjs-chromium"].get("backend") or timing["tfjs-chromium"].get("skipped")


def _draw_digit(page, box, strokes):
    for stroke in strokes:
        x0, y0 = stroke[0]
        page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=6)
        page.mouse.up()


def test_demo_page_draws_a_digit_and_predicts_like_keras(digits_quantized, digits_ctx, tmp_path):
    from kexport.targets.tfjs.demo import make_server
    from kexport.runtimes.tfjs_chromium import TfjsChromium, browser

    reason = TfjsChromium().available()
    if reason:
        pytest.skip(reason)
    _, out = digits_quantized
    server = make_server(out, port=0)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser().browser.new_page(viewport={"width": 900, "height": 900})
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html", timeout=60_000)
        page.wait_for_function("window.kexportDemo.ready || window.kexportDemo.error", timeout=60_000)
        assert page.evaluate("window.kexportDemo.error") is None
        box = page.locator("#pad").bounding_box()
        # a "7": top bar, then the diagonal down
        _draw_digit(page, box, [[(0.2, 0.2), (0.8, 0.2), (0.45, 0.9)]])
        page.evaluate("window.kexportDemo.predictCanvas()")
        page.wait_for_function("window.kexportDemo.lastPrediction !== null", timeout=60_000)
        page.wait_for_timeout(300)  # let a queued live update finish
        page.evaluate("window.kexportDemo.predictCanvas()")
        page.wait_for_function("document.getElementById('preds').dataset.top !== undefined", timeout=60_000)
        pixels = np.asarray(page.evaluate("window.kexportDemo.lastInput"), dtype=np.float32)
        shown = page.evaluate("window.kexportDemo.lastPrediction")
        page.screenshot(path=str(tmp_path / "tfjs_demo_digit.png"))
    finally:
        page.close()
        server.shutdown()
        server.server_close()
    assert pixels.shape == (64,) and pixels.max() > 0.5 and pixels.min() == 0.0  # ink and background
    probs = np.asarray(digits_ctx.model(pixels.reshape(1, 8, 8, 1), training=False))[0]
    top = shown["digit"]["top"]
    assert top == int(probs.argmax()), (top, probs)
    assert top == 7  # and the model really reads the drawn "7" (the page is usable, not only consistent)
    np.testing.assert_allclose(shown["digit"]["scores"], probs, atol=1e-5)
    assert (tmp_path / "tfjs_demo_digit.png").stat().st_size > 1000


def test_demo_page_classifies_a_chosen_image_like_keras(squeeze_excite, squeeze_excite_export, tmp_path):
    """An RGB image model gets the file-chooser page: the image is resized in the browser and the
    page's top class must be Keras' on exactly the pixels the page fed the model."""
    import threading

    import keras
    from PIL import Image

    from kexport.targets.tfjs.demo import make_server
    from kexport.runtimes.tfjs_chromium import TfjsChromium, browser

    reason = TfjsChromium().available()
    if reason:
        pytest.skip(reason)
    _, out = squeeze_excite_export
    image = tmp_path / "photo.png"
    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype("uint8")).save(image)
    server = make_server(out, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser().browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html", timeout=60_000)
        page.wait_for_function("window.kexportDemo.ready || window.kexportDemo.error", timeout=60_000)
        page.set_input_files("#file", str(image))
        page.wait_for_function("window.kexportDemo.lastPrediction !== null", timeout=60_000)
        pixels = np.asarray(page.evaluate("window.kexportDemo.lastInput"), dtype=np.float32)
        shown = page.evaluate("window.kexportDemo.lastPrediction")
        page.screenshot(path=str(tmp_path / "tfjs_demo_image.png"))
    finally:
        page.close()
        server.shutdown()
        server.server_close()
    assert pixels.shape == (8 * 8 * 3,) and 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.std() > 0.05
    model = keras.saving.load_model(squeeze_excite)
    probs = np.asarray(model(pixels.reshape(1, 8, 8, 3), training=False))[0]
    assert shown["probs"]["top"] == int(probs.argmax())
    np.testing.assert_allclose(shown["probs"]["scores"], probs, atol=1e-5)


# ---- MobileNetV2 (random weights, calibrated BatchNorm) ---------------------------------------

@pytest.mark.slow
def test_mobilenet_v2_converts_and_passes_in_node_wasm(tmp_path_factory):
    """Converted once; checked in Node (wasm, and cpu). The browser row is left to the CLI: a
    first WebGL run of MobileNetV2 under SwiftShader compiles shaders for ~15 s of CPU."""
    from kexport.batchnorm_stats import application
    from kexport.parity import check_artifact
    from kexport.targets import Artifact, get_target

    d = tmp_path_factory.mktemp("tfjs_mnv2")
    application("MobileNetV2", (96, 96, 3), alpha=0.35, seed=0).save(d / "mnv2.keras")
    result = kexport.export(str(d / "mnv2.keras"), ["tfjs"], d / "out", options=ExportOptions(samples=4, benchmark=True),
                            verify=False)  # benchmark: the fp32 row's runtime_timing, checked below
    (row,) = result.targets
    assert row.status == "ok", row.error
    art = Artifact(d / "out" / row.artifact, runtime_options=row.extra["runtime_options"])
    with np.load(d / "out" / "reference" / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(d / "out" / "reference" / "outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    rows = check_artifact(art, ["tfjs-node-wasm", "tfjs-node-cpu"], inputs, outputs,
                          get_target("tfjs").tolerance_for("fp32", TfjsOptions()))
    checked = [p for p in rows if p.status != "skipped"]
    if not checked:
        pytest.skip("; ".join(p.reason for p in rows))
    for p in checked:
        assert p.status == "passed", (p.runtime, p.reason)  # "uninformative" would fail here too
        assert p.top1_agreement == 1.0
    timing = row.extra["runtime_timing"]
    assert timing["tfjs-node-wasm"]["predict_ms_median"] > 0 and timing["tfjs-node-cpu"]["predict_ms_median"] > 0


# ---- repairs of the converter output -----------------------------------------------------------

def _fused(name, bias, ops=("BiasAdd",)):
    import base64

    return {"name": name, "op": "_FusedMatMul", "input": ["x", "w", bias],
            "attr": {"T": {"type": "DT_FLOAT"}, "transpose_a": {"b": False}, "transpose_b": {"b": False},
                     "num_args": {"i": "1"},
                     "fused_ops": {"list": {"s": [base64.b64encode(o.encode()).decode() for o in ops]}}}}


def test_nonvector_bias_is_unfused_and_vector_bias_kept():
    from kexport.targets.tfjs.graph import unfuse_nonvector_bias

    mj = {"modelTopology": {"node": [
        {"name": "h", "op": "MatMul", "input": ["x", "u"]},
        {"name": "b1", "op": "Const"}, {"name": "three", "op": "Const"},
        _fused("lstm_add", "h"), _fused("dense", "b1", ("BiasAdd", "Relu")), _fused("hswish", "three", ("BiasAdd", "Relu6")),
    ]}, "weightsManifest": [{"paths": [], "weights": [{"name": "b1", "shape": [4]}, {"name": "three", "shape": []}]}]}
    notes, problems = unfuse_nonvector_bias(mj)
    by = {n["name"]: n for n in mj["modelTopology"]["node"]}
    assert problems == []
    assert by["dense"]["op"] == "_FusedMatMul"  # rank-1 bias: wasm takes it, keep the fusion
    assert by["lstm_add"]["op"] == "AddV2" and by["lstm_add"]["input"] == ["lstm_add/kexport_core", "h"]
    assert by["lstm_add/kexport_core"]["op"] == "MatMul" and "fused_ops" not in by["lstm_add/kexport_core"]["attr"]
    assert by["hswish"]["op"] == "Relu6" and by["hswish/kexport_bias"]["input"][1] == "three"
    assert len(notes) == 2


@pytest.fixture(scope="module")
def squeeze_excite(tmp_path_factory):
    """The MobileNetV3 pattern: a 1x1 conv + hard_sigmoid (relu6(x + 3) / 6). The converter fuses
    the `+ 3` into the conv as a rank-0 "bias", which the wasm backend refuses."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    s = keras.layers.Conv2D(8, 1, name="excite")(s)
    s = keras.layers.Activation("hard_sigmoid", name="hsig")(s)
    x = keras.layers.Multiply(name="scale")([x, s])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(4, activation="softmax", name="probs")(x)
    path = tmp_path_factory.mktemp("tfjs_se") / "se.keras"
    keras.Model(inp, out).save(path)
    return path


@pytest.fixture(scope="module")
def squeeze_excite_export(squeeze_excite, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfjs_se_out")
    return _export(squeeze_excite, out, demo=True), out


def test_hard_sigmoid_conv_fusion_is_repaired_for_wasm(squeeze_excite, squeeze_excite_export, tmp_path, monkeypatch):
    from kexport.targets.tfjs import graph as tfjs_graph

    result, _ = squeeze_excite_export
    (row,) = result.targets
    assert any("rank-0 constant bias" in n for n in row.notes), row.notes
    _assert_passed(row)
    # without the repair the same artifact is refused by wasm: the repair is what makes it pass
    monkeypatch.setattr(tfjs_graph, "unfuse_nonvector_bias", lambda mj, consts=None: ([], []))
    (raw,) = _export(squeeze_excite, tmp_path / "raw").targets
    wasm = next(p for p in raw.parity if p.runtime == "tfjs-node-wasm")
    if wasm.status != "skipped":
        assert wasm.status == "failed" and "rank-1 bias" in wasm.reason, wasm.reason


def test_cumprod_negative_axis_is_repaired(tmp_path):
    """Keras writes cumprod(axis=-1); TF.js 4.22 returns a wrong shape for a negative axis (cpu:
    a matMul shape error downstream, wasm: out-of-bounds memory, webgl: a shader that does not
    compile). The repair feeds rank + axis; all three runtimes then match."""
    data = Path(__file__).parent / "data"
    result = kexport.export(str(data / "cumprod_model.keras"), ["tfjs"], tmp_path,
                             options=ExportOptions(custom_objects=str(data / "custom_layers.py")))
    (row,) = result.targets
    assert any("negative axis" in n for n in row.notes), row.notes
    _assert_passed(row)


def test_unknown_fused_activation_is_reported():
    from kexport.targets.tfjs.graph import unfuse_nonvector_bias

    mj = {"modelTopology": {"node": [_fused("conv", "b", ("BiasAdd", "_FusedHardSwish"))]},
          "weightsManifest": []}
    _, problems = unfuse_nonvector_bias(mj)
    assert len(problems) == 1 and "_FusedHardSwish" in problems[0] and "'conv'" in problems[0]


def test_graph_preflight_lists_every_unsupported_op():
    import tensorflow as tf

    from kexport.targets.tfjs.graph import unsupported_tf_ops

    @tf.function(input_signature=[tf.TensorSpec([3, 3], tf.float32)])
    def f(x):
        return tf.math.erfc(x) + tf.linalg.det(x)

    ops = unsupported_tf_ops(f.get_concrete_function().graph.as_graph_def())
    assert {"Erfc", "MatrixDeterminant"} <= set(ops)


# ---- bad input, missing runtimes ----------------------------------------------------------------

def test_broken_model_json_fails_verify_with_a_clear_error(digits_quantized, tmp_path):
    from kexport.cli import main

    _, out = digits_quantized
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    report = json.loads((copy / "report.json").read_text())
    report["targets"] = [t for t in report["targets"] if t["variant"] == "fp32"]  # one row is enough
    (copy / "report.json").write_text(json.dumps(report))
    broken = copy / "tfjs" / "fp32" / "model.json"
    broken.write_text(broken.read_text()[:200])
    result = kexport.verify(copy)
    row = next(r for r in result.targets if r.variant == "fp32")
    for p in row.parity:
        if p.status == "skipped":
            continue
        assert p.status == "failed"
        assert str(broken) in p.reason and "not a readable TF.js model.json" in p.reason, p.reason
    assert main(["verify", str(copy)]) == 1


def test_missing_node_and_chromium_give_skipped_rows(digits_quantized, monkeypatch):
    from kexport.parity import check_artifact
    from kexport.targets import FP32, Artifact
    from kexport.runtimes import tfjs_chromium, tfjs_node

    result, out = digits_quantized
    row = result.targets[0]
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(tfjs_chromium, "CHROMIUM", "/nonexistent/chromium")
    art = Artifact(out / row.artifact, runtime_options={"format": "graph"})
    inputs = {"pixels": np.zeros((2, 8, 8, 1), np.float32)}
    rows = check_artifact(art, ["tfjs-node-cpu", "tfjs-node-wasm", "tfjs-chromium"], inputs,
                          {"digit": np.zeros((2, 10), np.float32)}, FP32)
    assert [r.status for r in rows] == ["skipped"] * 3
    assert "node is not on PATH" in rows[0].reason and "make node-deps" in tfjs_node.INSTALL_HINT
    assert "/nonexistent/chromium not found" in rows[2].reason
