"""An export directory stays consistent (issue 11, items 6, 9, 10): rows of separate runs merge,
a failed or foreign run never damages a good export, and `verify` trusts nothing it can check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import kexport
from conftest import SAMPLE_MODELS
from kexport.cli import main

WINE = str(SAMPLE_MODELS["wine_mlp"])


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """onnx, then tflite, exported by two runs into one directory."""
    out = tmp_path_factory.mktemp("good") / "out"
    assert kexport.export(WINE, ["onnx"], out).ok
    assert kexport.export(WINE, ["tflite"], out).ok
    return out


def _copy(good, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(good, dest)
    return dest


def test_single_target_runs_merge_rows(good):
    report = json.loads((good / "report.json").read_text())
    assert sorted(t["target"] for t in report["targets"]) == ["onnx", "tflite"]
    assert all(len(t["sha256"]) == 64 for t in report["targets"])
    assert set(report["reference"]) >= {"inputs.npz", "outputs.npz"}
    assert main(["verify", str(good)]) == 0


def test_another_models_export_is_refused_and_nothing_changes(good, tmp_path, capsys):
    out = _copy(good, tmp_path)
    before = _snapshot(out)
    assert main(["onnx", str(SAMPLE_MODELS["iris_keras2"]), "-o", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kexport")]  # besides progress
    assert len(err) == 1 and "holds the export of another model" in err[0], err
    assert _snapshot(out) == before
    assert main(["verify", str(out)]) == 0


def test_a_failed_conversion_keeps_the_good_artifact_and_its_report(good, tmp_path, monkeypatch):
    from kexport.errors import ConversionError
    from kexport.targets import get_target

    out = _copy(good, tmp_path)
    onnx_before = {k: v for k, v in _snapshot(out).items() if k.startswith("onnx/")}

    def broken(self, ctx, dest, options, variant):  # the converter failing on this machine
        raise ConversionError("target 'onnx': tf2onnx failed: simulated")

    monkeypatch.setattr(type(get_target("onnx")), "export", broken)
    result = kexport.export(WINE, ["onnx"], out)
    assert not result.ok
    assert {k: v for k, v in _snapshot(out).items() if k.startswith("onnx/")} == onnx_before
    report = json.loads((out / "report.json").read_text())
    onnx = next(t for t in report["targets"] if t["target"] == "onnx")
    assert onnx["status"] == "ok" and onnx["last_attempt"]["status"] == "failed"
    assert any(t["target"] == "tflite" for t in report["targets"])
    monkeypatch.undo()
    assert main(["verify", str(out)]) == 0


def test_missing_model_creates_no_output_directory(tmp_path):
    out = tmp_path / "never"
    assert main(["onnx", str(tmp_path / "missing.keras"), "-o", str(out)]) == 2
    assert not out.exists()


def _tamper(out: Path, **row_changes) -> None:
    path = out / "report.json"
    report = json.loads(path.read_text())
    for t in report["targets"]:
        if t["target"] == "tflite":
            t.update(row_changes)
            for p in t["parity"]:
                p.update(atol=1e9, rtol=1e9)
    path.write_text(json.dumps(report))


def test_verify_catches_a_swapped_artifact_despite_a_loose_report(good, tmp_path, capsys):
    out = _copy(good, tmp_path)
    other = tmp_path / "other"
    assert kexport.export(str(SAMPLE_MODELS["iris_keras2"]), ["tflite"], other).ok
    tfl = next(out.rglob("*.tflite"))
    shutil.copyfile(next(other.rglob("*.tflite")), tfl)
    _tamper(out, size_bytes=1)
    assert main(["verify", str(out)]) == 1
    assert "artifact changed since the export" in capsys.readouterr().out


def test_verify_refuses_paths_outside_the_export(good, tmp_path, capsys):
    out = _copy(good, tmp_path)
    (tmp_path / "elsewhere.tflite").write_bytes(next(out.rglob("*.tflite")).read_bytes())
    _tamper(out, artifact="../elsewhere.tflite")
    assert main(["verify", str(out)]) == 1
    assert "leaves the export directory" in capsys.readouterr().out


def test_verify_reruns_rows_relabelled_skipped_and_reads_sizes_from_disk(good, tmp_path):
    out = _copy(good, tmp_path)
    path = out / "report.json"
    report = json.loads(path.read_text())
    for t in report["targets"]:
        t["size_bytes"] = 1
        for p in t["parity"]:
            p["status"], p["reason"] = "skipped", "relabelled"
    path.write_text(json.dumps(report))
    result = kexport.verify(out)
    for t in result.targets:
        assert t.size_bytes == sum(f.stat().st_size for f in (out / t.artifact).parent.rglob("*") if f.is_file()) \
            or t.size_bytes == (out / t.artifact).stat().st_size
        assert any(p.status == "passed" for p in t.parity), t.parity


def test_verify_catches_changed_reference_data(good, tmp_path):
    import numpy as np

    out = _copy(good, tmp_path)
    ref = out / "reference" / "outputs.npz"
    with np.load(ref) as z:
        data = {k: z[k] + 1.0 for k in z.files}
    np.savez(ref, **data)
    assert main(["verify", str(out)]) == 1
