"""`kexport tf-serving`: one repository built once per session from every sample model (plus a
second version of digits_cnn with a top-k signature), then checked with TensorFlow's own tools,
TF-Serving's protocol buffers, and the generated Flask server over HTTP.

Cost: each export runs `saved_model_cli run` once (a subprocess importing TensorFlow, ~8 s of
CPU), so the fixture is the bulk of this file's time; `saved_model_cli show --all` runs once, on
the version that has both signatures, and the test checks that it lists exactly what the
in-process signature-defs check (run on every version) reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
from kexport.errors import UsageError
from kexport.options import ExportOptions
from kexport.targets.tf_serving import TFServingOptions, export_repository
from kexport.targets.tf_serving.proto import BatchingParameters, read_config

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CHECKS = ("tf-saved-model", "tf-saved-model-cli", "signature-defs", "warmup-replay")
VERSIONS = [(name, 1) for name in SAMPLE_MODELS] + [("digits_cnn", 2)]


def _digest(path: Path) -> dict:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def _snapshot(repo: Path) -> dict:
    return {str(f.relative_to(repo)): (f.stat().st_mtime_ns, f.stat().st_size)
            for f in sorted(repo.rglob("*"))} if repo.exists() else {}


class Repo:
    def __init__(self, root: Path):
        self.root = root
        self.results = {}

    def report_dir(self, name, version) -> Path:
        return self.root / name / str(version) / "assets.extra" / "kexport"

    def reference(self, name, version):
        ref = self.report_dir(name, version) / "reference"
        with np.load(ref / "inputs.npz") as i, np.load(ref / "outputs.npz") as o:
            return {k: i[k] for k in i.files}, {k: o[k] for k in o.files}


@pytest.fixture(scope="session")
def tfs_repo(tmp_path_factory):
    repo = Repo(tmp_path_factory.mktemp("tfs") / "repo")
    for name, path in SAMPLE_MODELS.items():
        repo.results[(name, 1)] = export_repository(str(path), repo.root, TFServingOptions(name=name))
    repo.v1_before = _digest(repo.root / "digits_cnn" / "1")
    labels = repo.root.parent / "digits_labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    repo.results[("digits_cnn", 2)] = export_repository(
        str(SAMPLE_MODELS["digits_cnn"]), repo.root,
        TFServingOptions(name="digits_cnn", class_labels=str(labels), top_k=3))
    return repo


@pytest.mark.parametrize("name,version", VERSIONS, ids=[f"{n}-v{v}" for n, v in VERSIONS])
def test_version_published_and_checked(tfs_repo, name, version):
    result = tfs_repo.results[(name, version)]
    assert result.ok, result.failures()
    (row,) = result.targets
    assert row.extra["published"] and row.extra["version"] == version and row.extra["model_name"] == name
    status = {p.runtime: p.status for p in row.parity}
    for check in CHECKS:
        assert status.get(check) == "passed", f"{name}/{version} {check}: {status}"
    vdir = tfs_repo.root / name / str(version)
    assert (vdir / "saved_model.pb").is_file() and (vdir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    report = json.loads((tfs_repo.report_dir(name, version) / "report.json").read_text())
    assert set(report) == {"kexport_version", "model", "versions", "seconds", "targets", "reference"}
    assert report["targets"][0]["artifact"] == "../.." and report["targets"][0]["target"] == "tf-serving"
    assert not list(tfs_repo.root.glob(".kexport-*")), "temporary directory left in the repository"


def test_two_versions_side_by_side_in_models_config(tfs_repo):
    from kexport.targets.tf_serving.proto import model_versions, served_versions

    assert model_versions(tfs_repo.root / "digits_cnn") == [1, 2]
    assert _digest(tfs_repo.root / "digits_cnn" / "1") == tfs_repo.v1_before, "version 1 changed"
    config = read_config(tfs_repo.root / "models.config")
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == set(SAMPLE_MODELS)
    for name, entry in entries.items():
        assert entry.base_path == f"/models/{name}" and entry.model_platform == "tensorflow"
    assert list(entries["digits_cnn"].model_version_policy.specific.versions) == [1, 2]
    assert served_versions(entries["digits_cnn"], [1, 2]) == [1, 2]
    assert list(entries["wine_mlp"].model_version_policy.specific.versions) == [1]
    assert tfs_repo.results[("digits_cnn", 2)].targets[0].extra["served_versions"] == [1, 2]


_SIG = re.compile(r"^signature_def\['(.+)'\]:$")
_TENSOR = re.compile(r"^\s+(inputs|outputs)\['(.+)'\] tensor_info:$")
_FIELD = re.compile(r"^\s+(dtype|shape): (.+)$")
_METHOD = re.compile(r"^\s+Method name is: (.*)$")


def parse_show_all(text: str) -> dict:
    """{signature: {"method", "inputs": {key: (DT_..., shape)}, "outputs": {...}}} from
    `saved_model_cli show --all`."""
    sigs, sig, tensor = {}, None, None
    for line in text.splitlines():
        if m := _SIG.match(line):
            sig = sigs.setdefault(m[1], {"method": None, "inputs": {}, "outputs": {}})
        elif sig is not None and (m := _TENSOR.match(line)):
            tensor = sig[m[1]].setdefault(m[2], {})
        elif tensor is not None and (m := _FIELD.match(line)):
            tensor[m[1]] = m[2].strip()
        elif sig is not None and (m := _METHOD.match(line)):
            sig["method"] = m[1].strip()
            tensor = None
    shape = lambda s: tuple(int(d) for d in s.strip("()").split(",") if d.strip())  # noqa: E731
    return {k: {"method": v["method"], **{part: {n: (t["dtype"], shape(t["shape"])) for n, t in v[part].items()}
                                          for part in ("inputs", "outputs")}}
            for k, v in sigs.items() if not k.startswith("__")}


def test_saved_model_cli_show_lists_both_signatures(tfs_repo):
    from kexport.targets.tf_serving.checks import read_signature_defs
    from kexport.runtimes.tf_saved_model_cli import saved_model_cli

    vdir = tfs_repo.root / "digits_cnn" / "2"
    proc = subprocess.run([saved_model_cli(), "show", "--dir", str(vdir), "--all"], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-500:]
    shown = parse_show_all(proc.stdout)
    predict = "tensorflow/serving/predict"
    assert shown == {
        "serving_default": {"method": predict, "inputs": {"pixels": ("DT_FLOAT", (-1, 8, 8, 1))},
                            "outputs": {"digit": ("DT_FLOAT", (-1, 10))}},
        "classify": {"method": predict, "inputs": {"pixels": ("DT_FLOAT", (-1, 8, 8, 1))},
                     "outputs": {"classes": ("DT_STRING", (-1, 3)), "scores": ("DT_FLOAT", (-1, 3))}},
    }
    # the in-process check run on every version reads the same thing the CLI prints
    tf_names = {"DT_FLOAT": "float32", "DT_STRING": "string"}
    in_process = read_signature_defs(vdir)
    assert {k: {"method": v["method"], **{p: {n: (tf_names[d], s) for n, (d, s) in v[p].items()}
                                          for p in ("inputs", "outputs")}}
            for k, v in shown.items()} == in_process


def test_warmup_requests_parse_and_replay(tfs_repo):
    """Independent of the export's own check: parse every warmup file with tensorflow-serving-api's
    protos, replay each request through the SavedModel, compare with the stored Keras outputs."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    for name, version in VERSIONS:
        vdir = tfs_repo.root / name / str(version)
        ref_in, ref_out = tfs_repo.reference(name, version)
        key = lambda arrays, i: b"".join(arrays[k][i].tobytes() for k in sorted(arrays))  # noqa: E731
        where = {key(ref_in, i): i for i in range(len(next(iter(ref_in.values()))))}
        loaded = tf.saved_model.load(str(vdir))
        records = list(tf.data.TFRecordDataset(str(vdir / "assets.extra" / "tf_serving_warmup_requests")))
        assert 2 <= len(records) <= 1000
        signatures = set()
        for record in records:
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            req = log.predict_log.request
            assert req.model_spec.name == name
            signatures.add(req.model_spec.signature_name)
            feed = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
            assert sorted(feed) == sorted(ref_in)
            rows = [where[key(feed, i)] for i in range(len(next(iter(feed.values()))))]
            got = loaded.signatures[req.model_spec.signature_name](**feed)
            if req.model_spec.signature_name == "serving_default":
                for out, want in ref_out.items():
                    np.testing.assert_allclose(got[out].numpy(), want[rows], rtol=0, atol=1e-5 + 1e-4 * np.abs(want).max())
            else:
                order = np.argsort(-ref_out["digit"][rows], axis=-1)[:, :3]
                assert [[c.decode() for c in r] for r in got["classes"].numpy()] == [[LABELS[j] for j in r] for r in order]
        assert signatures == ({"serving_default", "classify"} if version == 2 else {"serving_default"})


def test_readme_and_compose_match_the_repository(tfs_repo):
    from kexport.targets.tf_serving.readme import serving_image

    readme = (tfs_repo.root / "README.md").read_text()
    compose = (tfs_repo.root / "docker-compose.yml").read_text()
    run = re.search(r"^docker run .*?(?=^```)", readme, re.S | re.M)[0].replace("\\\n", " ")
    argv = shlex.split(run)
    assert serving_image() in argv and argv[argv.index(serving_image()) - 1].endswith("target=/models,readonly")
    flags = argv[argv.index(serving_image()) + 1:]
    assert "--model_config_file=/models/models.config" in flags
    assert "--batching_parameters_file=/models/batching_parameters.txt" in flags
    assert re.findall(r"^      - (--\S+)$", compose, re.M) == flags
    assert f"image: {serving_image()}" in compose
    for name in SAMPLE_MODELS:
        assert f"## {name}\n" in readme
        bodies = re.findall(rf"-d @(examples/{re.escape(name)}/\S+)", readme)
        assert len(bodies) == (3 if name == "digits_cnn" else 2)
        for body in bodies:
            doc = json.loads((tfs_repo.root / body).read_text())
            assert ("instances" in doc) != ("inputs" in doc)


def _readme_requests(readme: str, name: str):
    """(path, body file) of every predict curl the README shows for one model."""
    return re.findall(rf"curl -s -X POST http://localhost:8501(/v1/models/{re.escape(name)}:predict) .*-d @(\S+)", readme)


@pytest.mark.parametrize("name", ["digits_cnn", "two_in_two_out"])
def test_readme_requests_answered_by_generated_flask_server(tfs_repo, tmp_path, name):
    """A client written for this bundle works against the generated Flask server: the README's
    own REST requests (row and columnar) get Keras' answers, in TF-Serving's response shapes."""
    import kexport
    from kexport.targets import all_targets

    if "flask" not in all_targets():
        pytest.skip("the flask target (issue 5) is not registered yet")
    from kexport.targets.flask import FlaskOptions
    from kexport.runtimes.flask_http import GunicornServer, http

    opts = ExportOptions(verify=False, target_options={"flask": FlaskOptions(name=name, workers=1, threads=2)})
    result = kexport.export(str(SAMPLE_MODELS[name]), ["flask"], tmp_path, options=opts)
    (row,) = result.targets
    assert row.status == "ok", row.error
    readme = (tfs_repo.root / "README.md").read_text()
    requests = _readme_requests(readme, name)
    assert {Path(f).name for _, f in requests} >= {"predict_rows.json", "predict_columns.json"}
    _, ref_out = tfs_repo.reference(name, 1)
    outs = list(ref_out)
    server = GunicornServer(tmp_path / row.artifact, workers=1)
    try:
        server.wait_ready()
        for path, body in requests:
            doc = json.loads((tfs_repo.root / body).read_text())
            status, _, data = http("POST", server.url + path, json.dumps(doc).encode(), {"Content-Type": "application/json"})
            answer = json.loads(data)
            if doc["signature_name"] != "serving_default":  # the Flask app serves serving_default only
                assert status == 400 and "error" in answer, (status, answer)
                continue
            assert status == 200, answer
            n = len(doc["instances"]) if "instances" in doc else len(next(iter(doc["inputs"].values())))
            if "instances" in doc:
                preds = answer["predictions"]
                got = {outs[0]: preds} if len(outs) == 1 else {o: [p[o] for p in preds] for o in outs}
            else:
                got = {outs[0]: answer["outputs"]} if len(outs) == 1 else answer["outputs"]
            for o in outs:  # ONNX Runtime in the app vs Keras: the fp32 tolerance of the flask target
                want = ref_out[o][:n]
                np.testing.assert_allclose(np.asarray(got[o], np.float32), want, rtol=0, atol=1e-5 + 1e-4 * np.abs(want).max())
    finally:
        server.stop()


def test_published_report_reverifies(tfs_repo):
    from kexport.api import verify

    result = verify(tfs_repo.report_dir("two_in_two_out", 1))
    assert result.ok, result.failures()
    # verify re-runs everything the export ran: both runtimes and the TF-Serving checks
    assert [p.runtime for p in result.targets[0].parity] == list(CHECKS)
    assert all(p.status == "passed" for p in result.targets[0].parity)


# ----------------------------------------------------------------------------- bad input, no model load
def test_batching_defaults_round_trip_and_flags(tmp_path):
    from kexport.cli import build_parser
    from kexport.cli import _options

    def options_from_args(args):
        return _options(args).target_options["tf-serving"], None

    d = BatchingParameters().validated()
    assert BatchingParameters.from_text(d.to_text()) == d
    args = build_parser().parse_args(["tf-serving", "m.keras", "-o", str(tmp_path), "--max-batch-size", "64",
                                      "--num-batch-threads", "2"])
    topts, _ = options_from_args(args)
    assert topts.batching == BatchingParameters(max_batch_size=64, num_batch_threads=2, allowed_batch_sizes=(8, 16, 32, 64))
    args = build_parser().parse_args(["tf-serving", "m.keras", "-o", str(tmp_path), "--allowed-batch-sizes", "none"])
    assert options_from_args(args)[0].batching.allowed_batch_sizes == ()


@pytest.mark.parametrize("params,needle", [
    (dict(num_batch_threads=0), "--num-batch-threads 0 is out of range"),
    (dict(max_batch_size=70000, allowed_batch_sizes=()), "--max-batch-size 70000 is out of range"),
    (dict(batch_timeout_micros=-1), "--batch-timeout-micros -1 is out of range"),
    (dict(allowed_batch_sizes=(8, 32)), None),
    (dict(allowed_batch_sizes=(8, 16)), "must equal --max-batch-size (32)"),
    (dict(allowed_batch_sizes=(16, 8, 32)), "strictly increasing"),
])
def test_batching_validation(params, needle):
    p = BatchingParameters(**params)
    if needle is None:
        assert p.validated() is p
    else:
        with pytest.raises(UsageError, match=re.escape(needle)):
            p.validated()


def _cli(*argv) -> tuple[int, str]:
    import contextlib
    import io

    from kexport.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["tf-serving", *argv])
    return code, err.getvalue().strip()


@pytest.mark.parametrize("argv,needle", [
    (["--name", "a/b"], "model name 'a/b' cannot be served"),
    (["--name", "bad:name"], "model name 'bad:name' cannot be served"),
    (["--name", ".hidden"], "cannot be served"),
    (["--max-batch-size", "0"], "--max-batch-size 0 is out of range"),
    (["--allowed-batch-sizes", "4,x"], "not a comma-separated list"),
    (["--version-policy", "newest"], "--version-policy 'newest' is not one of"),
    (["--signature", "classify"], "needs --class-labels"),
    (["--top-k", "3"], "--top-k configure the top-k signature, which needs --class-labels"),
    (["--class-labels", "/nonexistent/labels.txt"], "--class-labels file not found"),
    (["--quantize", "int8"], "--quantize does not apply"),
])
def test_bad_flags_one_line_error_repo_untouched(tmp_path, argv, needle):
    repo = tmp_path / "repo"
    code, err = _cli(str(SAMPLE_MODELS["iris_keras2"]), "-o", str(repo), *argv)
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not repo.exists()


def test_missing_repo_flag():
    code, err = _cli(str(SAMPLE_MODELS["iris_keras2"]))
    assert code == 2 and "-o REPO" in err


def _fake_model(repo: Path, name: str, versions) -> None:
    for v in versions:
        (repo / name / str(v)).mkdir(parents=True)
        (repo / name / str(v) / "saved_model.pb").write_bytes(b"")


def test_models_config_policies(tmp_path):
    """Bookkeeping only (no SavedModel is loaded): which policy each entry gets and keeps."""
    from kexport.targets.tf_serving.proto import build_config, config_text, parse_version_policy, served_versions

    repo = tmp_path / "repo"
    _fake_model(repo, "a", [1, 2])
    _fake_model(repo, "b", [3])
    (repo / "c" / "junk").mkdir(parents=True)  # no version directory: not a model
    (repo / ".kexport-tf-serving-x" / "1").mkdir(parents=True)
    old = read_config(repo / "models.config")
    cfg = build_config(repo, old, "/models/", "a", parse_version_policy("latest:2"), extra_versions=[3])
    (repo / "models.config").write_text(config_text(cfg))
    entries = {c.name: c for c in read_config(repo / "models.config").model_config_list.config}
    assert sorted(entries) == ["a", "b"] and entries["a"].base_path == "/models/a"
    assert entries["a"].model_version_policy.latest.num_versions == 2
    assert served_versions(entries["a"], [1, 2, 3]) == [2, 3]
    assert list(entries["b"].model_version_policy.specific.versions) == [3]
    # b gets a new version without --version-policy: its specific list grows; a keeps latest:2
    cfg = build_config(repo, read_config(repo / "models.config"), "/models", "b", None, extra_versions=[4])
    entries = {c.name: c for c in cfg.model_config_list.config}
    assert list(entries["b"].model_version_policy.specific.versions) == [3, 4]
    assert entries["a"].model_version_policy.latest.num_versions == 2
    cfg = build_config(repo, cfg, "/models", "a", parse_version_policy("all"))
    assert served_versions(cfg.model_config_list.config[0], [1, 2]) == [1, 2]
    with pytest.raises(UsageError, match=r"lists versions \[7\]"):
        build_config(repo, cfg, "/models", "a", parse_version_policy("specific:1,7"))
    (repo / "models.config").write_text("model_config_list { bogus: 1 }")
    with pytest.raises(UsageError, match="not a ModelServerConfig text proto"):
        read_config(repo / "models.config")


# ----------------------------------------------------------------------------- versions, force, failures
@pytest.fixture
def iris_repo(tmp_path):
    """A repository with iris at version 1, written without the parity checks (they are covered
    by the session repository above; here only the repository bookkeeping is under test)."""
    repo = tmp_path / "repo"
    r = export_repository(str(SAMPLE_MODELS["iris_keras2"]), repo, TFServingOptions(name="iris"), ExportOptions(verify=False))
    assert r.ok and (repo / "iris" / "1" / "saved_model.pb").exists()
    return repo


def test_existing_version_refused_unless_force(iris_repo):
    before = _snapshot(iris_repo)
    code, err = _cli(str(SAMPLE_MODELS["iris_keras2"]), "-o", str(iris_repo), "--name", "iris", "--version", "1")
    assert code == 2 and "version 1 already exists; pass --force" in err and len(err.splitlines()) == 1
    assert _snapshot(iris_repo) == before
    old_report = (iris_repo / "iris" / "1" / "assets.extra" / "kexport" / "report.json").read_text()
    r = export_repository(str(SAMPLE_MODELS["iris_keras2"]), iris_repo,
                          TFServingOptions(name="iris", version=1, force=True, version_policy="specific"),
                          ExportOptions(verify=False, samples=3))
    assert r.ok
    new_report = (iris_repo / "iris" / "1" / "assets.extra" / "kexport" / "report.json").read_text()
    assert new_report != old_report
    with np.load(iris_repo / "iris" / "1" / "assets.extra" / "kexport" / "reference" / "inputs.npz") as z:
        assert len(z["measurements"]) == 3
    assert sorted(p.name for p in (iris_repo / "iris").iterdir()) == ["1"]  # no leftover of the old version
    entry = read_config(iris_repo / "models.config").model_config_list.config[0]
    assert list(entry.model_version_policy.specific.versions) == [1]


def test_failed_run_changes_nothing(iris_repo, tmp_path, monkeypatch):
    from kexport.targets import get_target

    before = _snapshot(iris_repo)
    labels = tmp_path / "labels.txt"
    labels.write_text("setosa\nversicolor\n")  # the model has 3 classes
    with pytest.raises(UsageError, match=r"2 labels fit no classifier output \{.species.: \[None, 3\]\}"):
        export_repository(str(SAMPLE_MODELS["iris_keras2"]), iris_repo,
                          TFServingOptions(name="iris", class_labels=str(labels)), ExportOptions(verify=False))
    assert _snapshot(iris_repo) == before
    # checks that fail (a negative tolerance no answer can meet) must not publish anything;
    # saved_model_cli is left out here for time, it is exercised by the session repository
    monkeypatch.setattr(type(get_target("tf-serving")), "runtimes", ("tf-saved-model",))
    r = export_repository(str(SAMPLE_MODELS["iris_keras2"]), iris_repo, TFServingOptions(name="iris"),
                          ExportOptions(atol=-1.0, rtol=0.0))
    assert not r.ok and r.targets[0].extra["published"] is False
    # a negative tolerance no answer meets: values fail, or (Keras' own noise floor above it) nothing is judged
    assert {p.runtime for p in r.targets[0].parity if p.status in ("failed", "uninformative")} >= {"tf-saved-model", "warmup-replay"}
    assert _snapshot(iris_repo) == before
    fresh = tmp_path / "fresh"
    r = export_repository(str(SAMPLE_MODELS["iris_keras2"]), fresh, TFServingOptions(), ExportOptions(atol=-1.0, rtol=0.0))
    assert not r.ok and not fresh.exists()


def test_next_free_version_and_new_model_listed(iris_repo):
    r = export_repository(str(SAMPLE_MODELS["wine_mlp"]), iris_repo, TFServingOptions(name="wine"), ExportOptions(verify=False))
    r2 = export_repository(str(SAMPLE_MODELS["iris_keras2"]), iris_repo, TFServingOptions(name="iris"), ExportOptions(verify=False))
    assert r.targets[0].extra["version"] == 1 and r2.targets[0].extra["version"] == 2
    names = [c.name for c in read_config(iris_repo / "models.config").model_config_list.config]
    assert names == ["iris", "wine"]
    assert sorted(p.name for p in iris_repo.iterdir()) == sorted(
        ["iris", "wine", "examples", "models.config", "batching_parameters.txt", "README.md", "docker-compose.yml"])


@pytest.mark.parametrize("name,ok", [("digits", True), ("a.b-c_1", True), ("x" * 128, True), ("x" * 129, False),
                                     ("-lead", False), ("sp ace", False), ("", False), ("ü", False)])
def test_model_name_rule(name, ok):
    from kexport.targets.tf_serving.proto import check_model_name

    if ok:
        assert check_model_name(name) == name
    else:
        with pytest.raises(UsageError, match="cannot be served"):
            check_model_name(name)


@pytest.mark.parametrize("sig", ["serving_default", "top k", "1st", ""])
def test_extra_signature_name_rule(sig):
    from kexport.targets.tf_serving.proto import check_signature_name

    with pytest.raises(UsageError, match="not a usable extra signature name"):
        check_signature_name(sig)


def test_saved_model_cli_runtime_refuses_a_non_savedmodel(tmp_path):
    from kexport.runtimes import get_runtime

    rt = get_runtime("tf-saved-model-cli")
    assert rt.available() is None
    with pytest.raises(RuntimeError, match="no saved_model.pb"):
        rt.load(str(tmp_path))
