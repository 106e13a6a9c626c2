"""Render the standalone Flask app (templates/flask_app/) around an ONNX or TFLite artifact.

The app is self-contained: what it needs from its runtime is declared by the runtime itself
(`server` on the Runtime class: the target writing the artifact, the adapter files copied into
`kexport_runtime/`, the pip distributions), the signature is written to `model/model.json`,
and requirements.txt pins the runtime, Flask, gunicorn (gevent) and numpy at the versions
installed here. Nothing in the app imports TensorFlow or kexport. Every string reaches the
templates through an escaping filter of the language it lands in (escape.py).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import urllib.parse
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from ... import __version__
from ...errors import UsageError
from ...signature import ModelSignature

from ... import runtimes as runtimes_package, templates

TEMPLATE_DIR = templates.ROOT / "flask_app"
RUNTIME_DIR = Path(runtimes_package.__file__).resolve().parent
SERVING_PACKAGES = ("numpy", "flask", "werkzeug", "gunicorn", "gevent", "greenlet")
TF_DTYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "int32": "DT_INT32",
             "int64": "DT_INT64", "int16": "DT_INT16", "int8": "DT_INT8", "uint8": "DT_UINT8", "bool": "DT_BOOL",
             "string": "DT_STRING"}
V2_DATATYPES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
                "float16": "FP16", "float32": "FP32", "float64": "FP64", "string": "BYTES"}
EXAMPLE_MAX_ELEMENTS = 256  # larger inputs get an .npy example instead of inline JSON


@dataclass(frozen=True)
class ServerRuntime:
    """What a generated server takes from a runtime, as the runtime declares it (`server`)."""

    name: str
    artifact_target: str  # the target whose export() writes the artifact the app embeds
    files: tuple  # modules copied from kexport.runtimes into kexport_runtime/
    requirements: tuple  # pip distributions, pinned at the installed versions
    thread_safe: bool  # one session may be called from several threads at once
    platform: str  # the v2 protocol's "platform" in model metadata


def server_runtimes() -> dict[str, ServerRuntime]:
    """Every registered runtime that declares what a generated server takes from it."""
    from ... import runtimes

    return {name: ServerRuntime(name=name, **rt.server) for name, rt in sorted(runtimes.all_runtimes().items())
            if getattr(rt, "server", None)}


def server_runtime(name: str) -> ServerRuntime:
    known = server_runtimes()
    if name not in known:
        raise UsageError(f"Unrecognized runtime={name!r} for target 'flask'. Supported: {sorted(known)}.")
    return known[name]


@dataclass(frozen=True)
class AppSettings:
    """Defaults baked into the generated app (each one an environment variable there too)."""

    max_content_length: int = 16 * 1024 * 1024
    batch_window_ms: float = 0.0  # off: see FlaskOptions
    max_batch_rows: int = 32
    workers: int = 2
    worker_connections: int = 256  # per worker (gevent): slow clients wait in the backlog past it
    intra_op_threads: int = 1
    run_bytes: int = 1 << 18  # input bytes per model call: a large request runs in slices (bounded memory)
    body_budget: int = 64 * 1024 * 1024  # request bodies one worker holds at once
    max_requests: int = 5000  # worker recycling (plus jitter): fragmented memory goes back to the OS
    max_requests_jitter: int = 500


@dataclass
class AppSpec:
    """Everything the templates need, gathered by the flask target."""

    name: str
    signature: ModelSignature
    runtime: str
    artifact: str  # file name inside model/
    source_file: str
    model_sha256: str
    inputs: dict  # reference inputs (name -> array), saved for the app's own tests
    outputs: dict  # Keras outputs for them
    atol: float
    rtol: float
    settings: AppSettings = field(default_factory=AppSettings)
    labels: dict = field(default_factory=dict)  # output name -> list of label names
    version: str = "1"


def read_labels(path, signature: ModelSignature) -> dict:
    """One label per line (exporter/labels.py); attached to every output of that many classes."""
    from ...labels import fitting_outputs
    from ...labels import read_labels as read_file

    names = read_file(path)
    return {out: names for out in fitting_outputs(signature, names, path)}


def requirement_pins(runtime: str) -> list[tuple[str, str]]:
    pins = []
    for pkg in server_runtime(runtime).requirements + SERVING_PACKAGES:
        try:
            pins.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError as e:
            raise UsageError(f"the generated app needs '{pkg}', which is not installed here; "
                             f"pip install 'kexport[serve]' {pkg}") from e
    return pins


def _shape_text(shape) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def signature_def(signature: ModelSignature) -> dict:
    """The serving_default SignatureDef as TF-Serving's /metadata prints it."""

    def tensor(t, name):
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in t.shape]
        return {"dtype": TF_DTYPES.get(t.dtype, "DT_INVALID"), "tensor_shape": {"dim": dims, "unknown_rank": False},
                "name": name}

    return {"inputs": {t.name: tensor(t, f"serving_default_{t.name}:0") for t in signature.inputs},
            "outputs": {t.name: tensor(t, f"StatefulPartitionedCall:{i}") for i, t in enumerate(signature.outputs)},
            "method_name": "tensorflow/serving/predict", "defaults": {}}


def render_app(dest: Path, spec: AppSpec) -> None:
    """Write the app around `dest/model/<spec.artifact>` (already written by the target)."""
    import jinja2

    from .escape import environment

    dest = Path(dest)
    (dest / "model").mkdir(parents=True, exist_ok=True)
    (dest / "tests").mkdir(exist_ok=True)
    runtime = server_runtime(spec.runtime)
    _copy_runtime(dest / "kexport_runtime", runtime)
    meta = {"name": spec.name, "version": spec.version, "runtime": spec.runtime, "artifact": spec.artifact,
            "signature": spec.signature.to_json(), "signature_def": signature_def(spec.signature),
            "labels": spec.labels, "source_file": spec.source_file, "model_sha256": spec.model_sha256,
            "kexport_version": __version__, "thread_safe": runtime.thread_safe, "platform": runtime.platform,
            "max_content_length": spec.settings.max_content_length,
            # the app warms up at the sizes verified here: a free dimension at 1 may be too small
            "warmup_shapes": {k: [int(d) for d in np.shape(v)[1:]] for k, v in spec.inputs.items()}}
    (dest / "model" / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    np.savez(dest / "tests" / "reference_inputs.npz", **_loadable(spec.inputs))
    np.savez(dest / "tests" / "reference_outputs.npz", **_loadable(spec.outputs))
    from .openapi import openapi_spec

    (dest / "openapi.json").write_text(json.dumps(openapi_spec(spec), indent=2), encoding="utf-8")
    env = environment(TEMPLATE_DIR)
    values = _template_values(spec)
    for tpl in sorted(TEMPLATE_DIR.rglob("*.j2")):
        rel = tpl.relative_to(TEMPLATE_DIR).as_posix()
        try:
            text = env.get_template(rel).render(**values)
        except jinja2.TemplateError as e:  # a template bug, not the user's: say which file
            raise RuntimeError(f"templates/flask_app/{rel}: {e}") from e
        (dest / rel[: -len(".j2")]).write_text(text, encoding="utf-8")


def _loadable(arrays: dict) -> dict:
    """Strings as fixed-width unicode: object arrays would need pickle to load (allow_pickle=False)."""
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype.kind in "OS":
            v = np.asarray([x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in v.reshape(-1)],
                           dtype=str).reshape(v.shape)
        out[k] = v
    return out


def _copy_runtime(pkg: Path, runtime: ServerRuntime) -> None:
    """runtimes/base.py and the files the runtime declares, as a package of their own:
    runtimes/__init__.py imports every adapter (some need TensorFlow), so it is not copied."""
    pkg.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNTIME_DIR / "base.py", pkg / "base.py")
    for name in runtime.files:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*\.py", name):
            raise ValueError(f"runtime {runtime.name!r} declares a server file {name!r} that is not a module name")
        shutil.copyfile(RUNTIME_DIR / name, pkg / name)
    imports = "".join(f"from . import {name[:-3]}  # noqa: F401,E402\n" for name in runtime.files)
    (pkg / "__init__.py").write_text(
        f'"""The {runtime.name} adapter, copied from kexport {__version__} runtimes/ (base.py, '
        f'{", ".join(runtime.files)})."""\n\nfrom .base import get_runtime  # noqa: F401\n' + imports,
        encoding="utf-8")


def _example(spec: AppSpec):
    """Rows/columns curl examples from the first reference example (rounded), or placeholders."""
    sig = spec.signature
    n_el = sum(int(np.prod(spec.inputs[t.name].shape[1:])) for t in sig.inputs)
    if n_el > EXAMPLE_MAX_ELEMENTS:
        return ('{"instances": [ ...one example per entry, see openapi.json... ]}',
                '{"inputs": { ...one batch per input name... }}')

    def first(t):
        a = spec.inputs[t.name][:1]
        return np.round(a.astype(np.float64), 3).tolist() if a.dtype.kind == "f" else a.tolist()

    if len(sig.inputs) == 1:
        rows = {"instances": first(sig.inputs[0])}
    else:
        rows = {"instances": [{t.name: first(t)[0] for t in sig.inputs}]}
    cols = {"inputs": {t.name: first(t) for t in sig.inputs}}
    return json.dumps(rows, separators=(",", ":")), json.dumps(cols, separators=(",", ":"))


def _template_values(spec: AppSpec) -> dict:
    """The values the templates see. Strings are emitted only through the escaping filters."""
    from .escape import Escaped

    s = spec.settings
    rows, cols = _example(spec)

    def described(t):
        return {"name": t.name, "dtype": t.dtype, "shape_text": _shape_text(t.shape), "int_high": t.int_high,
                "datatype": V2_DATATYPES.get(t.dtype, "BYTES"),
                "example_batch_shape": (2,) + tuple(1 if d is None else d for d in t.shape[1:])}

    try:
        pytest_version = metadata.version("pytest")
    except metadata.PackageNotFoundError:
        pytest_version = ""  # unpinned
    server = "http://localhost:8501"
    quoted = urllib.parse.quote(spec.name, safe="")
    base = f"{server}/v1/models/{quoted}"
    # a Markdown code fence longer than any backtick run in a name, so no name can close it
    untrusted = [spec.name, spec.source_file] + [t.name for t in spec.signature.inputs + spec.signature.outputs]
    fence = "`" * max(3, max((len(m) for text in untrusted for m in re.findall("`+", text)), default=0) + 1)
    return {
        "kexport_version": __version__, "model_name": spec.name, "source_file": spec.source_file,
        "model_sha256": spec.model_sha256, "runtime": spec.runtime, "artifact": spec.artifact,
        "version": spec.version, "inputs": [described(t) for t in spec.signature.inputs],
        "outputs": [described(t) for t in spec.signature.outputs],
        "input_names": list(spec.signature.input_names), "output_names": list(spec.signature.output_names),
        "string_inputs": [t.name for t in spec.signature.inputs if t.dtype == "string"],
        "free_inputs": [t.name for t in spec.signature.inputs if None in tuple(t.shape[1:])],
        "labels": spec.labels, "atol": float(spec.atol), "rtol": float(spec.rtol),
        "tolerance_text": f"max |served - keras| <= {spec.atol:g} + {spec.rtol:g} x max |keras|",
        "max_content_length": s.max_content_length, "batch_window_ms": float(s.batch_window_ms),
        "max_batch_rows": s.max_batch_rows, "workers": s.workers, "worker_connections": s.worker_connections,
        "max_requests": s.max_requests, "max_requests_jitter": s.max_requests_jitter, "run_bytes": s.run_bytes,
        "body_budget": max(s.body_budget, s.max_content_length),
        "intra_op_threads": s.intra_op_threads, "requirements": requirement_pins(spec.runtime),
        "pytest_version": pytest_version, "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "example_rows": rows, "example_columns": cols,
        "server_url": server, "base_url": base, "predict_url": base + ":predict",
        "version_predict_url": f"{base}/versions/{urllib.parse.quote(spec.version, safe='')}:predict",
        "v2_url": f"{server}/v2/models/{quoted}", "fence": Escaped(fence),
    }
