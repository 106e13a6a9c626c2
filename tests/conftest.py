"""Shared, session-scoped fixtures: each sample model is exported to every registered target
once per test session, and every test that needs an artifact reads from that export."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent

SAMPLES = ROOT / "sample_models"
# name -> file; every one of these goes through the whole parity matrix.
SAMPLE_MODELS = {
    "digits_cnn": SAMPLES / "digits_cnn.keras",
    "digits_cnn_h5": SAMPLES / "digits_cnn.h5",
    "wine_mlp": SAMPLES / "wine_mlp.keras",
    "token_lstm": SAMPLES / "token_lstm.keras",
    "two_in_two_out": SAMPLES / "two_in_two_out.keras",
    "iris_keras2": SAMPLES / "iris_keras2.h5",
}
# `make test-fast`: the edit-run loop on two small models (one multi-IO).
FAST = os.environ.get("KEXPORT_FAST") == "1"
if FAST:
    SAMPLE_MODELS = {k: SAMPLE_MODELS[k] for k in ("wine_mlp", "two_in_two_out")}
# `make test-onednn`: the matrix for the targets whose converters see TensorFlow's graph rewrites.
TEST_TARGETS = [t for t in os.environ.get("KEXPORT_TEST_TARGETS", "all").split(",") if t]


class _ExportCache:
    def __init__(self, root: Path):
        self.root = root
        self._done = {}

    def __call__(self, model_name: str):
        """(ExportResult, out_dir) of `kexport all` on one sample model, computed once."""
        if model_name not in self._done:
            import kexport

            out = self.root / model_name
            result = kexport.export(str(SAMPLE_MODELS[model_name]), TEST_TARGETS, out)
            self._done[model_name] = (result, out)
        return self._done[model_name]


def pytest_collection_modifyitems(config, items):
    if FAST:  # the browser and keras.applications stay in `make test`
        skip = pytest.mark.skip(reason="make test-fast: runs in make test")
        for item in items:
            if "tfjs-chromium" in item.nodeid or item.get_closest_marker("slow"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_export(tmp_path_factory):
    return _ExportCache(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def digits_ctx():
    """The digits model loaded once, with its reference data, for tests that need a context."""
    from kexport.api import build_context
    from kexport.options import ExportOptions

    return build_context(SAMPLE_MODELS["digits_cnn"], ExportOptions())


@contextlib.contextmanager
def app_modules(dest: Path, signature):
    """(codec, v2, input Specs) of a generated Flask app in `dest`, imported from its files (and
    taken out of sys.modules/sys.path again afterwards)."""
    sys.path.insert(0, str(dest))
    try:
        mods = {}
        for name in ("codec", "v2"):
            loaded = importlib.util.spec_from_file_location(name, dest / f"{name}.py")
            mods[name] = importlib.util.module_from_spec(loaded)
            sys.modules[name] = mods[name]
            loaded.loader.exec_module(mods[name])
        yield mods["codec"], mods["v2"], [mods["codec"].Spec(t.to_json()) for t in signature.inputs]
    finally:
        sys.path.remove(str(dest))
        for name in ("codec", "v2"):
            sys.modules.pop(name, None)
