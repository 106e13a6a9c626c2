"""`kserve-crd`: every InferenceService written by the `kserve` target, validated against
KServe's CRD schema (kserve_schema/, source and version in SOURCE.md) the way the API server
does with strict field validation (`kubectl apply` default): types, enums, required fields, and
unknown fields refused. Also KServe's own name rule (its webhook wants a DNS-1035 label).

A validator, not an inference runtime: `validate(path)` returns the problems (an empty list
passes); parity turns them into the row.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .base import Runtime, module_missing, register_runtime

SCHEMA = Path(__file__).with_name("kserve_schema") / "inferenceservice_v1beta1.json"
API_VERSION, KIND = "serving.kserve.io/v1beta1", "InferenceService"
DNS1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
METADATA = {"name", "namespace", "labels", "annotations"}
# A free string in the CRD; KServe selects a serving runtime by it (pkg/constants/constants.go).
PROTOCOLS = ("v1", "v2", "grpc-v1", "grpc-v2")


@register_runtime
class KServeCrdRuntime(Runtime):
    name = "kserve-crd"
    validates = True  # checks manifests; returns problems instead of outputs
    install_hint = "pip install 'kexport[kserve]' (jsonschema, pyyaml)"

    def available(self):
        return module_missing("jsonschema", "jsonschema") or module_missing("yaml", "pyyaml")

    def validate(self, path, **options) -> list[str]:
        files = sorted(Path(path).glob("kserve/*.yaml"))
        if not files:
            return [f"{path}: no kserve/*.yaml manifests"]
        problems = []
        for f in files:
            problems += [f"{f.name}: {p}" for p in validate_documents(f)]
        return problems


def strict(schema):
    """The schema with unknown fields refused: every object that lists its properties and does
    not preserve unknown fields gets additionalProperties: false (what strict validation does)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


_VALIDATOR = None


def validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        _VALIDATOR = jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))
    return _VALIDATOR


def validate_documents(path: Path) -> list[str]:
    import yaml

    problems = []
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if not docs:
        return ["no document"]
    for doc in docs:
        problems += validate_isvc(doc)
    return problems


def validate_isvc(doc) -> list[str]:
    if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        return [f"not a {API_VERSION} {KIND}"]
    problems = []
    meta = doc.get("metadata") or {}
    if set(meta) - METADATA:
        problems.append(f"metadata: unknown fields {sorted(set(meta) - METADATA)}")
    if not DNS1035.fullmatch(str(meta.get("name", ""))):
        problems.append(f"metadata.name {meta.get('name')!r} is not a DNS-1035 label")
    model = ((doc.get("spec") or {}).get("predictor") or {}).get("model")
    if isinstance(model, dict) and "protocolVersion" in model and model["protocolVersion"] not in PROTOCOLS:
        problems.append(f"spec.predictor.model.protocolVersion {model['protocolVersion']!r} is none of KServe's {list(PROTOCOLS)}")
    body = {k: v for k, v in doc.items() if k != "metadata"}
    for err in sorted(validator().iter_errors(body), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        problems.append(f"{where}: {err.message[:200]}")
    return problems
