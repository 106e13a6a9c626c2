"""A TF.js model folder as both TF.js runtimes read it (Node: tfjs_node.py, the browser:
tfjs_chromium.py): model.json, the names to feed and fetch, and where the TF.js npm packages are.

Outputs are fetched by name, never by position: TF.js reorders multi-output models.
"""

from __future__ import annotations

import json
from pathlib import Path

# The npm packages (@tensorflow/tfjs, tfjs-backend-wasm) of the Node runner; the browser page
# is served the bundle from the same node_modules (`make node-deps`).
PACKAGES_DIR = Path(__file__).resolve().parent / "tfjs_node"


class ModelJsonError(ValueError):
    """model.json is missing, unreadable or not a TF.js model."""


def read_model_json(path) -> dict:
    """model.json (or the folder holding it), with a one-line error naming the file when it is broken."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelJsonError(f"{p}: not a readable TF.js model.json ({type(e).__name__}: {e}); "
                             "re-run `kexport tfjs`") from e
    if not isinstance(data, dict) or "weightsManifest" not in data or "modelTopology" not in data:
        raise ModelJsonError(f"{p}: not a TF.js model.json (no modelTopology/weightsManifest); re-run `kexport tfjs`")
    return data


def _tensor(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def output_names(model_json: dict) -> list[tuple[str, str]]:
    """[(tfjs tensor name, Keras output name)] from a graph model's signature."""
    sig = model_json.get("signature") or {}
    return [(_tensor(v["name"]), k) for k, v in sorted((sig.get("outputs") or {}).items())]


def input_names(model_json: dict) -> dict[str, str]:
    """{Keras input name: tfjs tensor name} for a graph model."""
    sig = model_json.get("signature") or {}
    return {k: _tensor(v["name"]) for k, v in (sig.get("inputs") or {}).items()}


def layers_fetch(runtime_options: dict) -> list[list[str]]:
    """[(layers output name, Keras output name)] in the layers model's output order (from the
    target's `output_map`): TF.js Sequential models expose no output names, so by position."""
    return [[k, v] for k, v in (runtime_options.get("output_map") or {}).items()]


def feeds_and_fetch(model_json: dict, fmt: str, output_map: dict | None):
    """({Keras input: tensor to feed}, [(tensor to fetch, Keras output)]) for `fmt` graph|layers."""
    if fmt == "graph":
        return input_names(model_json), output_names(model_json)
    return {}, layers_fetch({"output_map": output_map})
