"""report.json matches docs/report.md: the documented example has the required schema, and every
field a real report carries is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
REQUIRED_TOP = {"kexport_version", "model", "targets"}
REQUIRED_MODEL = {"path", "sha256", "inputs", "outputs"}
REQUIRED_ROW = {"target", "variant", "status", "artifact", "size_bytes", "seconds", "error", "parity"}
REQUIRED_PARITY = {"runtime", "status", "max_abs_err", "max_rel_err", "atol", "rtol", "top1_agreement", "reason"}


def _example():
    block = re.search(r"```json\n(.*?)\n```", DOC, re.S).group(1)
    return json.loads(block)


def _check_schema(report):
    assert REQUIRED_TOP <= set(report)
    assert REQUIRED_MODEL <= set(report["model"])
    for spec in report["model"]["inputs"] + report["model"]["outputs"]:
        assert {"name", "shape", "dtype"} <= set(spec)
    for row in report["targets"]:
        assert REQUIRED_ROW <= set(row), row["target"]
        assert row["status"] in ("ok", "unverified", "failed", "unsupported")
        for p in row["parity"]:
            assert REQUIRED_PARITY <= set(p)
            assert p["status"] in ("passed", "failed", "skipped", "uninformative")


def test_documented_example_has_the_schema():
    _check_schema(_example())


def test_real_report_has_the_schema_and_every_field_is_documented(sample_export):
    _, out = sample_export("digits_cnn")
    report = json.loads((out / "report.json").read_text())
    _check_schema(report)
    documented = set(re.findall(r"`([a-z0-9_]+)`", DOC))
    fields = set(report)
    for row in report["targets"]:
        fields |= set(row)
        for p in row["parity"]:
            fields |= set(p)
    undocumented = sorted(f for f in fields if f not in documented)
    assert not undocumented, f"report fields missing from docs/report.md: {undocumented}"


def test_example_targets_match_the_registry():
    from kexport.targets import all_targets

    assert {r["target"] for r in _example()["targets"]} == set(all_targets())
