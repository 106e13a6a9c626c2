"""`--class-labels LABELS.txt`: one reader for every target that names classes (coreml's
ClassifierConfig, the TF-Serving classify signature, the Flask server's labelled outputs).

A labels file is UTF-8 text, one non-empty label per line (trailing blank lines ignored). It fits
an output of shape (batch, classes) with as many classes as labels.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def read_labels(path) -> list[str]:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read --class-labels ({e}); pass a UTF-8 text file with one label per line") from e
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not all(lines):
        raise UsageError(f"{path}: --class-labels needs one non-empty label per line ({len(lines)} lines, "
                         f"{lines.count('')} empty)")
    return lines


def fitting_outputs(signature, labels: list[str], path) -> list[str]:
    """Every output of shape (batch, len(labels)); at least one, else a UsageError naming the shapes."""
    fits = [t.name for t in signature.outputs if len(t.shape) == 2 and t.shape[1] == len(labels)]
    if not fits:
        shapes = {t.name: list(t.shape) for t in signature.outputs}
        raise UsageError(f"{path}: {len(labels)} labels fit no classifier output {shapes}; "
                         "give one line per class of the output's last dimension")
    return fits


def classifier_output(signature, labels: list[str], path, target: str, name: str | None = None) -> str:
    """The one output the labels name: `name` (--classifier-output) when given, else the only
    output of shape (batch, len(labels))."""
    if name is not None:
        outputs = {t.name: t for t in signature.outputs}
        if name not in outputs:
            raise UsageError(f"target '{target}': --classifier-output {name!r} is not an output (outputs: {sorted(outputs)})")
        if name not in fitting_outputs(signature, labels, path):
            raise UsageError(f"{path}: {len(labels)} labels for output '{name}' of shape {list(outputs[name].shape)}; "
                             "give one line per class")
        return name
    fits = fitting_outputs(signature, labels, path)
    if len(fits) > 1:
        raise UsageError(f"target '{target}': --class-labels fits several outputs {fits}; pass --classifier-output NAME")
    return fits[0]
