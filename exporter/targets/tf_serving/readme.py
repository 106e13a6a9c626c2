"""README.md and docker-compose.yml of a TF-Serving repository, rendered from
templates/tf_serving/ (Jinja, StrictUndefined) for every model the repository serves."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from ...report import REPORT_NAME

REST_PORT, GRPC_PORT = 8501, 8500


def serving_image() -> str:
    """The tensorflow/serving image built from the TensorFlow release that wrote the SavedModel
    (tensorflow-serving-api is released in lockstep with it)."""
    try:
        return f"tensorflow/serving:{metadata.version('tensorflow-serving-api')}"
    except metadata.PackageNotFoundError:
        return "tensorflow/serving:latest"


def _env():
    import jinja2

    from ... import templates

    root = templates.ROOT / "tf_serving"
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def _model_info(repo: Path, name: str, versions: list[int], current: dict) -> dict:
    """Inputs, outputs, signatures and example bodies of one model (its newest kexport report)."""
    if name == current["name"]:
        sig, classify, examples = current["signature"], current["classify"], current["examples"]
        inputs = [(t.name, list(t.shape), t.dtype) for t in sig.inputs]
        outputs = [(t.name, list(t.shape), t.dtype) for t in sig.outputs]
        extra = classify["signature"] if classify else None
    else:
        inputs = outputs = []
        extra = None
        for v in sorted(versions, reverse=True):
            path = repo / name / str(v) / "assets.extra" / "kexport" / REPORT_NAME
            if path.exists():
                report = json.loads(path.read_text())
                inputs = [(t["name"], t["shape"], t["dtype"]) for t in report["model"]["inputs"]]
                outputs = [(t["name"], t["shape"], t["dtype"]) for t in report["model"]["outputs"]]
                extra = (report["targets"][0].get("classify") or {}).get("signature")
                break
        ex_dir = repo / "examples" / name
        examples = sorted(p.name for p in ex_dir.glob("*.json")) if ex_dir.is_dir() else []
    shape = lambda s: "[" + ", ".join("batch" if d is None else str(d) for d in s) + "]"  # noqa: E731
    return {"name": name, "versions": versions, "extra_signature": extra, "examples": examples,
            "inputs": [{"name": n, "shape": shape(s), "dtype": d} for n, s, d in inputs],
            "outputs": [{"name": n, "shape": shape(s), "dtype": d} for n, s, d in outputs]}


def render_repository_files(dest: Path, repo: Path, config, batching, base_path: str, current: dict) -> None:
    from .proto import model_versions, served_versions

    models = []
    for entry in config.model_config_list.config:
        on_disk = set(model_versions(repo / entry.name))
        if entry.name == current["name"]:
            on_disk.add(current["version"])  # not moved in yet
        on_disk = sorted(on_disk)
        info = _model_info(repo, entry.name, on_disk, current)
        info["policy"] = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        info["served"] = served_versions(entry, on_disk)
        models.append(info)
    ctx = {"image": serving_image(), "base_path": base_path.rstrip("/"), "models": models,
           "batching": batching.to_json(), "rest_port": REST_PORT, "grpc_port": GRPC_PORT}
    env = _env()
    for template, out in (("README.md.j2", "README.md"), ("docker-compose.yml.j2", "docker-compose.yml")):
        (dest / out).write_text(env.get_template(template).render(**ctx))
