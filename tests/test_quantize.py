"""Quantized variants (issue 7): TFLite and ONNX variants of the digits model measured on its
held-out split, the gate refusing a variant that really breaks, and the data loaders.

The digits model is quantized once per session (tflite + onnx, every variant, ~25 s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MODELS

from kexport.errors import UsageError
from kexport.options import ExportOptions


@pytest.fixture(scope="session")
def digits_data_files(tmp_path_factory):
    from sample_models.make_eval_data import write_digits_data

    return write_digits_data(tmp_path_factory.mktemp("digits_data"))


@pytest.fixture(scope="session")
def digits_quantized(tmp_path_factory, digits_data_files):
    import kexport

    cal, ev = digits_data_files
    out = tmp_path_factory.mktemp("quantized")
    opts = ExportOptions(quantize="all", calibration=str(cal), eval=str(ev))
    result = kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["tflite", "onnx"], out, options=opts)
    rows = {(t["target"], t["variant"]): t for t in json.loads((out / "report.json").read_text())["targets"]}
    return result, out, rows


def test_every_variant_is_written_next_to_fp32(digits_quantized):
    result, out, rows = digits_quantized
    assert set(rows) == {("tflite", v) for v in ("fp32", "dynamic", "float16", "int8")} | \
        {("onnx", v) for v in ("fp32", "dynamic", "int8")}
    for (target, variant), row in rows.items():
        assert row["status"] == "ok", row
        assert (out / row["artifact"]).is_file()
        assert (out / row["artifact"]).parent == out / target  # side by side with fp32
        assert all(p["status"] == "passed" for p in row["parity"]), row["parity"]
    assert result.exit_code == 0


def test_every_variant_row_has_measured_numbers(digits_quantized):
    _, out, rows = digits_quantized
    for (target, variant), row in rows.items():
        base = rows[(target, "fp32")]
        # size ratio recomputed from the files themselves
        real = (out / row["artifact"]).stat().st_size / (out / base["artifact"]).stat().st_size
        assert row["size_ratio"] == pytest.approx(real, abs=1e-3)
        assert 0.0 <= row["top1_agreement"] <= 1.0
        assert row["metrics_data"] == {"source": "eval", "samples": 450}
        assert row["accuracy"] is not None and row["keras_accuracy"] is not None
        assert row["accuracy_delta"] == pytest.approx(row["accuracy"] - row["keras_accuracy"], abs=1e-6)
        assert row["latency_ms"] > 0 and row["latency_ratio"] > 0
        assert row["latency_rounds"] >= 5
        if variant == "fp32":
            assert row["latency_ratio"] == 1.0 and row["size_ratio"] == 1.0 and "gate" not in row
        else:
            assert row["gate"]["status"] == "passed", row["gate"]


def test_tflite_int8_is_small_and_keeps_accuracy(digits_quantized):
    """The issue's acceptance: at most 0.3x the fp32 size, accuracy within 1 point of Keras."""
    _, _, rows = digits_quantized
    int8 = rows[("tflite", "int8")]
    assert int8["size_ratio"] <= 0.3
    assert abs(int8["accuracy_delta"]) <= 0.01
    assert int8["top1_agreement"] >= 0.98


def test_reported_accuracy_is_what_the_runtime_computes(digits_quantized, digits_data_files):
    """Recompute the ONNX int8 accuracy here, independently of the metrics code."""
    import onnxruntime as ort

    _, out, rows = digits_quantized
    with np.load(digits_data_files[1]) as z:
        x, y = z["pixels"], z["y"]
    sess = ort.InferenceSession(str(out / rows[("onnx", "int8")]["artifact"]), providers=["CPUExecutionProvider"])
    pred = sess.run(["digit"], {"pixels": x})[0].argmax(-1)
    assert rows[("onnx", "int8")]["accuracy"] == pytest.approx(float((pred == y).mean()), abs=1e-6)
    # and the static model really is quantized (QDQ int8 nodes), not a renamed fp32 copy
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / rows[("onnx", "int8")]["artifact"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_io_image_folder_calibration_without_labels(tmp_path, digits_data_files):
    """--int8-io gives int8 input/output tensors that LiteRT's session (de)quantizes; a folder of
    images calibrates; without --eval the metrics use the reference inputs (here: the calibration
    images) and accuracy is unknown (null), never invented."""
    from PIL import Image

    import kexport
    from kexport.targets.tflite import TFLiteOptions

    with np.load(digits_data_files[0]) as z:
        pixels = z["pixels"][:64]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(pixels):
        Image.fromarray(np.round(img[..., 0] * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    opts = ExportOptions(calibration=str(folder), target_options={"tflite": TFLiteOptions(quantize="int8", int8_io=True)},
                         quantize="int8")
    result = kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["tflite"], tmp_path, options=opts)
    row = next(t for t in result.to_json()["targets"] if t["variant"] == "int8")
    assert row["int8_io"] is True
    assert row["parity"][0]["status"] == "passed", row["parity"]
    # reference inputs = the first 32 images (EVAL_REFERENCE_SAMPLES), read back to [0, 1]
    assert row["metrics_data"] == {"source": "calibration", "samples": 32}
    assert np.allclose(np.load(tmp_path / "reference" / "inputs.npz")["pixels"], pixels[:32], atol=0.5 / 255)
    assert f"calibrated on 64 samples of {folder}" in row["notes"]
    assert row["accuracy"] is None and row["accuracy_delta"] is None and row["keras_accuracy"] is None
    assert "accuracy unknown" in row["gate"]["reason"]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tmp_path / row["artifact"]))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8


def _outlier_model(path: Path, factor: float = 1e4) -> Path:
    """The digits model made mathematically equivalent but hostile to 8-bit: one hidden ReLU unit
    scaled by `factor` on the way in and 1/factor on the way out (ReLU is positively homogeneous,
    so float outputs are unchanged). Its activation range then sets the per-tensor int8 scale, and
    every other unit rounds to zero."""
    import keras

    m = keras.models.load_model(SAMPLE_MODELS["digits_cnn"])
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    k = int(keras.Model(m.input, m.get_layer("dense").output).predict(x, verbose=0).mean(0).argmax())
    dk, db = m.get_layer("dense").get_weights()
    dk[:, k] *= factor
    db[k] *= factor
    m.get_layer("dense").set_weights([dk, db])
    ok, ob = m.get_layer("digit").get_weights()
    ok[k, :] /= factor
    m.get_layer("digit").set_weights([ok, ob])
    m.save(path)
    return path


def test_gate_refuses_a_variant_that_broke_the_model(tmp_path, digits_data_files):
    from kexport.cli import main

    cal, ev = digits_data_files
    model = _outlier_model(tmp_path / "outlier.keras")
    out = tmp_path / "out"
    code = main(["tflite", str(model), "-o", str(out), "--quantize", "int8,float16",
                 "--calibration", str(cal), "--eval", str(ev)])
    assert code == 1
    rows = {t["variant"]: t for t in json.loads((out / "report.json").read_text())["targets"]}
    # fp32 unaffected: written, strict parity passed, no gate
    assert rows["fp32"]["status"] == "ok" and rows["fp32"]["parity"][0]["status"] == "passed"
    assert (out / "tflite" / "model.tflite").is_file() and "gate" not in rows["fp32"]
    # float16 is fine with this model and passes the gate
    assert rows["float16"]["gate"]["status"] == "passed"
    # int8 collapsed: refused with the reason, not written
    int8 = rows["int8"]
    assert int8["status"] == "failed" and int8["artifact"] is None
    assert int8["gate"]["status"] == "failed"
    assert int8["top1_agreement"] < 0.98 and "top-1 agreement" in int8["gate"]["reason"]
    assert int8["accuracy_delta"] < -0.01 and "points below Keras" in int8["gate"]["reason"]
    assert "refused by the quantization gate" in int8["error"]
    assert not (out / "tflite" / "model_int8.tflite").exists()


def test_gate_thresholds():
    from kexport.report import TargetResult
    from kexport.targets import Artifact
    from kexport.variant_metrics import apply_gate

    def gate(agree, delta, **kw):
        row = TargetResult("tflite", "int8", artifact="x")
        row.extra = {"top1_agreement": agree, "accuracy_delta": delta, "accuracy": 0.9 + (delta or 0),
                     "keras_accuracy": 0.9, "metrics_data": {"source": "eval", "samples": 100}}
        apply_gate(row, ExportOptions(**kw), Path("/nonexistent"), Artifact(Path("/nonexistent/x")))
        return row.extra["gate"]["status"], row.status

    assert gate(0.98, -0.01) == ("passed", "ok")  # exactly at both thresholds
    assert gate(0.979, 0.0) == ("failed", "failed")
    assert gate(1.0, -0.012) == ("failed", "failed")
    assert gate(1.0, -0.012, max_accuracy_drop=2.0) == ("passed", "ok")
    assert gate(0.9, None, min_agreement=0.85) == ("passed", "ok")
    assert gate(None, None)[0] == "skipped"  # no classifier output: nothing to judge top-1 on


def test_quantize_vocabulary():
    from kexport.quantize import check_vocabulary, selected
    from kexport.targets import get_target

    tfl, onnx = get_target("tflite"), get_target("onnx")
    assert selected("all", tfl.QUANTIZE) == ["dynamic", "float16", "int8"]
    assert selected("int8,float16", tfl.QUANTIZE) == ["float16", "int8"]
    assert selected("float16", onnx.QUANTIZE) == []  # `kexport all --quantize float16`: not an onnx variant
    check_vocabulary("float16", [tfl, onnx])
    with pytest.raises(UsageError, match="--quantize palettize is not a variant of the chosen targets"):
        check_vocabulary("palettize", [tfl, onnx])
    with pytest.raises(UsageError, match="float16"):
        check_vocabulary("float16", [onnx])


def test_bad_data_files_give_one_line_errors(tmp_path, digits_ctx):
    from kexport.quantize import _match_labels, load_npz

    np.savez(tmp_path / "wrong_name.npz", image=np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(UsageError, match=r"wrong_name.npz: --eval lacks arrays \['pixels'\]"):
        load_npz(tmp_path / "wrong_name.npz", digits_ctx.signature, "--eval")
    np.savez(tmp_path / "wrong_shape.npz", pixels=np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(UsageError, match="has shape"):
        load_npz(tmp_path / "wrong_shape.npz", digits_ctx.signature, "--calibration")
    keras_out = {"digit": np.eye(10, dtype=np.float32)[:4]}
    with pytest.raises(UsageError, match="integer class indices"):
        _match_labels({"y": np.array([0, 1, 2, 10])}, keras_out, "e.npz")
    with pytest.raises(UsageError, match="3 labels for 4 samples"):
        _match_labels({"y": np.array([0, 1, 2])}, keras_out, "e.npz")


def test_image_folder_as_calibration_and_eval_data(tmp_path, digits_ctx):
    from PIL import Image

    from kexport.quantize import load_images

    rng = np.random.default_rng(0)
    for cls in ("0_zero", "1_one"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    inputs, labels = load_images(tmp_path, digits_ctx.model, digits_ctx.signature, "--eval", labelled=True)
    x = inputs["pixels"]
    assert x.shape == (6, 8, 8, 1) and x.dtype == np.float32  # resized, grayscale for a 1-channel input
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # scaled to [0, 1], not raw pixels
    assert labels["y"].tolist() == [0, 0, 0, 1, 1, 1]  # class = sorted sub-folder index
    (tmp_path / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UsageError, match="no images"):
        load_images(tmp_path / "empty", digits_ctx.model, digits_ctx.signature, "--calibration")


def test_cli_usage_errors_exit_2_before_loading_the_model(tmp_path, capsys):
    from kexport.cli import main

    model = str(SAMPLE_MODELS["digits_cnn"])
    assert main(["onnx", model, "-o", str(tmp_path), "--quantize", "float16"]) == 2
    assert "--quantize float16 is not a variant of the chosen targets (onnx: dynamic|int8" in capsys.readouterr().err
    assert main(["tflite", model, "-o", str(tmp_path), "--quantize", "int8", "--min-agreement", "98"]) == 2
    assert "--min-agreement=98.0 must lie in [0, 1]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
