"""The wheel installs one import namespace, `kexport`, with every source folder and its non-Python
files; the generic names of the repository folders (exporter, runtimes, templates: names of
unrelated PyPI distributions) are never installed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"exporter": "kexport", "runtimes": "kexport/runtimes", "templates": "kexport/templates"}
SKIP_PARTS = {"node_modules", "__pycache__", "target"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return next(out.glob("kexport-*.whl"))


def _expected_files() -> set[str]:
    out = set()
    for folder, installed in FOLDERS.items():
        for p in (ROOT / folder).rglob("*"):
            rel = p.relative_to(ROOT / folder)
            if p.is_file() and not SKIP_PARTS & set(rel.parts) and p.suffix not in {".pyc", ".class", ".jar"}:
                out.add(f"{installed}/{rel}")
    return out


def test_wheel_has_one_namespace_and_every_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"kexport"}, f"top-level names installed: {sorted(tops)}"
    missing = sorted(_expected_files() - names)
    assert not missing, f"files left out of the wheel: {missing}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kexport = kexport.cli:run" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_installs_into_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with zipfile.ZipFile(wheel) as z:  # a wheel is installed by unpacking it into site-packages
        z.extractall(site)
    probe = ("import importlib.util, kexport, kexport.runtimes, kexport.templates, kexport.targets.tfjs\n"
             "print(kexport.__version__)\n"
             "print([m for m in ('exporter', 'runtimes', 'templates') if importlib.util.find_spec(m)])\n")
    # numpy/jinja2 are the only hard dependencies: borrow them from this venv, nothing else
    env = {"PYTHONPATH": str(Path(__import__("numpy").__file__).parent.parent), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    version, leaked = res.stdout.strip().splitlines()
    assert version == __import__("kexport").__version__
    assert leaked == "[]", f"generic top-level names importable after install: {leaked}"
