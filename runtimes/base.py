"""The Runtime protocol and its registry. No TensorFlow here: generated servers import this."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np


class UnsupportedOp(Exception):
    """A runtime met an op it cannot execute (e.g. a reference interpreter without that op).

    Parity reports the runtime as `skipped` naming the op, never `passed` nor `failed`: the
    artifact may be fine, this runtime just cannot prove it.
    """

    def __init__(self, op: str, detail: str = ""):
        self.op = op
        super().__init__(f"op '{op}' is not implemented by this runtime" + (f" ({detail})" if detail else ""))


class Session(Protocol):
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Runtime:
    """One inference runtime.

    Subclasses set `name`, implement `available()` (None when usable, else the reason) and
    `load(path)`. Name, layout and dtype mapping lives in the session, so callers only ever see
    arrays keyed by the Keras input/output names.
    """

    name: str = ""
    # Run in a child process without TensorFlow when verifying (see runtimes/isolated.py).
    isolate: bool = False
    # How to get it, shown by `kexport doctor` and in skipped rows.
    install_hint: str = ""
    # Usable only from the thread that started it (Playwright's sync API): `kexport all` runs its
    # checks on the main thread instead of beside the conversions (exporter/overlap.py).
    thread_bound: bool = False

    def available(self) -> str | None:
        return None

    def load(self, path: str, **options) -> Session:
        raise NotImplementedError

    # Optional: start what this runtime keeps running between sessions (a Node process, the JVM)
    # ahead of its first load(). `kexport all` calls it from a background thread while the model
    # loads, so it must be safe off the verifying thread (not Chromium: Playwright is bound to the
    # thread that started it). Errors are ignored here: available()/load() report them in the row.
    def prepare(self) -> None:
        return None

    # Optional: what a latency table does not show about this runtime on one artifact (process
    # start, load, first call, the backend a browser picked), for report.json `runtime_timing`
    # under --benchmark. None when there is nothing beyond the latency `kexport.runtimes.latency` measures.
    def timing(self, path: str, inputs: dict[str, np.ndarray], **options) -> dict | None:
        return None


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _RUNTIMES:
        raise ValueError(f"runtime name '{cls.name}' registered twice ({cls.__name__})")
    _RUNTIMES[cls.name] = cls()
    return cls


def get_runtime(name: str) -> Runtime:
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise KeyError(f"Unknown runtime={name!r}. Known runtimes: {sorted(_RUNTIMES)}") from None


def all_runtimes() -> dict[str, Runtime]:
    return dict(_RUNTIMES)


def module_missing(module: str, pip_name: str) -> str | None:
    """Reason string when `module` cannot be imported (without importing it)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"python package '{module}' is not installed (pip install {pip_name})"
    return None


def run_in_batches(fn: Callable[[dict], dict], inputs: dict[str, np.ndarray], batch: int | None):
    """Call fn on chunks of `batch` rows (for artifacts with a fixed batch size) and concatenate."""
    n = len(next(iter(inputs.values())))
    if batch is None or batch >= n:
        return fn(inputs)
    parts = [fn({k: v[i : i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
