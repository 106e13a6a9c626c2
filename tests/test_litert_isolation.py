"""LiteRT is verified without TensorFlow in the process, as on a phone.

With TensorFlow imported, ai_edge_litert silently gains TensorFlow's Flex delegate, so a
`.tflite` that needs TF ops "runs"; alone it cannot. The parity row must say `skipped` with the
reason, never `passed`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kexport
from kexport.options import ExportOptions
from kexport.targets.tflite import TFLiteOptions
from kexport.runtimes.isolated import IsolatedSession

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def flex_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("flex")
    opts = ExportOptions(custom_objects=str(DATA / "custom_layers.py"),
                         target_options={"tflite": TFLiteOptions(allow_tf_ops=True)})
    return kexport.export(str(DATA / "cumprod_model.keras"), ["tflite"], out, options=opts), out


def test_worker_has_no_tensorflow(sample_export):
    result, out = sample_export("digits_cnn")
    row = next(r for r in result.targets if r.target == "tflite" and r.variant == "fp32")
    session = IsolatedSession("litert", str(out / row.artifact))
    try:
        assert session.tensorflow_loaded is False
        x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
        y = session.predict({"pixels": x})
        assert set(y) == {"digit"} and y["digit"].shape == (3, 10)
    finally:
        session.close()


def test_flex_model_is_skipped_not_passed(flex_export):
    result, _ = flex_export
    row = result.targets[0]
    assert any("Cumprod" in n for n in row.notes)
    p = next(p for p in row.parity if p.runtime == "litert")
    assert p.status == "skipped" and "Flex delegate" in p.reason
    # no runtime here could check it (a phone's LiteRT has no Flex): unverified, never ok
    assert all(q.status == "skipped" for q in row.parity) and row.status == "unverified"


def test_flex_model_fails_without_tensorflow_but_runs_with_it(flex_export):
    """The trap the isolation avoids: same file, same interpreter, different answer."""
    result, out = flex_export
    path = str(out / result.targets[0].artifact)
    with pytest.raises(RuntimeError, match="(?i)flex|custom op|unresolved"):
        IsolatedSession("litert", path)
    import tensorflow  # noqa: F401  (what the parent process has)
    from kexport.runtimes.litert import LiteRTSession

    got = LiteRTSession(path).predict({"x": np.ones((2, 4), np.float32)})
    assert got["probs"].shape == (2, 3)
