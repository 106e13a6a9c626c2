"""`kexport tf-serving`: a TF-Serving model repository, proved without the server binary.

REPO/
  NAME/<version>/                 SavedModel (serving_default keyed by Keras names, optional
                                  top-k signature), assets.extra/tf_serving_warmup_requests,
                                  assets.extra/kexport/{report.json, reference/*.npz}
  models.config                   ModelServerConfig naming every model directory in REPO
  batching_parameters.txt         BatchingParameters
  examples/NAME/*.json            the REST bodies the README's curl commands send
  README.md, docker-compose.yml

The version is built in REPO/.kexport-tf-serving-*/ and checked there (SavedModel loader,
`saved_model_cli run`, signature defs, warmup replay); only a bundle that passed is renamed into
place, so a failed run leaves REPO as it was. See docs/tf_serving.md.

Example:
    from kexport.targets.tf_serving import TFServingOptions, export_repository
    result = export_repository("model.keras", "repo", TFServingOptions(name="digits"))
    assert result.ok and (Path("repo/digits/1/saved_model.pb")).exists()
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...errors import KexportError, UsageError
from ...options import ExportOptions
from .proto import BATCHING_NAME, CONFIG_NAME, WARMUP_NAME, BatchingParameters

RUNTIMES = ("tf-saved-model", "tf-saved-model-cli")  # the SavedModel loader, `saved_model_cli run`
REPORT_DIR = ("assets.extra", "kexport")  # inside the version: travels with it, ignored by TF-Serving
EXAMPLES_DIR = "examples"
EXAMPLE_ROWS = 2  # rows per example REST body: enough to show the batch structure, short to read
EXAMPLE_MAX_ROW_VALUES = 50_000  # above this (e.g. a 224x224x3 image, ~3 MB of JSON) one row only


@dataclass(frozen=True)
class TFServingOptions:
    """Options of `kexport tf-serving` (see `kexport tf-serving --help`)."""

    name: str | None = None  # model name in REPO and in the REST path; default: the model file's stem
    version: int | None = None  # default: one above the highest version in REPO/NAME
    force: bool = False  # replace an existing version directory
    version_policy: str | None = None  # latest[:N] | all | specific[:V1,V2]; None: see build_config
    base_path: str = "/models"  # where REPO is mounted inside the container
    batching: BatchingParameters | None = None  # None: keep REPO's file, or write the defaults
    signature: str | None = None  # extra top-k signature name (needs class_labels)
    class_labels: str | None = None  # text file, one label per line, in output order
    top_k: int | None = None  # default min(5, classes)
    classifier_output: str | None = None  # default: the only (batch, classes>1) output
    repository: str | None = None  # publishing: the repository whose models.config the new one extends


def add_arguments(p) -> None:
    """Flags of the target (and of `kexport tf-serving`, where -o names the repository)."""
    p.add_argument("--name", help="model name in the repository and the REST path (default: model file name)")
    p.add_argument("--version", type=int, help="version directory (default: the next free one; 1 in a fresh bundle)")
    p.add_argument("--force", action="store_true", help="replace the version directory if it exists")
    p.add_argument("--version-policy", help="latest, latest:N, all, specific or specific:V1,V2 (default: "
                   "a new model or a specific list serves every published version; other policies are kept)")
    p.add_argument("--base-path", default="/models", help="mount point of the repository in the container (default /models)")
    d = BatchingParameters()
    for field, value in (("max_batch_size", d.max_batch_size), ("batch_timeout_micros", d.batch_timeout_micros),
                         ("num_batch_threads", d.num_batch_threads), ("max_enqueued_batches", d.max_enqueued_batches)):
        p.add_argument(f"--{field.replace('_', '-')}", type=int, help=f"batching parameter (default {value})")
    p.add_argument("--allowed-batch-sizes", help="comma-separated, increasing, last = max batch size "
                   f"(default {','.join(map(str, d.allowed_batch_sizes))}; 'none' to allow every size)")
    p.add_argument("--signature", help="name of an extra top-k classification signature (default 'classify' "
                   "when --class-labels is given)")
    p.add_argument("--class-labels", metavar="LABELS.txt", help="one class label per line, in output order")
    p.add_argument("--top-k", type=int, help="labels returned by the extra signature (default min(5, classes))")
    p.add_argument("--classifier-output", help="output the extra signature ranks (default: the only classifier output)")


def options_from_args(args) -> TFServingOptions:
    """`args`: the target's own namespace (see cli.target_namespace)."""
    batching = None
    given = {f: getattr(args, f) for f in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                                           "max_enqueued_batches") if getattr(args, f) is not None}
    if given or args.allowed_batch_sizes is not None:
        d = BatchingParameters()
        sizes = d.allowed_batch_sizes
        if args.allowed_batch_sizes is not None:
            text = args.allowed_batch_sizes.strip().lower()
            try:
                sizes = () if text in ("", "none") else tuple(int(s) for s in text.split(","))
            except ValueError as e:
                raise UsageError(f"tf-serving: --allowed-batch-sizes {args.allowed_batch_sizes!r} is not a "
                                 "comma-separated list of integers") from e
        elif "max_batch_size" in given:  # keep the documented default shape: pad to max only
            sizes = tuple(b for b in sizes if b < given["max_batch_size"]) + (given["max_batch_size"],)
        batching = replace(d, allowed_batch_sizes=sizes, **given)
    return TFServingOptions(name=args.name, version=args.version, force=args.force, version_policy=args.version_policy,
                            base_path=args.base_path, batching=batching, signature=args.signature,
                            class_labels=args.class_labels, top_k=args.top_k, classifier_output=args.classifier_output)


def run_command(model, repo, topts: TFServingOptions, eopts: ExportOptions, progress=None):
    """`kexport tf-serving MODEL -o REPO`: the target, then publishing into REPO."""
    if not repo:
        raise UsageError("kexport tf-serving: pass the repository directory with -o REPO")
    given = [f for f in ("quantize", "calibration", "eval") if getattr(eopts, f)]
    if given:
        raise UsageError(f"kexport tf-serving: --{given[0]} does not apply (TF-Serving serves the fp32 SavedModel); "
                         "use 'kexport tflite/onnx --quantize' for quantized variants")
    return export_repository(model, repo, topts, eopts, progress=progress)


# ----------------------------------------------------------------------------- pipeline
def export_repository(model, repo, options: TFServingOptions | None = None, export_options: ExportOptions | None = None,
                      progress=None):
    """Add one version of `model` to the TF-Serving repository `repo`: the `tf-serving` target
    run exactly as `kexport all` runs it (export, runtimes, checks), then published into REPO.
    Returns the ExportResult (also written to REPO/NAME/<version>/assets.extra/kexport/report.json
    when published)."""
    from ... import __version__
    from ...api import build_context, ensure_writable, run_target, versions
    from ...report import ExportResult
    from ...scratch import sweep, temp_dir
    from ..base import get_target
    from .proto import check_model_name

    options = options or TFServingOptions()
    eopts = export_options or ExportOptions()
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    repo = Path(repo)
    name = check_model_name(options.name or Path(model).stem.replace(".", "_"))
    check_options(options)
    created_repo = not repo.exists()
    ensure_writable(repo)
    sweep(repo)
    tmp = ctx = None
    published = False
    try:
        version = _choose_version(repo / name, options)
        topts = replace(options, name=name, version=version, repository=str(repo))
        ctx = build_context(model, eopts, say)
        ctx.export_options = eopts
        tmp = temp_dir(".kexport-tf-serving-", dir=repo)  # named after this process: a later run sweeps it if killed
        result = ExportResult(__version__, {"path": str(model), "sha256": ctx.model_sha256, **ctx.signature.to_json()},
                              versions=versions(), seconds=dict(ctx.timings))
        target = get_target("tf-serving")
        result.targets += run_target(target, ctx, tmp, replace(eopts, target_options={target.name: topts}), say)
        row = result.targets[0]
        row.extra.update(repository=str(repo.resolve()), published=False)
        result.seconds["total"] = round(time.perf_counter() - t0, 3)
        if not result.ok or row.status != "ok":
            say(f"checks failed: nothing published, {repo} left unchanged")
            return result
        bundle = tmp / target.name
        vdir = bundle / name / str(version)
        row.extra.update(published=True)
        row.artifact = "../.."  # the report lives in NAME/<version>/assets.extra/kexport/
        _write_report(result, vdir.joinpath(*REPORT_DIR), ctx)
        _publish(bundle, repo, name, version, options.force)
        published = True
        result.out_dir = str(repo / name / str(version) / Path(*REPORT_DIR))
        say(f"published {repo / name / str(version)}")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if ctx is not None:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
        if created_repo and not published:  # the repository did not exist before this run
            shutil.rmtree(repo, ignore_errors=True)


def check_options(options: "TFServingOptions") -> None:
    """Every flag checked before anything is loaded or converted (UsageError: exit 2)."""
    from .proto import check_model_name, parse_version_policy

    if options.name:
        check_model_name(options.name)
    if options.version_policy:
        parse_version_policy(options.version_policy)
    if options.batching:
        options.batching.validated()
    _extra_signature_name(options)


def write_bundle(ctx, dest: Path, options: "TFServingOptions"):
    """The target's artifact: a repository holding this model's version (dest/NAME/<version>/),
    models.config (merged with `options.repository`'s when publishing), the batching file, the
    example REST bodies, README and compose file. Returns (version_dir, extra report fields)."""
    from .proto import check_model_name, parse_version_policy, read_config

    repo = Path(options.repository) if options.repository else dest
    name = check_model_name(options.name or ctx.name)
    version = options.version or 1
    policy = parse_version_policy(options.version_policy) if options.version_policy else None
    batching = options.batching.validated() if options.batching else _current_batching(repo)
    classify = _classify_spec(ctx, options, _extra_signature_name(options))
    vdir = dest / name / str(version)
    extra = _build_version(ctx, vdir, name, classify, batching.max_batch_size)
    served = _write_bundle_files(dest, repo, name, version, ctx, classify, read_config(repo / CONFIG_NAME),
                                 policy, batching, options)
    extra.update(model_name=name, version=version, batching=batching.to_json(),
                 version_policy=options.version_policy, served_versions=served)
    return vdir, extra


def version_checks(ctx, vdir: Path, options, tol) -> list:
    """The parity rows TF-Serving adds to the runtimes': signature defs as `saved_model_cli show`
    prints them, the warmup records replayed, and the top-k signature."""
    import tensorflow as tf

    from .checks import classify_row, signature_defs_row, warmup_row

    classify = _classify_spec(ctx, options, _extra_signature_name(options))
    rows = [signature_defs_row(vdir, ctx.signature, classify, tol)]
    loaded = tf.saved_model.load(str(vdir))
    rows.append(warmup_row(loaded, vdir, ctx.inputs, ctx.outputs, tol, classify))
    if classify:
        rows.append(classify_row(loaded, ctx.inputs, ctx.outputs, tol, classify))
    return rows


def _extra_signature_name(options) -> str | None:
    from .proto import check_signature_name

    given = [f for f, v in (("--signature", options.signature), ("--top-k", options.top_k),
                            ("--classifier-output", options.classifier_output)) if v is not None]
    if given and not options.class_labels:
        raise UsageError(f"tf-serving: {', '.join(given)} configure the top-k signature, which needs --class-labels LABELS.txt")
    if not options.class_labels:
        return None
    if not Path(options.class_labels).is_file():
        raise UsageError(f"{options.class_labels}: --class-labels file not found")
    return check_signature_name(options.signature or "classify")


def _choose_version(model_dir: Path, options) -> int:
    taken = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.is_dir() else []
    following = (taken[-1] + 1) if taken else 1
    if options.version is None:
        return following
    if options.version < 1:
        raise UsageError(f"tf-serving: --version {options.version}: versions are positive integers")
    if options.version in taken and not options.force:
        raise UsageError(f"{model_dir / str(options.version)}: version {options.version} already exists; pass --force "
                         f"to replace it, or omit --version for the next free one ({following})")
    return options.version


def _current_batching(repo: Path) -> BatchingParameters:
    path = repo / BATCHING_NAME
    if not path.exists():
        return BatchingParameters()
    try:
        return BatchingParameters.from_text(path.read_text()).validated()
    except (KexportError, ValueError) as e:
        raise UsageError(f"{path}: not usable BatchingParameters ({e}); fix it, delete it, or pass batching flags") from e


def _classify_spec(ctx, options, extra_sig) -> dict | None:
    if extra_sig is None:
        return None
    from ...labels import classifier_output, read_labels

    labels = read_labels(options.class_labels)
    out = classifier_output(ctx.signature, labels, options.class_labels, "tf-serving", options.classifier_output)
    classes = len(labels)
    k = options.top_k or min(5, classes)
    if not 1 <= k <= classes:
        raise UsageError(f"tf-serving: --top-k {k} must be between 1 and {classes} (the classes of '{out}')")
    return {"signature": extra_sig, "labels": labels, "top_k": k, "output": out}


def _build_version(ctx, vdir: Path, name: str, classify, max_rows: int) -> dict:
    from .proto import predict_log, warmup_batches, write_warmup

    if classify:
        _write_two_signature_model(ctx, vdir, classify)
    else:
        src, _ = ctx.saved_model(rewrite=False)
        shutil.copytree(src, vdir)
    logs = [predict_log(name, "serving_default", {k: v[rows] for k, v in ctx.inputs.items()})
            for rows in warmup_batches(ctx.inputs, max_rows)]
    if classify:
        first = warmup_batches(ctx.inputs, max_rows)[0]
        logs.append(predict_log(name, classify["signature"], {k: v[first] for k, v in ctx.inputs.items()}))
    n = write_warmup(vdir / "assets.extra" / WARMUP_NAME, logs)
    signatures = ["serving_default"] + ([classify["signature"]] if classify else [])
    return {"signatures": signatures, "warmup_records": n,
            **({"classify": {k: v for k, v in classify.items() if k != "labels"}} if classify else {})}


def _write_two_signature_model(ctx, path: Path, classify: dict) -> None:
    """serving_default (the Keras outputs) plus a top-k endpoint returning {"classes", "scores"},
    both over the one traced serving function, so they cannot disagree."""
    import keras
    import tensorflow as tf

    from ...context import tensor_specs

    _, serve, _ = ctx.serving_function(rewrite=False)
    labels, k, out = classify["labels"], classify["top_k"], classify["output"]

    def top_k(*args):
        scores, idx = tf.math.top_k(serve(*args)[out], k=k)
        return {"classes": tf.gather(tf.constant(labels), idx), "scores": scores}

    archive = keras.export.ExportArchive()
    archive.track(ctx.model)
    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint(classify["signature"], tf.function(top_k, input_signature=tensor_specs(ctx.signature),
                                                           autograph=False))
    archive.write_out(str(path), verbose=False)


# ----------------------------------------------------------------------------- bundle files
def _write_bundle_files(tmp, repo, name, version, ctx, classify, old_config, policy, batching, options) -> list:
    """models.config, batching file, examples, README and compose file for the repository as it
    will be once the new version is in place. Returns the served versions of `name`."""
    from .proto import build_config, config_text, model_versions, served_versions
    from .readme import render_repository_files

    config = build_config(repo, old_config, options.base_path, name, policy, extra_versions=[version])
    (tmp / CONFIG_NAME).write_text(config_text(config))
    (tmp / BATCHING_NAME).write_text(batching.to_text())
    examples = tmp / EXAMPLES_DIR / name
    examples.mkdir(parents=True)
    per_row = sum(int(np.prod(v.shape[1:])) for v in ctx.inputs.values())
    n = min(len(next(iter(ctx.inputs.values()))), 1 if per_row > EXAMPLE_MAX_ROW_VALUES else EXAMPLE_ROWS)
    rows = {k: v[:n] for k, v in ctx.inputs.items()}
    bodies = {"predict_rows.json": {"signature_name": "serving_default",
                                    "instances": [{k: v[i].tolist() for k, v in rows.items()} for i in range(n)]},
              "predict_columns.json": {"signature_name": "serving_default", "inputs": {k: v.tolist() for k, v in rows.items()}}}
    if classify:
        bodies[f"{classify['signature']}_rows.json"] = dict(bodies["predict_rows.json"], signature_name=classify["signature"])
    for fname, body in bodies.items():
        (examples / fname).write_text(json.dumps(body) + "\n")
    render_repository_files(tmp, repo, config, batching, options.base_path,
                            current={"name": name, "version": version, "signature": ctx.signature,
                                     "classify": classify, "examples": sorted(bodies)})
    entry = next(c for c in config.model_config_list.config if c.name == name)
    return served_versions(entry, sorted(set(model_versions(repo / name)) | {version}))


def _write_report(result, report_dir: Path, ctx) -> None:
    """report.json + reference data inside the version, with their sha256 (what `verify` checks)."""
    from ...digest import tree_sha256
    from ...parity import save_conditioning
    from ...report import write_json

    ref = report_dir / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    np.savez(ref / "inputs.npz", **ctx.inputs)
    np.savez(ref / "outputs.npz", **ctx.outputs)
    save_conditioning(ref, ctx.outputs)
    data = result.to_json()
    data["reference"] = {f.name: tree_sha256(f) for f in sorted(ref.iterdir()) if f.is_file()}
    write_json(report_dir / "report.json", data)


def _publish(tmp: Path, repo: Path, name: str, version: int, force: bool) -> None:
    """Rename the checked version into REPO/NAME/ (TF-Serving polls that directory, so it must
    never see a half-written version), then replace the repository files one atomic rename each."""
    model_dir = repo / name
    model_dir.mkdir(exist_ok=True)
    final = model_dir / str(version)
    old = None
    if final.exists():
        if not force:  # another run took this version meanwhile
            raise UsageError(f"{final}: version {version} appeared while exporting; re-run (or pass --force)")
        old = model_dir / f".{version}.old-{uuid.uuid4().hex[:8]}"  # TF-Serving skips non-numeric names
        final.rename(old)
    try:
        (tmp / name / str(version)).rename(final)
    except OSError:
        if old is not None:
            old.rename(final)
        raise
    for fname in (CONFIG_NAME, BATCHING_NAME, "README.md", "docker-compose.yml"):
        (tmp / fname).replace(repo / fname)
    ex_final = repo / EXAMPLES_DIR / name
    ex_final.parent.mkdir(exist_ok=True)
    stale = None
    if ex_final.exists():
        stale = tmp / "stale-examples"
        ex_final.rename(stale)
    (tmp / EXAMPLES_DIR / name).rename(ex_final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
