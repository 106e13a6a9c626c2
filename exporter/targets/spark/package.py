"""Render the Spark scoring package (templates/spark/) around an ONNX or TFLite artifact.

The package stands alone: schema.json (the input contract, names written with json.dumps, never
pasted into code), score.py + kexport_spark/ (rendered from templates/spark), kexport_runtime/
(runtimes/base.py and the onnxruntime and LiteRT adapters, copied as the flask target copies
them), model/<artifact>, requirements.txt pinned to the versions installed here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ... import runtimes as runtimes_package, templates

TEMPLATE_DIR = templates.ROOT / "spark"
RUNTIME_DIR = Path(runtimes_package.__file__).resolve().parent
# runtime -> (adapter module in kexport.runtimes/, pip distribution)
PACKAGE_RUNTIMES = {"onnxruntime": ("onnxruntime_runtime.py", "onnxruntime"),
                    "litert": ("litert.py", "ai-edge-litert")}
JOB_PACKAGES = ("pyspark", "pyarrow", "numpy")
BATCH_BYTES = 32 * 1024 * 1024  # default Arrow batch: about this many bytes of input doubles
COLUMN_DTYPES = {"float16": "float32", "uint8": "int16"}  # Spark has no half floats or unsigned bytes


@dataclass
class PackageSpec:
    name: str
    signature: object  # ModelSignature
    runtime: str
    artifact: str  # file name inside model/
    source_file: str
    model_sha256: str
    kexport_version: str


def free_dimensions(signature) -> list[str]:
    tensors = [("input", t) for t in signature.inputs] + [("output", t) for t in signature.outputs]
    return [f"{kind} {t.name!r} shape {list(t.shape)}: a free dimension after the batch axis "
            "(Spark columns need a fixed number of values per row)"
            for kind, t in tensors if any(d is None for d in t.shape[1:])]


def default_batch_size(signature) -> int:
    per_row = sum(int(np.prod(t.shape[1:], dtype=np.int64)) for t in signature.inputs) or 1
    return int(min(4096, max(8, BATCH_BYTES // (8 * per_row))))


def schema_doc(spec: PackageSpec) -> dict:
    def tensor(t, output: bool):
        d = {"name": t.name, "shape": list(t.shape), "dims": [int(x) for x in t.shape[1:]], "dtype": t.dtype}
        if t.int_high is not None:
            d["int_high"] = int(t.int_high)
        if output:
            d["column"] = t.name
            d["column_dtype"] = COLUMN_DTYPES.get(t.dtype, t.dtype)
        return d

    return {"format": "kexport-spark-schema/1", "schema_file": "schema.json",
            "model": {"name": spec.name, "source_file": spec.source_file, "sha256": spec.model_sha256},
            "runtime": spec.runtime, "artifact": f"model/{spec.artifact}",
            "default_batch_size": default_batch_size(spec.signature),
            "inputs": [tensor(t, False) for t in spec.signature.inputs],
            "outputs": [tensor(t, True) for t in spec.signature.outputs],
            "kexport_version": spec.kexport_version}


def requirement_pins(runtime: str) -> list[tuple[str, str]]:
    pins = []
    for pkg in (PACKAGE_RUNTIMES[runtime][1],) + JOB_PACKAGES:
        try:
            pins.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            pins.append((pkg, ""))  # unpinned: not installed where the package was generated
    return pins


def copy_runtime(pkg: Path, kexport_version: str, runtime_dir: Path = RUNTIME_DIR) -> None:
    """base.py and both light adapters: a worker that scored with another package of the same
    kexport version may already have imported `kexport_runtime`, so every copy carries both."""
    pkg.mkdir(parents=True, exist_ok=True)
    modules = ["base.py"] + [m for m, _ in PACKAGE_RUNTIMES.values()]
    for module in modules:
        shutil.copyfile(runtime_dir / module, pkg / module)
    imports = "".join(f"from . import {m[:-3]}  # noqa: F401,E402  (registers '{rt}')\n"
                      for rt, (m, _) in PACKAGE_RUNTIMES.items())
    (pkg / "__init__.py").write_text(
        f'"""Runtime adapters copied from kexport {kexport_version} runtimes/ ({", ".join(modules)})."""\n\n'
        "from .base import get_runtime  # noqa: F401\n" + imports)


def render_package(dest: Path, spec: PackageSpec, template_dir: Path = TEMPLATE_DIR) -> dict:
    """Write everything but model/<artifact> (already written by the target); returns the schema."""
    import jinja2

    dest = Path(dest)
    schema = schema_doc(spec)
    (dest / "schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    copy_runtime(dest / "kexport_runtime", spec.kexport_version)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    values = {"kexport_version": spec.kexport_version, "runtime": spec.runtime,
              "requirements": requirement_pins(spec.runtime), "schema_json": json.dumps(schema, indent=2),
              "default_batch_size": schema["default_batch_size"],
              "example_input": json.dumps(schema["inputs"][0]["name"])}
    for tpl in sorted(template_dir.rglob("*.j2")):
        rel = tpl.relative_to(template_dir).as_posix()
        try:
            text = env.get_template(rel).render(**values)
        except jinja2.TemplateError as e:  # a template bug, not the user's: say which file
            raise RuntimeError(f"templates/spark/{rel}: {e}") from e
        out = dest / rel[: -len(".j2")]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return schema
