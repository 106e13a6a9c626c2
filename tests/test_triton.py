"""Target `triton`: a model repository whose config.pbtxt Triton's own protobuf parses strictly,
whose IO equals the Keras model's, and whose model runs with the config's IO (triton-config);
the server itself is a skipped row with its reason. Every check is shown to fail when broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
import kexport
from recheck import recheck
from kexport.cli import main
from kexport.options import ExportOptions
from kexport.targets.triton import TritonOptions

pytest.importorskip("tritonclient")


def _export(model: str, out: Path, **opts):
    options = ExportOptions(target_options={"triton": TritonOptions(**opts)})
    return kexport.export(str(SAMPLE_MODELS[model]), ["triton"], out, options=options)


def _config(model_dir: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def _rows(result):
    return {p.runtime: p for t in result.targets for p in t.parity}


def _recheck(out: Path) -> dict:
    """The parity rows of the (edited) repository, from the engine `kexport verify` uses (verify
    itself refuses an artifact whose sha256 changed, before any runtime sees it)."""
    return recheck(out, "triton")


@pytest.fixture(scope="module")
def two_io(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "out"
    return _export("two_in_two_out", out, max_batch_size=16, instances=2), out


def test_onnx_repository_config_matches_keras(two_io):
    from tritonclient.grpc import model_config_pb2 as mc

    result, out = two_io
    assert result.ok, result.failures()
    rows = _rows(result)
    assert rows["triton-config"].status == "passed" and rows["triton-config"].max_abs_err < 1e-4
    assert rows["tritonserver"].status == "skipped"
    assert "cannot be installed here" in rows["tritonserver"].reason
    model_dir = out / "triton" / "two_in_two_out"
    assert (model_dir / "1" / "model.onnx").is_file()
    cfg = _config(model_dir)
    assert cfg.name == "two_in_two_out" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    sig = kexport.api.build_context(SAMPLE_MODELS["two_in_two_out"], ExportOptions(samples=2)).signature
    for specs, ios in ((sig.inputs, cfg.input), (sig.outputs, cfg.output)):
        assert [i.name for i in ios] == [t.name for t in specs]
        for t, io in zip(specs, ios):
            assert list(io.dims) == [d for d in t.shape[1:]], t.name  # batch dimension -> max_batch_size
            assert mc.DataType.Name(io.data_type) == {"float32": "TYPE_FP32", "int32": "TYPE_INT32"}[t.dtype]
    assert cfg.HasField("dynamic_batching")
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(2, "KIND_CPU")]
    assert [w.batch_size for w in cfg.model_warmup] == [1, 16]
    ref = np.load(out / "reference" / "inputs.npz")
    for i, t in enumerate(sig.inputs):  # warmup sample = the first reference row, raw row-major
        raw = (model_dir / "warmup" / cfg.model_warmup[0].inputs[t.name].input_data_file).read_bytes()
        assert raw == np.ascontiguousarray(ref[t.name][:1].astype(t.dtype)).tobytes()


@pytest.mark.parametrize("mutation,needle", [
    (lambda t: t.replace("max_batch_size: 16", "max_batch_size: 16\nmax_batch_sise: 4"), "does not parse"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FLOAT32", 1), "does not parse"),
    (lambda t: t.replace('name: "meta"', 'name: "meta_renamed"', 1), "inputs"),
    (lambda t: t.replace("dims: 4", "dims: 5", 1), "dims"),
    (lambda t: t.replace('name: "two_in_two_out"', 'name: "other"', 1), "directory"),
])
def test_broken_config_is_caught(two_io, tmp_path, mutation, needle):
    _, out = two_io
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    cfg = copy / "triton" / "two_in_two_out" / "config.pbtxt"
    text = cfg.read_text()
    broken = mutation(text)
    assert broken != text, "the mutation did not apply: the test would prove nothing"
    cfg.write_text(broken)
    assert _recheck(out)["triton-config"].status == "passed"  # the untouched original still passes
    row = _recheck(copy)["triton-config"]
    assert row.status == "failed" and needle in row.reason, row.reason


def test_broken_warmup_is_caught(two_io, tmp_path):
    _, out = two_io
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    f = next((copy / "triton" / "two_in_two_out" / "warmup").iterdir())
    f.write_bytes(f.read_bytes()[:-4])
    row = _recheck(copy)["triton-config"]
    assert row.status == "failed" and "bytes" in row.reason, row.reason


def test_savedmodel_flavour(tmp_path):
    out = tmp_path / "out"
    result = _export("digits_cnn", out, platform="tensorflow_savedmodel", name="digits")
    assert result.ok, result.failures()
    model_dir = out / "triton" / "digits"
    assert (model_dir / "1" / "model.savedmodel" / "saved_model.pb").is_file()
    cfg = _config(model_dir)
    assert cfg.platform == "tensorflow_savedmodel" and [i.name for i in cfg.input] == ["pixels"]
    assert _rows(result)["triton-config"].status == "passed"


def test_config_names_are_escaped_by_protobuf():
    """A hostile name (quotes, newline, braces) is written as one escaped protobuf string."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from kexport.targets.triton.config import ConfigSpec, IOSpec, build_config, to_text

    evil = 'x" } input { name: "y\n'
    io = [IOSpec(evil, "float32", (-1, 3))]
    text = to_text(build_config(ConfigSpec("m", "onnxruntime_onnx", 4, 1, 0), io, io, []))
    cfg = text_format.Parse(text, mc.ModelConfig())
    assert [i.name for i in cfg.input] == [evil] and len(cfg.output) == 1


def test_default_name_from_a_hostile_file_name_is_sanitized(tmp_path):
    from kexport.targets.triton.config import check_model_name, safe_model_name

    assert safe_model_name('evil"name; rm -rf') == "evil_name__rm_-rf"
    assert safe_model_name("../..") == "_.."  # never a path outside the repository
    assert check_model_name(safe_model_name("../..")) is None
    for bad in ("..", "a/b", 'q"', "-x", ""):
        assert check_model_name(bad), bad


def test_bad_flags_exit_2_with_one_line(capsys, tmp_path):
    for argv in (["--name", "a/b"], ["--max-batch-size", "0"], ["--version", "0"]):
        code = main(["triton", str(SAMPLE_MODELS["wine_mlp"]), "-o", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.startswith("kexport: ")]) == 1
