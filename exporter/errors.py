"""One small error hierarchy. Every error carries the exit code the CLI uses for it.

Exit codes (documented in README.md):
    0  every requested target converted and passed parity
    1  a target failed conversion or parity (artifacts that converted are still written)
    2  bad usage or an unreadable / refused model
"""

from __future__ import annotations


class KexportError(Exception):
    """Base class; the message is one line that names the file, layer/op, target and fix."""

    exit_code = 1


class UsageError(KexportError):
    """Bad flags, unknown target, unwritable output directory."""

    exit_code = 2


class ModelLoadError(KexportError):
    """The model file is missing, unreadable, or refused by safe mode."""

    exit_code = 2


class UnsupportedError(KexportError):
    """A target cannot take the model. `items` lists *every* unsupported layer/op at once."""

    exit_code = 1

    def __init__(self, target: str, items: list[str], hint: str = ""):
        self.target = target
        self.items = list(items)
        msg = f"target '{target}' cannot take: {', '.join(self.items)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ConversionError(KexportError):
    """The vendor converter failed."""

    exit_code = 1


class ParityError(KexportError):
    """At least one artifact does not compute what the Keras model computes."""

    exit_code = 1

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception (vendor errors carry pages of C++ context).

    Cut at a word boundary, never mid-word, with an ellipsis when cut."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


_CAUSE = "Exception encountered:"
_LAYER_PATTERNS = (  # how Keras names the layer in its messages, most specific first
    r"[Ll]ayer '([^']+)'", r"\(named ([^)\s]+)\)", r"layer \"([^\"]+)\"",
)


def keras_load_message(e: BaseException, limit: int = 300) -> str:
    """One line for a Keras load failure: the layer Keras names (if it names one) and the root
    cause. Keras nests causes ("... could not be deserialized properly ... Exception encountered:
    ...") and puts the failing layer's config, with its name, at the end of a long message.

    Example: "layer 'hidden' (MysteryDense): Could not locate class 'MysteryDense'. ..."
    """
    import re

    text = str(e)
    cause = text.rsplit(_CAUSE, 1)[-1].strip() if _CAUSE in text else text
    layer = next((m.group(1) for p in _LAYER_PATTERNS for m in [re.search(p, cause)] if m), None)
    cls = None
    if layer is None:  # the innermost cause that prints a layer config: its first config is the layer's
        for segment in reversed(text.split(_CAUSE)):
            m = re.search(r"'class_name': '([^']+)', 'config': \{'name': '([^']+)'"
                          r"|class '([^']+)' using config=\{'name': '([^']+)'", segment)
            if m:
                cls, layer = (m.group(1), m.group(2)) if m.group(2) else (m.group(3), m.group(4))
                break
    head = first_line(Exception(cause) if cause and cause is not text else e, limit)
    if layer is None or f"'{layer}'" in head or f"named {layer}" in head:
        return head
    return f"layer '{layer}'" + (f" ({cls})" if cls else "") + f": {head}"
