"""The `openvino` target through the real export API, verified by the OpenVINO CPU runtime in a
child process without TensorFlow: parity on the sample models, every Keras name and the free
batch dimension kept, fp32 weights by default, the float16/int8 variants with their own
tolerances and the gate, a precise preflight refusal, and checks that fail when the artifact or
the runtime's precision setting is wrong."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

import kexport
from conftest import SAMPLE_MODELS
from kexport.options import ExportOptions

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    done = {}

    def get(name, quantize=None):
        key = (name, quantize)
        if key not in done:
            out = root / f"{name}-{quantize or 'fp32'}"
            opts = ExportOptions(quantize=quantize)
            done[key] = (kexport.export(str(SAMPLE_MODELS[name]), ["openvino"], out, options=opts), out)
        return done[key]

    return get


def _ports(xml_path):
    """{parameter name: shape string} and the set of result tensor names, read from the IR."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    ins = {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs}
    return ins, {n for p in model.outputs for n in p.get_names()}


def _weight_types(xml_path):
    root = ET.parse(xml_path).getroot()
    return {layer.find("data").get("element_type") for layer in root.iter("layer")
            if layer.get("type") == "Const" and layer.find("data") is not None}


@pytest.mark.parametrize("model", list(SAMPLE_MODELS))
def test_sample_parity_names_and_free_batch(exports, model):
    result, out = exports(model)
    (row,) = result.targets
    assert row.status == "ok", row.error
    (p,) = row.parity
    assert p.runtime == "openvino-cpu" and p.status == "passed", p.reason
    assert p.max_abs_err <= 1e-5 + 1e-4 * max(o["scale"] for o in p.outputs.values())
    xml = out / row.artifact / "model.xml"
    assert xml.exists() and xml.with_suffix(".bin").exists()
    ins, outs = _ports(xml)
    from kexport.loader import load_model, signature_of

    sig = signature_of(load_model(SAMPLE_MODELS[model]))
    assert set(ins) == set(sig.input_names)
    assert outs == set(sig.output_names)  # exactly the Keras names, nothing auto-generated
    assert all(s.startswith("[?,") or s == "[?]" for s in ins.values()), ins  # free batch
    assert "f16" not in _weight_types(xml), "fp32 artifact must not carry float16 weights"
    assert row.extra["openvino_device"]["device"] == "CPU"
    assert row.extra["openvino_device"]["inference_precision"] == "f32"
    assert row.extra["runtime_options"] == {"inference_precision": "f32"}


def test_variants_measured_tolerances_and_gate(exports):
    from kexport.targets.openvino import TOLERANCES

    result, out = exports("digits_cnn", "all")
    rows = {r.variant: r for r in result.targets}
    assert list(rows) == ["fp32", "float16", "int8"]
    for variant, row in rows.items():
        assert row.status == "ok", (variant, row.error)
        (p,) = row.parity
        assert p.status == "passed", (variant, p.reason)
        tol = TOLERANCES[variant]
        assert (p.atol, p.rtol) == (tol.atol, tol.rtol)
        if variant != "fp32":
            assert row.extra["gate"]["status"] == "passed", row.extra["gate"]
    # the weights (model.bin) shrink; the graph (model.xml) grows by the decompression ops
    weights = {v: (out / r.artifact / "model.bin").stat().st_size for v, r in rows.items()}
    assert weights["float16"] < 0.55 * weights["fp32"], weights
    assert weights["int8"] < 0.3 * weights["fp32"], weights
    assert "f16" in _weight_types(out / rows["float16"].artifact / "model.xml")
    assert {"u8", "i8"} & _weight_types(out / rows["int8"].artifact / "model.xml")
    # the variants really differ from fp32 (else the looser tolerance would hide nothing)
    assert rows["float16"].parity[0].max_abs_err > 10 * rows["fp32"].parity[0].max_abs_err


def test_tampered_weights_fail_parity(exports, digits_ctx, tmp_path):
    """The parity row must be able to fail: scale one block of weights in model.bin."""
    import shutil

    from kexport.parity import check_artifact
    from kexport.targets.base import FP32, Artifact

    result, out = exports("digits_cnn")
    src = out / result.targets[0].artifact
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    data = np.fromfile(bad / "model.bin", dtype=np.float32)
    data[: len(data) // 2] *= 1.5
    data.tofile(bad / "model.bin")
    ctx = digits_ctx
    good = check_artifact(Artifact(src, runtime_options={"inference_precision": "f32"}), ["openvino-cpu"],
                          ctx.inputs, ctx.outputs, FP32)
    rows = check_artifact(Artifact(bad, runtime_options={"inference_precision": "f32"}), ["openvino-cpu"],
                          ctx.inputs, ctx.outputs, FP32)
    assert good[0].status == "passed", good[0]
    assert rows[0].status == "failed", rows[0]


def test_cpu_default_precision_would_fail_fp32(exports, digits_ctx):
    """Why the runtime pins INFERENCE_PRECISION_HINT=f32: on CPUs with bf16 support the CPU plugin
    runs in bfloat16 by default, far outside the fp32 tolerance."""
    import openvino as ov

    from kexport.runtimes.openvino_cpu import OpenVINOSession

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        pytest.skip(f"this CPU has no bf16 execution ({caps}): the default precision is f32 here")
    result, out = exports("digits_cnn")
    path = str(out / result.targets[0].artifact)
    ctx = digits_ctx
    errs = {}
    for precision in ("f32", "bf16"):
        got = OpenVINOSession(path, precision=precision).predict(ctx.inputs)
        errs[precision] = max(float(np.abs(got[k] - ctx.outputs[k]).max()) for k in ctx.outputs)
    assert errs["f32"] < 1e-5 < errs["bf16"], errs


def test_free_spatial_dims_stay_free(tmp_path):
    """A fully convolutional model (input [None, None, None, 3]) runs at two image sizes."""
    import keras

    from kexport.runtimes.openvino_cpu import OpenVINOSession

    keras.utils.set_random_seed(0)
    x = keras.Input((None, None, 3), name="img")
    y = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(x)
    keras.Model(x, keras.layers.Conv2D(2, 1, name="mask")(y)).save(tmp_path / "fcn.keras")
    result = kexport.export(str(tmp_path / "fcn.keras"), ["openvino"], tmp_path / "out")
    (row,) = result.targets
    assert row.status == "ok" and row.parity[0].status == "passed", (row.error, row.parity)
    model = keras.saving.load_model(tmp_path / "fcn.keras")
    session = OpenVINOSession(str(tmp_path / "out" / row.artifact))
    rng = np.random.default_rng(1)
    for shape in ((2, 17, 23, 3), (1, 40, 8, 3)):
        img = rng.random(shape, dtype=np.float32)
        got = session.predict({"img": img})["mask"]
        assert got.shape == shape[:3] + (2,)
        np.testing.assert_allclose(got, np.asarray(model(img)), atol=1e-5, rtol=1e-4)


def test_hashing_refused_with_every_op_named(tmp_path):
    """Keras' Hashing layer on integer ids hashes their decimal strings (AsString ->
    StringToHashBucketFast): the OpenVINO frontend has no rule for either, and both are named."""
    import keras

    x = keras.Input((2,), dtype="int64", name="code")
    hashed = keras.layers.Hashing(num_bins=5, output_mode="one_hot")(x)
    keras.Model(x, keras.layers.Dense(2, name="score")(hashed)).save(tmp_path / "hash.keras")
    result = kexport.export(str(tmp_path / "hash.keras"), ["openvino"], tmp_path / "out")
    (row,) = result.targets
    assert row.status == "unsupported", (row.status, row.error)
    assert row.error == ("target 'openvino' cannot take: TF op AsString (no conversion rule), "
                         "TF op StringToHashBucketFast (no conversion rule)"), row.error
    assert not (tmp_path / "out" / "openvino").exists()
    assert result.exit_code == 1


def test_unconverted_ops_report_parsing():
    from kexport.targets.openvino import unconverted_ops

    text = ("Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
            "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted. Failed operations detailed log:\n"
            "-- HashTableV2 with a message:\nVariable or resource `hash_table` is not initialized, model is inconsistent\n"
            "-- LookupTableFindV2 with a message:\nException from src/core/include/openvino/core/type/element_type.hpp:256:\n"
            "Unknown type\n\nSummary:\n-- No conversion rule found for operations: FancyOp\n"
            "-- Conversion is failed for: HashTableV2, LookupTableFindV2\n")
    assert unconverted_ops(text) == [
        "TF op FancyOp (no conversion rule)",
        "TF op HashTableV2 (Variable or resource `hash_table` is not initialized, model is inconsistent)",
        "TF op LookupTableFindV2 (Unknown type)",
    ]


def test_runtime_child_has_no_tensorflow(exports, digits_ctx):
    from kexport.runtimes.isolated import IsolatedSession

    result, out = exports("digits_cnn")
    session = IsolatedSession("openvino-cpu", str(out / result.targets[0].artifact), {"inference_precision": "f32"})
    try:
        assert session.tensorflow_loaded is False
        got = session.predict(digits_ctx.inputs)
        assert set(got) == set(digits_ctx.outputs)
    finally:
        session.close()
