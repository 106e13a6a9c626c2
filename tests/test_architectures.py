"""Real architectures, each converted once per session: parity must hold and must not be fooled.

- a random-weight keras.applications MobileNetV2 gives a uniform softmax: `uninformative`,
  never `passed`; with calibrated BatchNorm statistics it passes for real;
- the Keras 3 constructs converters break on (exact GELU -> Erfc, grouped Conv2D in a nested
  XLA function, LSTM/GRU loops) are rewritten, and the report row says so.
"""

from __future__ import annotations

import numpy as np
import pytest

import kexport
from kexport.batchnorm_stats import application

FOUNDATION = ["saved-model", "tflite", "onnx"]


def _save(model, path):
    model.save(path)
    return path


@pytest.fixture(scope="module")
def mobilenet_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnv2")
    from kexport.batchnorm_stats import calibrate_batchnorm

    model = application("MobileNetV2", (96, 96, 3), calibrate=False, alpha=0.35)
    raw = _save(model, d / "mnv2_raw.keras")
    calibrate_batchnorm(model, seed=0)
    return raw, _save(model, d / "mnv2_calibrated.keras")


@pytest.mark.slow
def test_uncalibrated_mobilenet_is_uninformative_not_passed(mobilenet_paths, tmp_path):
    result = kexport.export(str(mobilenet_paths[0]), ["tflite"], tmp_path)
    row = result.targets[0]
    assert row.status == "ok"
    assert {p.status for p in row.parity} == {"uninformative"}, row.parity  # litert and litert-arm64
    assert result.exit_code == 1


@pytest.mark.slow
def test_calibrated_mobilenet_passes_everywhere(mobilenet_paths, tmp_path):
    result = kexport.export(str(mobilenet_paths[1]), FOUNDATION, tmp_path)
    for row in result.targets:
        assert row.status == "ok", (row.target, row.error)
        for p in row.parity:
            assert p.status == "passed", (row.target, p.runtime, p.reason)
            assert p.top1_agreement == 1.0
    assert result.exit_code == 0


@pytest.fixture(scope="module")
def tricky_model(tmp_path_factory):
    """ConvNeXt-style grouped conv + exact GELU + LayerNorm + attention + GRU + LSTM."""
    import keras

    keras.utils.set_random_seed(7)
    img = keras.Input((16, 16, 8), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", groups=4, name="grouped_conv")(img)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Dense(16, name="pw")(x)
    x = keras.layers.Dense(16, name="gelu_dense")(x)
    x = keras.layers.Activation("gelu", name="gelu_exact")(x)  # Keras 3 'gelu' = exact (Erfc)
    x = keras.layers.Reshape((16, 256), name="to_seq")(x)
    att = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(x, x)
    seq = keras.layers.GRU(12, return_sequences=True, name="gru")(att)
    seq = keras.layers.LSTM(10, name="lstm")(seq)
    out = keras.layers.Dense(5, activation="softmax", name="probs")(seq)
    model = keras.Model(img, out, name="tricky")
    return _save(model, tmp_path_factory.mktemp("tricky") / "tricky.keras")


@pytest.mark.slow
def test_keras3_constructs_are_rewritten_and_match(tricky_model, tmp_path):
    result = kexport.export(str(tricky_model), FOUNDATION, tmp_path)
    by = {r.target: r for r in result.targets}
    for name in FOUNDATION:
        row = by[name]
        assert row.status == "ok", (name, row.error)
        for p in row.parity:
            assert p.status == "passed", (name, p.runtime, p.reason)
    notes = " ".join(by["tflite"].notes)
    assert "exact GELU" in notes and "grouped Conv" in notes and "GRU 'gru' unrolled" in notes
    assert by["saved-model"].notes == []  # the SavedModel keeps the original graph


def test_gelu_rewrite_is_exact():
    import keras
    import tensorflow as tf

    from kexport.rewrites import keras3_rewrites

    x = np.linspace(-6, 6, 1001).astype(np.float32)
    want = keras.activations.gelu(x, approximate=False).numpy()
    layer = keras.layers.Dense(1)
    with keras3_rewrites(keras.Sequential([keras.Input((1,)), layer])) as applied:
        got = keras.activations.gelu(tf.constant(x), approximate=False).numpy()
    assert applied == ["exact GELU (Erfc) -> 0.5*x*(1+erf(x/sqrt(2)))"]
    # float32: ulp(6.0) = 4.8e-7, and 1 + erf(x) cancels for x < 0 (error <= eps * |x| / 2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_grouped_conv_rewrite_is_exact():
    import keras
    import tensorflow as tf

    from kexport.rewrites import keras3_rewrites

    keras.utils.set_random_seed(3)
    conv = keras.layers.Conv2D(12, 3, strides=2, padding="same", groups=3, dilation_rate=1)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 6)).astype(np.float32)
    want = conv(x).numpy()
    with keras3_rewrites(keras.Sequential([keras.Input((9, 9, 6)), conv])) as applied:
        got = tf.function(lambda t: conv(t))(tf.constant(x)).numpy()
    assert any("grouped Conv (groups=3)" in a for a in applied)
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---- CoreML fp16 on keras.applications: the model's own float16 floor, and fp16 overflow ------

def _coreml_float16(path, samples):
    """(artifact, row) of the float16 program in coreml-reference, judged as the pipeline judges it:
    the documented fp16 bound, on the samples where Keras itself in float16 stays well inside it."""
    import tempfile
    from pathlib import Path

    from kexport.api import build_context
    from kexport.options import ExportOptions
    from kexport.parity import check_artifact
    from kexport.targets import get_target
    from kexport.targets.coreml import CoreMLOptions

    target, options = get_target("coreml"), CoreMLOptions()
    ctx = build_context(path, ExportOptions(samples=samples))
    art = target.export(ctx, Path(tempfile.mkdtemp(prefix="kexport-coreml-arch-")), options, "float16")
    noise, note = target.conditioning(art)
    row = check_artifact(art, ["coreml-reference"], ctx.inputs, ctx.outputs, target.tolerance_for("float16", options),
                         noise=noise, note=note)[0]
    return art, row


@pytest.fixture(scope="module")
def resnet50_fp16(tmp_path_factory):
    """ResNet50 64x64, seed 1: softmax near-ties whose float16 error is the model's, not the program's."""
    path = _save(application("ResNet50", (64, 64, 3), seed=1), tmp_path_factory.mktemp("r50") / "resnet50.keras")
    return _coreml_float16(path, samples=16)


@pytest.mark.slow
def test_resnet50_coreml_fp16_is_judged_against_its_float16_floor(resnet50_fp16):
    from kexport.targets.coreml import FP16, stored_floor
    from kexport.targets.coreml.floor import FACTOR

    art, row = resnet50_fp16
    floor = stored_floor(art.path)
    documented = FP16.atol + FP16.rtol * floor.scale["predictions"]
    per_sample = np.asarray(floor.samples[0]["predictions"])
    # Keras itself, computing in float16, moves the softmax beyond the documented fp16 bound on some
    # samples: near ties at logit magnitudes ~500 (float16 spacing 0.25). Where the program is beyond
    # the bound on such a sample it is excused (ill-conditioned, counted); everywhere else it is held
    # to the documented bound.
    assert floor.floor["predictions"] > documented, (floor, documented)
    assert (row.atol, row.rtol) == (FP16.atol, FP16.rtol)  # never a raised tolerance
    assert 0 < row.ill_conditioned <= int((FACTOR * per_sample > documented).sum()), row
    assert row.status in ("passed", "uninformative"), row.reason
    if row.status == "passed":
        assert row.max_abs_err <= documented and row.samples == 16 - row.ill_conditioned
        assert row.top1_agreement in (None, 1.0)


@pytest.mark.slow
def test_efficientnet_coreml_fp16_is_finite_when_calibrated_in_its_pixel_range(tmp_path_factory):
    """EfficientNetB0 starts with Rescaling(1/255): reference inputs are 0..255 pixels. BatchNorm
    statistics taken on [-1, 1] grew its activations past float16's 65504 (block4a_project_bn)."""
    model = application("EfficientNetB0", (96, 96, 3), seed=0, classifier_activation=None)
    art, row = _coreml_float16(_save(model, tmp_path_factory.mktemp("effb0") / "effb0.keras"), samples=4)
    assert row.status == "passed", row.reason
    assert row.max_rel_err < 5e-2  # logits: an informative output, not a flat softmax


@pytest.mark.parametrize("scale, offset, mean, var", [
    (1 / 255, 0.0, 0.5, 1 / 12),          # 0..255 pixels -> [0, 1]
    (1 / 127.5, -1.0, 0.0, 1 / 3),        # 0..255 pixels -> [-1, 1]
    (None, None, 0.0, 1 / 3),             # no preprocessing: [-1, 1] as before
])
def test_batchnorm_calibration_inputs_follow_the_in_model_rescaling(scale, offset, mean, var):
    import keras

    from kexport.batchnorm_stats import calibrate_batchnorm, calibration_inputs

    inp = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Rescaling(scale, offset)(inp) if scale else inp
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inp, bn(x))
    batch = calibration_inputs(model, seed=0, samples=8)["pixels"]
    if scale:
        assert batch.min() >= 0.0 and batch.max() > 250.0 and batch.max() <= 255.0
    calibrate_batchnorm(model, seed=0, samples=8)
    # the statistics of what the BatchNorm sees behind the Rescaling, for raw 0..255 pixels
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, atol=0.05)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=0.1)
