"""Target `kserve`: InferenceServices and plain Kubernetes manifests, validated against the
official Kubernetes OpenAPI schemas (kubernetes-validate) and KServe's CRD schema; breaking one
field is caught by each validator; hostile names/flags never reach the YAML unescaped."""

from __future__ import annotations

import re
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SAMPLE_MODELS
from recheck import recheck
import kexport
from kexport.cli import main
from kexport.options import ExportOptions
from kexport.targets.kserve import KServeOptions, k8s_name

pytest.importorskip("kubernetes_validate")
OPTS = KServeOptions(namespace="ml", image="registry.example.com/team/digits-server:1.0",
                     storage_uri="s3://models/digits-export")


def _rows(result):
    return {p.runtime: p for t in result.targets for p in t.parity}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("kserve") / "out"
    result = kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["kserve"], out,
                            options=ExportOptions(target_options={"kserve": OPTS}))
    return result, out / "kserve"


def test_manifests_validate(export):
    result, _ = export
    assert result.ok, result.failures()
    rows = _rows(result)
    assert rows["kubernetes-validate"].status == "passed" and rows["kserve-crd"].status == "passed"


def test_inference_services(export):
    _, d = export
    tf = _load(d / "kserve" / "inferenceservice-tensorflow.yaml")
    model = tf["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "tensorflow"} and model["protocolVersion"] == "v1"
    assert model["runtimeVersion"] == metadata.version("tensorflow")  # the TensorFlow that exported it
    assert model["storageUri"] == "s3://models/digits-export/tf-serving/digits_cnn"  # OUT/tf-serving/NAME/1/
    triton = _load(d / "kserve" / "inferenceservice-triton.yaml")
    model = triton["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/digits-export/triton"  # OUT/triton/NAME/1/model.onnx
    flask = _load(d / "kserve" / "inferenceservice-flask.yaml")
    (c,) = flask["spec"]["predictor"]["containers"]
    assert c["image"] == OPTS.image and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {m["metadata"]["namespace"] for m in (tf, triton, flask)} == {"ml"}


def test_deployment_shutdown_matches_the_server(export):
    """terminationGracePeriodSeconds covers preStop + the server's graceful timeout, which the
    pod sets through the variable the generated gunicorn.conf.py reads."""
    _, d = export
    dep = _load(d / "kubernetes" / "deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    conf = (ROOT / "templates" / "flask_app" / "gunicorn.conf.py.j2").read_text()
    var = re.search(r'graceful_timeout = int\(os\.environ\.get\("(\w+)"', conf).group(1)
    graceful = int({e["name"]: e["value"] for e in c["env"]}[var])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    svc = _load(d / "kubernetes" / "service.yaml")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    hpa = _load(d / "kubernetes" / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"] and hpa["spec"]["minReplicas"] == 3
    pdb = _load(d / "kubernetes" / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    isvc_labels = _load(d / "kserve" / "inferenceservice-flask.yaml")["metadata"]["labels"]
    assert not set(svc["spec"]["selector"].items()) <= set(isvc_labels.items()), "the Service would select KServe's pods"


def _break(d: Path, rel: str, edit) -> None:
    path = d / rel
    docs = _load(path)
    edit(docs)
    path.write_text(yaml.safe_dump(docs))


@pytest.mark.parametrize("rel,edit,runtime,needle", [
    ("kubernetes/deployment.yaml",
     lambda m: m["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="forty"), "kubernetes-validate",
     "terminationGracePeriodSeconds"),
    ("kubernetes/deployment.yaml",
     lambda m: m["spec"]["template"]["spec"]["containers"][0].update(readinessProbes={}), "kubernetes-validate",
     "readinessProbes"),
    ("kubernetes/hpa.yaml", lambda m: m["spec"].pop("maxReplicas"), "kubernetes-validate", "maxReplicas"),
    ("kubernetes/pdb.yaml", lambda m: m.update(apiVersion="policy/v1beta7"), "kubernetes-validate", "schema"),
    ("kserve/inferenceservice-triton.yaml",
     lambda m: m["spec"]["predictor"]["model"].update(protocolVersion="v3"), "kserve-crd", "v3"),
    ("kserve/inferenceservice-tensorflow.yaml",
     lambda m: m["spec"]["predictor"]["model"].update(storageURI="s3://x"), "kserve-crd", "storageURI"),
    ("kserve/inferenceservice-tensorflow.yaml",
     lambda m: m["spec"]["predictor"]["model"]["modelFormat"].pop("name"), "kserve-crd", "'name' is a required"),
    ("kserve/inferenceservice-flask.yaml",
     lambda m: m["spec"]["predictor"]["containers"][0]["ports"][0].update(containerPort="http"), "kserve-crd",
     "containerPort"),
    ("kserve/inferenceservice-flask.yaml", lambda m: m["metadata"].update(name="Digits_Flask"), "kserve-crd",
     "DNS-1035"),
])
def test_one_broken_field_is_caught(export, tmp_path, rel, edit, runtime, needle):
    _, d = export
    out = tmp_path / "out"
    shutil.copytree(d.parent, out)
    _break(out / "kserve", rel, edit)
    rows = recheck(out, "kserve")  # the engine `kexport verify` uses (verify refuses a changed sha256 first)
    assert rows[runtime].status == "failed" and needle in rows[runtime].reason, rows[runtime].reason
    other = "kserve-crd" if runtime == "kubernetes-validate" else "kubernetes-validate"
    assert rows[other].status == "passed", rows[other].reason


def test_hostile_model_name_is_escaped(tmp_path):
    """A model file name with quotes, a newline-like sequence and YAML syntax: resource names are
    DNS labels, the name itself lands only in an annotation value, escaped by the YAML library."""
    evil = tmp_path / 'evil": {x: 1}\' #.keras'
    shutil.copy(SAMPLE_MODELS["wine_mlp"], evil)
    out = tmp_path / "out"
    result = kexport.export(str(evil), ["kserve"], out)
    assert result.ok, result.failures()
    dep = _load(out / "kserve" / "kubernetes" / "deployment.yaml")
    assert dep["metadata"]["annotations"]["kexport/source"] == evil.name
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", dep["metadata"]["name"])
    assert k8s_name("123") == "m-123" and k8s_name("A__B..c") == "a-b-c" and len(k8s_name("x" * 200)) <= 40


@pytest.mark.parametrize("argv,needle", [
    (["--namespace", "Bad_NS"], "--namespace"),
    (["--image", "img:1.0\nkind: Secret"], "--image"),
    (["--image", "a b"], "--image"),
    (["--storage-uri", "file:///etc/passwd"], "--storage-uri"),
    (["--storage-uri", "s3://bucket/x y"], "--storage-uri"),
    (["--replicas", "5", "--max-replicas", "2"], "--replicas"),
])
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, argv, needle):
    code = main(["kserve", str(SAMPLE_MODELS["wine_mlp"]), "-o", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("kexport: ")]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "o" / "kserve").exists()


def test_validators_fail_on_an_empty_directory(tmp_path):
    from kexport.runtimes import get_runtime

    for name in ("kubernetes-validate", "kserve-crd"):
        assert get_runtime(name).validate(tmp_path), name
