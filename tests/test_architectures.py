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
