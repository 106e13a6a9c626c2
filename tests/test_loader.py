"""One loader for every format; safe mode refuses Lambda layers before anything executes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
from kexport.errors import ModelLoadError
from kexport.loader import lambda_layers, load_model, signature_of

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", sorted(SAMPLE_MODELS))
def test_every_sample_format_loads_with_keras_names(name):
    model = load_model(SAMPLE_MODELS[name])
    sig = signature_of(model)
    assert sig.inputs and sig.outputs
    assert all(t.shape[0] is None for t in sig.inputs + sig.outputs)
    assert len(set(sig.output_names)) == len(sig.output_names)


def test_keras2_h5_is_written_by_tf_keras_and_loads():
    import h5py

    with h5py.File(SAMPLE_MODELS["iris_keras2"]) as f:
        assert str(f.attrs["keras_version"]).startswith("2.")
    sig = signature_of(load_model(SAMPLE_MODELS["iris_keras2"]))
    assert sig.input_names == ["measurements"] and sig.output_names == ["species"]


def test_two_input_two_output_names():
    sig = signature_of(load_model(SAMPLE_MODELS["two_in_two_out"]))
    assert sig.input_names == ["image", "meta"]
    assert sig.output_names == ["class_probs", "score"]


def test_embedding_bounds_integer_inputs():
    sig = signature_of(load_model(SAMPLE_MODELS["token_lstm"]))
    assert sig.inputs[0].dtype == "int32" and sig.inputs[0].int_high == 50


def test_normalization_statistics_shape_reference_inputs():
    from kexport.parity import reference_inputs

    sig = signature_of(load_model(SAMPLE_MODELS["wine_mlp"]))
    x = reference_inputs(sig, 64)["features"]
    # Wine features span 0.1 .. 1700: the reference must follow the adapted statistics.
    assert np.allclose(x.mean(axis=0), sig.inputs[0].mean, atol=4 * np.asarray(sig.inputs[0].std) / 8 + 1e-3)


def test_saved_model_directory_loads_and_matches(sample_export):
    result, out = sample_export("digits_cnn")
    row = next(r for r in result.targets if r.target == "saved-model")
    model = load_model(out / row.artifact)
    ref = load_model(SAMPLE_MODELS["digits_cnn"])
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    got = model.predict({"pixels": x}, verbose=0)
    got = got["digit"] if isinstance(got, dict) else got
    np.testing.assert_allclose(got, ref.predict(x, verbose=0), atol=1e-6)


def test_lambda_detected_from_config_without_deserializing(tmp_path):
    import keras

    inp = keras.Input((2,), name="x")
    out = keras.layers.Lambda(lambda t: t + 1, name="plus_one")(inp)
    path = tmp_path / "lam.h5"
    keras.Model(inp, out).save(path)
    with pytest.raises(ModelLoadError, match="plus_one.*--unsafe"):
        load_model(path)
    assert load_model(path, safe_mode=False) is not None


def test_nested_lambda_is_found():
    cfg = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "Sequential", "config": {"name": "inner", "layers": [
            {"class_name": "Lambda", "config": {"name": "hidden_code"}}]}}]}}
    assert lambda_layers(cfg) == ["hidden_code"]


def test_custom_objects_file():
    import subprocess
    import sys

    path = DATA / "erfinv_model.keras"
    # In a fresh process: Keras' registry is global, and other tests register the layer.
    code = ("import sys; from kexport.loader import load_model; from kexport.errors import ModelLoadError\n"
            "try:\n    load_model(sys.argv[1])\nexcept ModelLoadError as e:\n    print(e); sys.exit(3)\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 3 and "--custom-objects" in res.stdout, res.stdout + res.stderr[-1000:]
    model = load_model(path, custom_objects=DATA / "custom_layers.py")
    assert any(type(layer).__name__ == "InvErf" for layer in model.layers)


def test_custom_objects_file_missing():
    with pytest.raises(ModelLoadError, match="custom-objects file not found"):
        load_model(DATA / "erfinv_model.keras", custom_objects=DATA / "nope.py")


def test_unknown_extension(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        load_model(p)
