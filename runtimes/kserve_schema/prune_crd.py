"""Rebuild inferenceservice_v1beta1.json from KServe's CRD (a maintainer tool, not imported).

    python runtimes/kserve_schema/prune_crd.py serving.kserve.io_inferenceservices.yaml

Input: config/crd/full/serving.kserve.io_inferenceservices.yaml of github.com/kserve/kserve (the
commit is recorded in SOURCE.md). Output: the v1beta1 openAPIV3Schema without descriptions and
`status`, with spec.canary/explainer/transformer and the predictor fields kexport never writes
(affinity, volumes, initContainers, ... : large pod-spec subtrees) reduced to their type. Every
predictor field *name* stays, so an unknown or misspelled field is still refused; everything
kexport writes (predictor.model, predictor.containers, scaling, grace period) keeps KServe's full
schema.
"""

import json
import sys
from pathlib import Path

import yaml

WRITTEN = {"model", "containers", "minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
           "terminationGracePeriodSeconds", "timeout", "containerConcurrency", "labels", "annotations",
           "serviceAccountName", "nodeSelector", "tolerations", "imagePullSecrets", "securityContext"}


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k != "description"}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


def reduce(schema: dict) -> dict:
    return {k: v for k, v in schema.items() if k in ("type", "x-kubernetes-preserve-unknown-fields")} | {"x-kexport-pruned": True}


def main(src: str) -> None:
    crd = yaml.safe_load(Path(src).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = strip(version["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    spec = schema["properties"]["spec"]["properties"]
    for part in ("canary", "explainer", "transformer"):
        spec[part] = reduce(spec[part])
    pred = spec["predictor"]["properties"]
    for name in list(pred):
        if name not in WRITTEN:
            pred[name] = reduce(pred[name])
    out = Path(__file__).with_name("inferenceservice_v1beta1.json")
    out.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
