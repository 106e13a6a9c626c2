"""CLI tests, in-process through main(): exit codes, one-line errors, no partial artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLE_MODELS
from kexport.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(err: str, *needles: str):
    lines = [ln for ln in err.splitlines() if ln.startswith("kexport: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def artifacts_in(out: Path) -> list[Path]:
    if not out.exists():
        return []
    return [p for p in out.rglob("*") if p.is_file() and p.name != "report.json" and "reference" not in p.parts]


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    import keras

    inp = keras.Input((3,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2.0, name="double_it")(inp)
    path = tmp_path_factory.mktemp("lam") / "lambda_model.keras"
    keras.Model(inp, keras.layers.Dense(2, name="y")(out)).save(path)
    return path


def test_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "tflite", tmp_path / "nope.keras", "-o", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "nope.keras", "not found")
    assert artifacts_in(tmp_path / "out") == []


def test_text_file_renamed_h5(capsys, tmp_path):
    bad = tmp_path / "model.h5"
    bad.write_text("this is not a model\n")
    code, _, err = run(capsys, "onnx", bad, "-o", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "model.h5", "HDF5")
    assert artifacts_in(tmp_path / "out") == []


def test_truncated_keras(capsys, tmp_path):
    data = SAMPLE_MODELS["digits_cnn"].read_bytes()
    bad = tmp_path / "truncated.keras"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "all", bad, "-o", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "truncated.keras", "truncated")
    assert artifacts_in(tmp_path / "out") == []


def test_lambda_refused_in_safe_mode(capsys, tmp_path, lambda_model):
    code, _, err = run(capsys, "tflite", lambda_model, "-o", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "double_it", "--unsafe", "lambda_model.keras")
    assert artifacts_in(tmp_path / "out") == []


def test_lambda_allowed_with_unsafe(capsys, tmp_path, lambda_model):
    code, out, err = run(capsys, "onnx", lambda_model, "-o", tmp_path / "out", "--unsafe")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["targets"][0]["parity"][0]["status"] == "passed"


def test_unknown_target(capsys, tmp_path):
    code, _, err = run(capsys, "tensorrt", SAMPLE_MODELS["digits_cnn"], "-o", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "tensorrt")


def test_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run(capsys, "tflite", SAMPLE_MODELS["digits_cnn"], "-o", blocker / "sub")
    assert code == 2
    assert_one_line_error(err, "not writable", str(blocker / "sub"))


def test_parity_failure_exits_1_and_keeps_artifact_marked_failed(capsys, tmp_path):
    """A zero tolerance cannot hold for a real converter: the row does not pass, exit 1, the file stays.
    (Keras' own one-ulp noise already exceeds a zero tolerance, so the verdict is `uninformative`
    where the noise floor catches it first, else `failed`: never `passed`.)"""
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "tflite", SAMPLE_MODELS["wine_mlp"], "-o", out, "--atol", 0, "--rtol", 0)
    assert code == 1
    row = json.loads((out / "report.json").read_text())["targets"][0]
    status = row["parity"][0]["status"]
    assert status in ("failed", "uninformative")
    assert (out / row["artifact"]).exists()
    assert status in stdout


def test_failed_conversion_keeps_previous_artifact(capsys, tmp_path):
    """Another model into a directory holding a good export is refused (exit 2) before anything is
    written: the good artifact and its report stay (same-model failures: tests/test_export_dir.py)."""
    out = tmp_path / "out"
    assert run(capsys, "tflite", SAMPLE_MODELS["iris_keras2"], "-o", out)[0] == 0
    before = (out / "tflite" / "model.tflite").read_bytes()
    code, _, _ = run(capsys, "tflite", Path(__file__).parent / "data" / "cumprod_model.keras", "-o", out,
                     "--custom-objects", Path(__file__).parent / "data" / "custom_layers.py")
    assert code == 2
    assert (out / "tflite" / "model.tflite").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".kexport")]


def test_json_output_and_verify_roundtrip(capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "onnx", SAMPLE_MODELS["two_in_two_out"], "-o", out, "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["targets"][0]["parity"][0]["status"] == "passed"
    code, stdout, _ = run(capsys, "verify", out)
    assert code == 0 and "passed" in stdout


def test_verify_detects_tampered_artifact(capsys, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "out"
    assert run(capsys, "onnx", SAMPLE_MODELS["wine_mlp"], "-o", out)[0] == 0
    path = out / "onnx" / "model.onnx"
    m = onnx.load(path)
    biggest = max(m.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    arr = numpy_helper.to_array(biggest).copy()
    arr.flat[0] += 0.5
    biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
    onnx.save(m, path)
    code, stdout, _ = run(capsys, "verify", out)
    assert code == 1
    assert "failed" in stdout


def test_verify_on_a_directory_without_report(capsys, tmp_path):
    code, _, err = run(capsys, "verify", tmp_path)
    assert code == 2
    assert_one_line_error(err, "report.json")


def test_inspect_lists_signature_and_targets(capsys):
    code, out, _ = run(capsys, "inspect", SAMPLE_MODELS["token_lstm"])
    assert code == 0
    assert "tokens: shape=[None, 20] dtype=int32" in out
    assert "LSTM" in out
    for name in ("saved-model", "tflite", "onnx"):
        assert f"  {name}" in out


def test_inspect_lists_every_unsupported_op(capsys):
    code, out, _ = run(capsys, "inspect", Path(__file__).parent / "data" / "erfinv_model.keras",
                       "--custom-objects", Path(__file__).parent / "data" / "custom_layers.py")
    assert code == 0
    onnx_line = next(ln for ln in out.splitlines() if ln.strip().startswith("onnx"))
    assert "Erfinv" in onnx_line


def test_doctor_reports_runtimes(capsys):
    code, out, _ = run(capsys, "doctor")
    assert code == 0
    for name in ("keras", "litert", "onnxruntime", "tf-saved-model"):
        assert name in out


def test_no_command_is_usage_error(capsys):
    assert run(capsys)[0] == 2


def test_bad_flag_is_one_line_usage_error(capsys):
    code, _, err = run(capsys, "tflite", SAMPLE_MODELS["wine_mlp"], "--frobnicate")
    assert code == 2
    assert_one_line_error(err, "--frobnicate")


def test_model_loaded_and_traced_once_for_several_targets(capsys, tmp_path, monkeypatch):
    import kexport.context as context
    import kexport.loader as loader

    calls = {"load": 0, "trace": 0}
    real_load, real_trace = loader.load_model, context._trace

    def counting_load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def counting_trace(*a, **k):
        calls["trace"] += 1
        return real_trace(*a, **k)

    monkeypatch.setattr(loader, "load_model", counting_load)
    monkeypatch.setattr(context, "_trace", counting_trace)
    import kexport

    result = kexport.export(str(SAMPLE_MODELS["iris_keras2"]), ["saved-model", "tflite", "onnx"], tmp_path)
    assert result.exit_code == 0
    assert calls == {"load": 1, "trace": 1}  # no rewrite fires on this model: one trace serves all
    assert set(result.seconds) >= {"load_model", "keras_reference", "total"}
    assert all(t.seconds is not None for t in result.targets)


def test_user_inputs_are_the_reference(capsys, tmp_path):
    import numpy as np

    data = tmp_path / "mine.npz"
    x = np.random.default_rng(5).normal(5.0, 1.0, size=(6, 4)).astype(np.float32)
    np.savez(data, measurements=x)
    out = tmp_path / "out"
    code, _, err = run(capsys, "onnx", SAMPLE_MODELS["iris_keras2"], "-o", out, "--inputs", data)
    assert code == 0, err
    with np.load(out / "reference" / "inputs.npz") as z:
        np.testing.assert_array_equal(z["measurements"], x)
    np.savez(data, wrong_name=x)
    code, _, err = run(capsys, "onnx", SAMPLE_MODELS["iris_keras2"], "-o", out, "--inputs", data)
    assert code == 2
    assert_one_line_error(err, "mine.npz", "measurements")


def test_relative_output_directory(capsys, tmp_path, monkeypatch):
    """Runtimes in other processes (Node, gunicorn, the LiteRT worker) get absolute paths."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "tfjs", SAMPLE_MODELS["iris_keras2"], "-o", "rel-out", "--json")
    assert code == 0, out + err
    row = json.loads(out)["targets"][0]
    assert {p["runtime"] for p in row["parity"] if p["status"] == "passed"} >= {"tfjs-node-cpu"}, row["parity"]
    assert (tmp_path / "rel-out" / row["artifact"]).exists()


def test_all_with_targets_and_skip(capsys, tmp_path):
    """`kexport all --targets` exports just those (rows and folders), `--skip` every target but
    those; an unknown name or both flags together is a one-line usage error, nothing written."""
    model = SAMPLE_MODELS["wine_mlp"]
    code, _, err = run(capsys, "all", model, "-o", tmp_path / "a", "--targets", "onnx,kserve", "--json")
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert sorted({r["target"] for r in report["targets"]}) == ["kserve", "onnx"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir() and p.name != "reference") == ["kserve", "onnx"]

    from kexport import cli
    from kexport.targets import all_targets

    for argv, want in ((["--skip", "dl4j,spark"], [n for n in all_targets() if n not in ("dl4j", "spark")]),
                       (["--targets", "tflite,onnx,tflite"], ["tflite", "onnx"])):
        assert cli._chosen(cli.build_parser().parse_args(["all", str(model), *argv])) == want
    for argv, needle in ((["--targets", "onnx,nope"], "unknown target nope"),
                         (["--targets", "onnx", "--skip", "dl4j"], "--targets and --skip"),
                         (["--skip", ",".join(all_targets())], "leaves no target")):
        code, _, err = run(capsys, "all", model, "-o", tmp_path / "bad", *argv)
        assert code == 2
        assert_one_line_error(err, needle)
        assert not (tmp_path / "bad").exists()
