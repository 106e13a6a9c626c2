"""--class-labels: one reader for coreml, tf-serving and the Flask server (exporter/labels.py)."""

from __future__ import annotations

import pytest

from kexport.errors import UsageError
from kexport.labels import classifier_output, fitting_outputs, read_labels
from kexport.signature import ModelSignature, TensorSpec

SIG = ModelSignature(inputs=(TensorSpec("x", (None, 4), "float32"),),
                     outputs=(TensorSpec("probs", (None, 3), "float32"), TensorSpec("aux", (None, 3), "float32"),
                              TensorSpec("score", (None, 1), "float32")))


def _file(tmp_path, text, data=None):
    p = tmp_path / "labels.txt"
    p.write_bytes(data if data is not None else text.encode())
    return p


def test_one_label_a_line_trailing_blank_lines_ignored(tmp_path):
    assert read_labels(_file(tmp_path, " cat \ndog\nbird\n\n\n")) == ["cat", "dog", "bird"]


@pytest.mark.parametrize("text,data,words", [
    ("cat\n\ndog\n", None, "non-empty"),
    ("", None, "non-empty"),
    (None, b"\xff\xfe\x00bad", "UTF-8"),
])
def test_bad_files_are_one_line_usage_errors(tmp_path, text, data, words):
    with pytest.raises(UsageError, match=words):
        read_labels(_file(tmp_path, text or "", data))
    with pytest.raises(UsageError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")


def test_outputs_are_chosen_by_class_count(tmp_path):
    path = _file(tmp_path, "a\nb\nc\n")
    assert fitting_outputs(SIG, ["a", "b", "c"], path) == ["probs", "aux"]
    with pytest.raises(UsageError, match="fits several outputs"):
        classifier_output(SIG, ["a", "b", "c"], path, "coreml")
    assert classifier_output(SIG, ["a", "b", "c"], path, "coreml", "aux") == "aux"
    with pytest.raises(UsageError, match="is not an output"):
        classifier_output(SIG, ["a", "b", "c"], path, "coreml", "nope")
    with pytest.raises(UsageError, match="2 labels fit no classifier output"):
        classifier_output(SIG, ["a", "b"], path, "coreml")
    with pytest.raises(UsageError, match="labels for output 'score'"):
        classifier_output(SIG, ["a", "b", "c"], path, "coreml", "score")
