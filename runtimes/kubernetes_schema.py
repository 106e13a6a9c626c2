"""`kubernetes-validate`: every plain Kubernetes manifest written by the `kserve` target
(Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget), validated with the
`kubernetes-validate` package against the official OpenAPI schemas of one pinned Kubernetes
version, strictly (unknown fields refused, as `kubectl apply` does by default).

A validator, not an inference runtime: `validate(path)` returns the problems.
"""

from __future__ import annotations

from pathlib import Path

from .base import Runtime, module_missing, register_runtime

KUBERNETES_VERSION = "1.33.0"  # schemas shipped in kubernetes-validate (pinned in constraints.txt)


@register_runtime
class KubernetesValidateRuntime(Runtime):
    name = "kubernetes-validate"
    validates = True  # checks manifests; returns problems instead of outputs
    install_hint = "pip install 'kexport[kserve]' (kubernetes-validate)"

    def available(self):
        return module_missing("kubernetes_validate", "kubernetes-validate")

    def validate(self, path, **options) -> list[str]:
        files = sorted(Path(path).glob("kubernetes/*.yaml"))
        if not files:
            return [f"{path}: no kubernetes/*.yaml manifests"]
        problems = []
        for f in files:
            problems += [f"{f.name}: {p}" for p in validate_file(f)]
        return problems


def validate_file(path: Path, version: str = KUBERNETES_VERSION) -> list[str]:
    import kubernetes_validate
    import yaml

    problems = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(root)"
            problems.append(f"{doc.get('kind')}: {where}: {e.message[:200]}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            problems.append(f"{doc.get('kind')}: no Kubernetes {version} schema: {e}")
    return problems
