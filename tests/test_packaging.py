"""The wheel carries the packages, the templates and the runtimes (incl. non-Python files)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates_and_runtimes(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    wheel = next(tmp_path.glob("kexport-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("exporter", "exporter/targets", "runtimes", "templates"):
        assert any(n.startswith(pkg + "/") for n in names), f"{pkg} missing from the wheel"
    expected = {str(p.relative_to(ROOT)) for d in ("templates", "runtimes") for p in (ROOT / d).rglob("*")
                if p.is_file() and "node_modules" not in p.parts and "__pycache__" not in p.parts}
    missing = sorted(expected - names)
    assert not missing, f"files left out of the wheel: {missing}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kexport = exporter.cli:run" in zipfile.ZipFile(wheel).read(entry).decode()
