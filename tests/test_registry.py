"""Registries: every target/runtime module is registered, names are unique, `runtimes` imports
without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kexport.targets import all_targets
from kexport.targets.base import Target, register_target
from kexport.runtimes import all_runtimes
from kexport.runtimes.base import Runtime, register_runtime

ROOT = Path(__file__).resolve().parent.parent


def test_every_target_module_is_registered():
    """A module or package in exporter/targets/ that registers nothing fell out of the registry."""
    folder = ROOT / "exporter" / "targets"
    modules = ({p.stem for p in folder.glob("*.py")} | {p.parent.name for p in folder.glob("*/__init__.py")}) - {"__init__", "base"}
    registered = {type(t).__module__.split(".")[2] for t in all_targets().values()}
    assert modules <= registered, f"target modules never registered: {sorted(modules - registered)}"


def test_every_runtime_named_by_a_target_exists():
    runtimes = all_runtimes()
    for name, target in all_targets().items():
        for rt in target.runtimes:
            assert rt in runtimes, f"target {name} names unknown runtime {rt}"


def test_every_runtime_verifies_some_target():
    used = {rt for t in all_targets().values() for rt in t.runtimes}
    assert set(all_runtimes()) <= used, f"runtimes no target uses: {set(all_runtimes()) - used}"


def test_duplicate_target_refused():
    name = next(iter(all_targets()))

    with pytest.raises(ValueError, match="registered twice"):
        register_target(type("Dup2", (Target,), {"name": name}))


def test_duplicate_runtime_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register_runtime(type("DupRt", (Runtime,), {"name": "onnxruntime"}))


def test_options_are_frozen_dataclasses():
    import dataclasses

    for name, target in all_targets().items():
        opts = target.Options()
        assert dataclasses.is_dataclass(opts), name
        assert type(opts).__dataclass_params__.frozen, f"{name}.Options must be frozen"


def test_runtimes_import_without_tensorflow():
    """Generated servers import `runtimes`; TensorFlow must not be needed (blocked here)."""
    code = textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'coremltools', 'tf2onnx', 'tensorflowjs'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import kexport.runtimes as runtimes
        names = sorted(runtimes.all_runtimes())
        assert 'onnxruntime' in names and 'litert' in names, names
        print('ok', len(names))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")
