"""The overlapped run loop (api.run_targets): target i+1 converts in a worker thread while target
i is verified. Same report as the sequential loop; a runtime failing or a conversion failing
while the other thread works still gives a failed row, and nothing unverified is moved into place.

Real runtimes only: the failures come from a broken artifact (LiteRT refuses it) and a converter
that raises, never from a fake runtime."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import kexport
from kexport import api
from kexport.errors import ConversionError, UsageError
from kexport.options import ExportOptions
from kexport.targets import get_target

from conftest import SAMPLE_MODELS

TARGETS = ["tflite", "onnx"]
VOLATILE = {"seconds", "timestamp", "created", "out_dir"}  # wall times differ between any two runs


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _diff(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _diff(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def _export(out, lines=None):
    return kexport.export(str(SAMPLE_MODELS["wine_mlp"]), TARGETS, out, options=ExportOptions(),
                          progress=(lines.append if lines is not None else None))


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(report, progress lines) of the overlapped loop and of the sequential one."""
    runs = {}
    for mode in ("overlapped", "sequential"):
        out = tmp_path_factory.mktemp(mode)
        lines: list[str] = []
        mp = pytest.MonkeyPatch()
        if mode == "sequential":
            mp.setattr(api, "overlapped", lambda options, targets: False)
        try:
            _export(out, lines)
        finally:
            mp.undo()
        runs[mode] = (json.loads((out / "report.json").read_text()), lines, out)
    return runs


def test_the_default_loop_is_overlapped():
    assert api.overlapped(ExportOptions(), TARGETS)
    assert not api.overlapped(ExportOptions(benchmark=True), TARGETS)  # timed calls beside a conversion: no
    assert not api.overlapped(ExportOptions(quantize="int8"), TARGETS)  # variant latency is timed too
    assert not api.overlapped(ExportOptions(verify=False), TARGETS)


def test_overlapped_report_equals_sequential(both):
    (rep_o, lines_o, out_o), (rep_s, lines_s, _) = both["overlapped"], both["sequential"]
    assert [t["target"] for t in rep_o["targets"]] == TARGETS
    assert all(t["status"] == "ok" for t in rep_o["targets"]), rep_o["targets"]
    a, b = _strip(rep_o), _strip(rep_s)
    for rep in (a, b):  # tf2onnx names nodes from a process-wide counter: a second ONNX conversion in one
        for t in rep["targets"]:  # process differs by a few bytes even when both run sequentially
            if t["target"] == "onnx":
                t.pop("sha256"), t.pop("size_bytes")
    assert a == b, [(k, x, y) for k, x, y in _diff(a, b)][:5]
    # the progress reads as in the sequential loop: each target's conversion lines under its heading
    numbers = lambda ls: [re.sub(r"[0-9][0-9.]*", "N", ln) for ln in ls]  # times; ONNX sizes (above)  # noqa: E731
    assert numbers(lines_o) == numbers(lines_s)
    assert not list(out_o.glob(".kexport-*")), "a temp dir was left behind"


def test_failures_while_the_other_thread_works(both, tmp_path, monkeypatch):
    """tflite's artifact is truncated after conversion: LiteRT refuses it during the overlapped
    verification (onnx converts meanwhile) -> failed row. onnx's converter raises -> failed row,
    and the earlier good onnx export stays in place untouched."""
    _, _, good = both["overlapped"]
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before = json.loads((out / "report.json").read_text())
    onnx_sha = next(t["sha256"] for t in before["targets"] if t["target"] == "onnx")

    tflite, onnx = get_target("tflite"), get_target("onnx")
    real_export = tflite.export

    def truncated(ctx, dest, options, variant):
        art = real_export(ctx, dest, options, variant)
        data = art.path.read_bytes()
        art.path.write_bytes(data[: len(data) // 3])
        return art

    def broken(ctx, dest, options, variant):
        raise ConversionError("target 'onnx': converter failed (test)")

    monkeypatch.setattr(tflite, "export", truncated)
    monkeypatch.setattr(onnx, "export", broken)
    assert api.overlapped(ExportOptions(), TARGETS)
    result = _export(out)
    rows = {r.target: r for r in result.targets}
    assert not result.ok and result.exit_code == 1
    litert = next(p for p in rows["tflite"].parity if p.runtime == "litert")
    assert litert.status == "failed" and "could not run the artifact" in litert.reason, litert
    assert not rows["tflite"].passed
    assert rows["onnx"].status == "failed" and rows["onnx"].artifact is None
    report = json.loads((out / "report.json").read_text())
    kept = next(t for t in report["targets"] if t["target"] == "onnx")
    assert kept["sha256"] == onnx_sha and kept["last_attempt"]["status"] == "failed"
    from kexport.digest import tree_sha256

    assert tree_sha256(out / kept["artifact"]) == onnx_sha  # the good artifact was not replaced
    assert not list(out.glob(".kexport-*")), "a temp dir was left behind"


def test_usage_error_in_the_worker_stops_the_run_cleanly(tmp_path, monkeypatch):
    """onnx's preflight (in the converter thread, while tflite is verified) raises UsageError:
    export raises it like the sequential loop would, and leaves no temp dir behind."""
    onnx = get_target("onnx")

    def refuse(ctx, options):
        raise UsageError("onnx: bad flag (test)")

    monkeypatch.setattr(onnx, "preflight", refuse)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="bad flag"):
        _export(out)
    assert not list(out.glob(".kexport-*")), "a temp dir was left behind"
    assert not (out / "onnx").exists() and not (out / "report.json").exists()


def test_thread_bound_runtimes_are_checked_on_the_calling_thread(tmp_path, monkeypatch):
    """Playwright's browser (tfjs-chromium) works only on the thread that launched it: a
    `thread_bound` runtime is checked on the thread that called export(), every other one in the
    verifier pool. Shown on LiteRT marked thread-bound (a real runtime, a real check)."""
    import threading

    from kexport import parity
    from kexport.runtimes import get_runtime

    assert get_runtime("tfjs-chromium").thread_bound
    monkeypatch.setattr(get_runtime("litert"), "thread_bound", True, raising=False)
    seen = {}
    real = parity.check_artifact

    def spy(artifact, names, *args, **kw):
        for n in names:
            seen[n] = threading.current_thread().name
        return real(artifact, names, *args, **kw)

    monkeypatch.setattr(parity, "check_artifact", spy)
    result = _export(tmp_path / "out")
    assert result.ok, result.failures()
    assert seen["litert"] == threading.current_thread().name
    assert all(seen[n].startswith("kexport-verify") for n in ("litert-arm64", "onnxruntime", "onnxruntime-java")), seen


def test_one_onnx_conversion_serves_every_target_that_ships_it(sample_export):
    """flask, triton and spark ship model.onnx: converted once per run and copied, so every copy
    is the byte-for-byte file the onnx target's runtimes verified (tf2onnx alone gives other
    bytes on each call)."""
    import hashlib

    result, out = sample_export("wine_mlp")
    shipped = {t.target for t in result.targets if t.status == "ok"} & {"onnx", "flask", "triton", "spark"}
    if {"onnx", "flask", "triton", "spark"} - shipped:
        pytest.skip(f"not all ONNX-shipping targets exported here: {sorted(shipped)}")
    files = sorted(out.glob("*/**/model.onnx")) + [out / "onnx" / "model.onnx"]
    digests = {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert {k.split("/")[0] for k in digests} == {"onnx", "flask", "triton", "spark"}, digests
    assert len(set(digests.values())) == 1, digests
