"""The public pipeline: check targets -> load model once -> reference data -> per target
(preflight -> convert -> verify -> move into place) -> report.json.

Example (a release step):
    import kexport
    result = kexport.export("model.keras", targets=["tflite", "onnx"], out_dir="dist", raise_on_failure=True)
    print(result.to_json()["targets"][0]["parity"])
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import __version__
from .errors import KexportError, ParityError, UsageError
from .options import ExportOptions
from .report import REPORT_NAME, ExportResult, TargetResult, load_report
from .scratch import owner_tag, sweep, temp_dir

REFERENCE_DIR = "reference"
CORE_PACKAGES = ("tensorflow", "keras", "tf_keras", "numpy")  # the reference; targets declare theirs

Progress = Callable[[str], None]


def resolve_targets(targets: Iterable[str] | str) -> list:
    from .targets import all_targets, get_target

    names = [targets] if isinstance(targets, str) else list(targets)
    if not names:
        raise UsageError("no target given; pass one of: " + ", ".join(sorted(all_targets())) + " or 'all'")
    if "all" in names:
        return list(all_targets().values())
    return [get_target(n) for n in dict.fromkeys(names)]


def check_writable(out_dir: Path) -> None:
    """Fail early when -o cannot be created or written, without creating it (a missing or refused
    model must not leave an empty output directory behind)."""
    import os

    probe = Path(out_dir).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{out_dir}: output directory is not writable ({probe} is not a writable directory); "
                         "pass -o with a writable path")


def ensure_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".kexport-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{out_dir}: output directory is not writable ({e.strerror}); pass -o with a writable path") from e


def versions() -> dict:
    from .targets import all_targets

    out = {}
    declared = [p for t in all_targets().values() for p in t.packages]
    for pkg in dict.fromkeys(CORE_PACKAGES + tuple(declared)):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def load_inputs(path, signature) -> dict[str, np.ndarray]:
    """User reference inputs from an .npz with arrays named after the model inputs."""
    from .quantize import load_npz

    return load_npz(path, signature, "--inputs")[0]


def build_context(model_path, options: ExportOptions, progress: Progress | None = None):
    """Load the model once and compute the Keras reference outputs."""
    from .reference import KerasSession

    from .context import ExportContext
    from .loader import load_model, sha256_of, signature_of
    from .parity import conditioned, reference_inputs

    path = Path(model_path)
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    say(f"loading {path}")
    model = load_model(path, safe_mode=options.safe_mode, custom_objects=options.custom_objects)
    sig = signature_of(model)
    load_s = time.perf_counter() - t0
    if options.inputs:
        inputs = load_inputs(options.inputs, sig)
    elif options.eval or options.calibration:  # real samples: quantized variants are judged in distribution, not on noise
        from .quantize import eval_reference_inputs

        inputs = eval_reference_inputs(model, sig, options)
    else:
        inputs = reference_inputs(sig, options.samples, shapes=options.input_shapes, model=model)
    t1 = time.perf_counter()
    outputs = KerasSession(model, sig).predict(inputs)
    # noise floor + a second input size for free dimensions (exporter/reference_data.py)
    outputs = conditioned(model, sig, inputs, outputs, samples=options.samples, shapes=options.input_shapes)
    ctx = ExportContext(model, path, sha256_of(path), sig, inputs, outputs)
    ctx.timings = {"load_model": round(load_s, 3), "keras_reference": round(time.perf_counter() - t1, 3)}
    return ctx


def export(model, targets=("all",), out_dir="kexport-out", *, options: ExportOptions | None = None,
           verify: bool | None = None, raise_on_failure: bool = False, progress: Progress | None = None) -> ExportResult:
    """Export `model` (a path) to each target, verify each artifact, write report.json.

    Args:
        model: path to a .keras / .h5 file or a SavedModel directory.
        targets: target names, or "all".
        out_dir: where artifacts, reference data and report.json go.
        options: ExportOptions (shared and per-target options).
        verify: override options.verify.
        raise_on_failure: raise ParityError (carrying the result) when anything failed.
        progress: callback receiving one line per step.

    Returns:
        ExportResult, the same content as report.json.
    """
    options = options or ExportOptions()
    if verify is not None:
        options = dataclasses.replace(options, verify=verify)
    say = progress or (lambda s: None)
    run_t0 = time.perf_counter()
    chosen = resolve_targets(targets)
    if options.quantize:
        from .quantize import check_thresholds, check_vocabulary

        for line in check_vocabulary(options.quantize, chosen):
            say(line)  # a deprecated spelling, still accepted
        check_thresholds(options.min_agreement, options.max_accuracy_drop)
    out = Path(out_dir)
    check_writable(out)
    sweep(out)  # OUT/.kexport-* left by a killed run (their owner process is gone)
    if Path(model).exists():
        prestart(chosen, options)
    ctx = build_context(model, options, say)
    ctx.export_options = options  # calibration / eval data for quantized variants (exporter/quantize.py)
    try:
        previous = previous_rows(out, ctx.model_sha256)
        ensure_writable(out)
        result = ExportResult(
            kexport_version=__version__,
            model={"path": str(model), "sha256": ctx.model_sha256, "parameters": _parameters(ctx.model),
                   **ctx.signature.to_json()},
            versions=versions(), out_dir=str(out), seconds=dict(ctx.timings),
            allow_unverified=options.allow_unverified,
        )
        result.targets.extend(run_targets(chosen, ctx, out, options, say))
        result.seconds["total"] = round(time.perf_counter() - run_t0, 3)
        _write_report_and_reference(out, ctx, result, previous)
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    if raise_on_failure and not result.ok:
        raise ParityError("export failed: " + " | ".join(result.failures()), result)
    return result


def prestart(targets: list, options: ExportOptions) -> None:
    """Start the runtimes' long-lived processes (Node, the JVM: `Runtime.prepare`) in a background
    thread while TensorFlow imports and the model loads; their first session then finds them up."""
    if not options.verify:
        return
    import threading

    from .runtimes import get_runtime

    names = list(dict.fromkeys(n for t in targets for n in t.runtimes))

    def run():
        for name in names:
            try:
                get_runtime(name).prepare()
            except Exception:  # reported by available()/load() when the runtime is used  # noqa: BLE001
                pass

    threading.Thread(target=run, name="kexport-prestart", daemon=True).start()


def _parameters(model) -> int | None:
    try:
        return int(model.count_params())
    except Exception:  # a SavedModel wrapped as a functional model may not count  # noqa: BLE001
        return None


def previous_rows(out: Path, model_sha256: str) -> list[dict]:
    """The rows of an earlier export in `out` (kept for the targets this run does not replace).
    An export of another model is never mixed with this one's: refused, nothing touched."""
    path = out / REPORT_NAME
    if not path.exists():
        return []
    try:
        report = load_report(path)
        old_sha, rows = report["model"]["sha256"], list(report["targets"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: unreadable report of an earlier export ({e}); remove {out} or pass another -o") from e
    if old_sha != model_sha256:
        raise UsageError(f"{out}: holds the export of another model ({report['model'].get('path')}, sha256 "
                         f"{old_sha[:12]}...); pass a new -o directory (or remove this one) to export this model")
    return rows


def _write_report_and_reference(out: Path, ctx, result, previous: list[dict]) -> None:
    """reference/ and report.json together: the reference data of this run (same model as any
    earlier rows, see previous_rows), and the rows of every target on disk: this run's where it
    wrote an artifact, the earlier ones where it did not (a failed attempt is noted on them)."""
    from .digest import tree_sha256
    from .parity import save_conditioning

    tmp = temp_dir(".kexport-ref-", dir=out)
    np.savez(tmp / "inputs.npz", **ctx.inputs)
    np.savez(tmp / "outputs.npz", **ctx.outputs)
    save_conditioning(tmp, ctx.outputs)
    data = result.to_json()
    data["reference"] = {f.name: tree_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    data["targets"] = merge_rows(previous, result.targets)
    _swap_into_place(tmp, out / REFERENCE_DIR)
    write_json_atomic(out / REPORT_NAME, data)
    from .report_html import render

    render(data, out)


def merge_rows(previous: list[dict], rows: list) -> list[dict]:
    replaced = {r.target for r in rows if r.artifact}
    attempted = {r.target: r for r in rows if not r.artifact}
    merged = []
    for old in previous:
        if old["target"] in replaced:
            continue
        if old["target"] in attempted and old.get("artifact"):
            new = attempted[old["target"]]
            old = dict(old, last_attempt={"status": new.status, "error": new.error})
        elif old["target"] in attempted:
            continue
        merged.append(old)
    kept = {r["target"] for r in merged}
    return merged + [r.to_json() for r in rows if r.target not in kept]


def write_json_atomic(path: Path, data: dict) -> None:
    from .report import write_json

    write_json(path, data)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` so that a reader sees either the old or the new one, never half."""
    old = None
    if final.exists():
        old = final.with_name(f".kexport-old-{final.name}-{owner_tag()}{uuid.uuid4().hex[:8]}")  # swept if killed
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _tolerance(target, variant, topts, options: ExportOptions):
    tol = target.tolerance_for(variant, topts)
    if options.atol is not None or options.rtol is not None:
        tol = dataclasses.replace(tol, atol=tol.atol if options.atol is None else options.atol,
                                  rtol=tol.rtol if options.rtol is None else options.rtol)
    return tol


def overlapped(options: ExportOptions, targets: list) -> bool:
    """Convert the next target while this one is verified? Not when latency is measured
    (--benchmark, the variants' latency under --quantize): a conversion running beside the
    timed calls would slow them down."""
    return options.verify and not options.benchmark and not options.quantize and len(targets) > 1


def run_targets(targets: list, ctx, out: Path, options: ExportOptions, say: Progress) -> list[TargetResult]:
    """Every target in order, the rows in that order: sequentially, or overlapped
    (exporter/overlap.py: conversions in one worker thread, the runtimes' checks beside them)."""
    if overlapped(options, targets):
        from .overlap import run_overlapped

        return run_overlapped(targets, ctx, out, options, say)
    rows: list[TargetResult] = []
    for i, target in enumerate(targets, 1):
        say(f"[{i}/{len(targets)}] {target.name}")
        rows.extend(run_target(target, ctx, out, options, say))
    return rows


@dataclasses.dataclass
class Converted:
    """One target converted into its temp dir, not yet verified nor moved into place."""

    target: object
    topts: object
    tmp: Path | None = None
    produced: list = dataclasses.field(default_factory=list)  # (row, artifact | None) per variant
    refused: TargetResult | None = None


def run_target(target, ctx, out: Path, options: ExportOptions, say: Progress) -> list[TargetResult]:
    """One target: requirements -> preflight -> each variant (convert, verify) -> variant
    metrics -> the artifacts swapped into OUT/<target>/ (only when something converted)."""
    return finish_target(convert_target(target, ctx, out, options, say), ctx, out, options, say)


def convert_target(target, ctx, out: Path, options: ExportOptions, say: Progress) -> Converted:
    """Requirements -> preflight -> each variant converted into a temp dir under `out`."""
    topts = options.for_target(target)
    refused = _refusal(target, ctx, topts)
    if refused:
        return Converted(target, topts, refused=refused)
    tmp = temp_dir(f".kexport-{target.name}-", dir=out)
    rel = (out / target.name).relative_to(out)
    try:
        produced = [_convert_variant(target, ctx, tmp, rel, topts, variant, say) for variant in target.variants(topts)]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release_memory()
    return Converted(target, topts, tmp, produced)


def finish_target(conv: Converted, ctx, out: Path, options: ExportOptions, say: Progress,
                  verdicts: list | None = None) -> list[TargetResult]:
    """Verify each converted variant -> variant metrics -> swap into OUT/<target>/ (only when
    something converted; the verdicts are in the rows before anything is moved). `verdicts`:
    per variant, its parity rows when they were computed elsewhere (exporter/overlap.py)."""
    if conv.refused:
        return [conv.refused]
    target, topts, tmp = conv.target, conv.topts, conv.tmp
    try:
        for (row, art), parity in zip(conv.produced, verdicts or [None] * len(conv.produced)):
            if art is not None and options.verify:
                _verify_variant(target, ctx, topts, options, row, art, say, parity)
        results = [row for row, _ in conv.produced]
        if options.quantize and options.verify and len(results) > 1:
            from .variant_metrics import measure_variants

            built = [(row, art) for row, art in conv.produced if art is not None]
            measure_variants(target, ctx, options, built, tmp, say)  # size/speed/accuracy + the gate
        if any(r.artifact for r in results):
            _swap_into_place(tmp, out / target.name)
    finally:
        discard(conv)
    return results


def discard(conv: Converted) -> None:
    if conv.tmp is not None and conv.tmp.exists():
        shutil.rmtree(conv.tmp, ignore_errors=True)


def _refusal(target, ctx, topts) -> TargetResult | None:
    """An `unsupported` row when the converter is missing or preflight lists problems."""
    from .errors import UnsupportedError

    missing = target.missing_requirements()
    if missing:
        return TargetResult(target.name, status="unsupported",
                            error=f"converter not installed ({', '.join(missing)}); pip install 'kexport[{target.pip_extra or 'all'}]'")
    t0 = time.perf_counter()
    try:
        problems = target.preflight(ctx, topts)
    except UsageError:
        raise  # the user's flags or files (labels that fit no output): exit 2, before any conversion
    except KexportError as e:
        problems = [str(e)]
    if not problems:
        return None
    return TargetResult(target.name, status="unsupported", error=str(UnsupportedError(target.name, problems)),
                        seconds=round(time.perf_counter() - t0, 3))


def _run_variant(target, ctx, tmp: Path, rel: Path, topts, options: ExportOptions, variant: str, say: Progress):
    """(row, artifact | None) for one variant: convert into tmp, then verify."""
    row, art = _convert_variant(target, ctx, tmp, rel, topts, variant, say)
    if art is not None and options.verify:
        _verify_variant(target, ctx, topts, options, row, art, say)
    return row, art


def _convert_variant(target, ctx, tmp: Path, rel: Path, topts, variant: str, say: Progress):
    """(row, artifact | None) for one variant converted into tmp (a failure is the row's status)."""
    v0 = time.perf_counter()
    row = TargetResult(target.name, variant)
    try:
        art = target.export(ctx, tmp, topts, variant)
    except KexportError as e:
        row.status = "unsupported" if type(e).__name__ == "UnsupportedError" else "failed"
        row.error, row.seconds = str(e), round(time.perf_counter() - v0, 3)
        say(f"    {variant}: {row.status}: {row.error}")
        return row, None
    row.seconds = round(time.perf_counter() - v0, 3)
    from .digest import tree_sha256

    row.notes, row.size_bytes, row.sha256 = art.notes, _size(art.path), tree_sha256(art.path)
    row.artifact = str(rel / art.path.relative_to(tmp))
    row.extra = dict(art.extra)
    if art.runtime_options:
        row.extra["runtime_options"] = art.runtime_options
    if art.skip:
        row.extra["runtime_skip"] = art.skip
    say(f"    {variant}: converted in {row.seconds:.1f}s ({row.size_bytes} bytes)")
    return row, art


def _verify_variant(target, ctx, topts, options: ExportOptions, row: TargetResult, art, say: Progress,
                    parity: list | None = None) -> None:
    """Parity on each of the target's runtimes plus its checks(), into `row` (then --benchmark)."""
    from .parity import check_artifact

    if parity is None:
        tol = _tolerance(target, row.variant, topts, options)
        noise, note = target.conditioning(art)
        parity = check_artifact(art, target.runtimes, ctx.inputs, ctx.outputs, tol, noise=noise, note=note)
        parity += target.checks(ctx, art, topts, tol)
    row.parity = parity
    for p in row.parity:
        say(f"    {row.variant} on {p.runtime}: {p.status}" + (f" ({p.reason})" if p.reason else ""))
    mark_unverified(row)
    if options.benchmark:
        row.extra["benchmark"] = benchmark(art, row, ctx, say)


def benchmark(art, row: TargetResult, ctx, say) -> dict:
    """{runtime: {ms, per_second, rounds, stable}} for every runtime that passed: one sample,
    3 warm-up calls, then windows of 10 until two windows' medians agree within 5% (or 10 s)."""
    from .runtimes import all_runtimes
    from .runtimes.latency import measure

    sample = {k: v[:1] for k, v in ctx.inputs.items()}
    out = {}
    for p in row.parity:
        if p.status != "passed" or p.runtime not in all_runtimes():  # checks without a runtime are not timed
            continue
        if p.device:  # emulated (litert-arm64 under qemu): a time, but not this device's speed
            out[p.runtime] = {"ms": None, "per_second": None, "error": f"not timed: runs on {p.device}"}
            continue
        res = measure(p.runtime, [(str(art.path), art.runtime_options)], sample, budget_s=10.0, max_rounds=2000,
                      min_rounds=20, window=10)
        ms = (res.get("ms") or [None])[0]
        out[p.runtime] = {"ms": ms, "per_second": round(1000.0 / ms, 1) if ms else None,
                          "rounds": res.get("rounds"), "stable": res.get("stable"), "error": res.get("error")}
        say(f"    {row.variant} on {p.runtime}: " + (f"{ms:.3f} ms per inference" if ms else f"not timed ({res.get('error')})"))
    return out


def mark_unverified(row: TargetResult) -> None:
    """A converted artifact that no runtime checked (every row skipped) is `unverified`, never ok."""
    if row.status == "ok" and row.parity and all(p.status == "skipped" for p in row.parity):
        row.status = "unverified"
        row.error = "no runtime here could check this artifact: " + "; ".join(
            f"{p.runtime}: {p.reason}" for p in row.parity if p.reason)


def release_memory() -> None:
    """After each conversion: collect the converter's reference cycles (TF graphs, MIL programs)
    and hand freed heap back to the OS (glibc keeps it mapped), so that the peak resident set is
    about the largest conversion, not the sum of what every target leaves behind."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


class _VerifyContext:
    """What a target's checks() may use when re-verifying an export directory (no model loaded)."""

    def __init__(self, inputs, outputs, model: dict):
        from .signature import ModelSignature

        self.inputs, self.outputs = inputs, outputs
        self.signature = ModelSignature.from_json(model)


def verify(out_dir, *, progress: Progress | None = None, allow_unverified: bool = False,
           atol: float | None = None, rtol: float | None = None) -> ExportResult:
    """Re-check every artifact of an export directory against its stored reference data.

    Nothing in report.json is trusted but the list of artifacts: each artifact's and the
    reference data's sha256 must match what the export recorded, paths must stay inside the
    directory, every runtime of the target runs again (whatever status a row claims), with the
    target's documented tolerance (or atol/rtol), and sizes are read from the disk."""
    from .parity import load_conditioning

    out = Path(out_dir)
    rpath = out / REPORT_NAME
    if not rpath.exists():
        raise UsageError(f"{out}: no {REPORT_NAME}; pass a directory written by 'kexport all' or 'kexport TARGET'")
    try:
        report = load_report(rpath)
        _check_reference(out, report)
        with np.load(out / REFERENCE_DIR / "inputs.npz", allow_pickle=False) as z:
            inputs = {k: z[k] for k in z.files}
        with np.load(out / REFERENCE_DIR / "outputs.npz", allow_pickle=False) as z:
            outputs = {k: z[k] for k in z.files}
        outputs = load_conditioning(out / REFERENCE_DIR, outputs)
        rows = list(report["targets"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{out}: report or reference data unreadable ({e}); re-run the export") from e
    say = progress or (lambda s: None)
    result = ExportResult(report.get("kexport_version", "?"), report["model"], versions=versions(), out_dir=str(out),
                          allow_unverified=allow_unverified)
    options = ExportOptions(atol=atol, rtol=rtol)
    for row in rows:
        result.targets.append(_verify_row(out, row, inputs, outputs, report["model"], options, say))
    return result


def _check_reference(out: Path, report: dict) -> None:
    from .digest import tree_sha256

    recorded = report.get("reference")
    if not recorded:
        raise UsageError(f"{out / REPORT_NAME}: no sha256 of the reference data (written by an older kexport?); re-run the export")
    for name, sha in recorded.items():
        path = out / REFERENCE_DIR / Path(name).name
        if tree_sha256(path) != sha:
            raise ParityError(f"{path}: reference data changed since the export (sha256 differs from report.json); "
                              "re-run the export")


def _artifact_path(out: Path, rel: str) -> Path | None:
    """The artifact inside the export directory, or None. The one exception: a report published
    inside the TF-Serving version it describes (NAME/<v>/assets.extra/kexport/) points at '../..'."""
    from .targets.tf_serving import REPORT_DIR

    root = out.resolve()
    path = (root / rel).resolve()
    if path == root or root in path.parents:
        return path
    if rel == "../.." and root.parts[-2:] == REPORT_DIR:
        return root.parent.parent
    return None


def _verify_row(out: Path, row: dict, inputs, outputs, model: dict, options: ExportOptions, say) -> TargetResult:
    from .digest import tree_sha256
    from .parity import check_artifact
    from .targets import Artifact, get_target

    tr = TargetResult(row["target"], row.get("variant", "fp32"), row.get("status", "failed"), row.get("artifact"),
                      notes=list(row.get("notes", [])), error=row.get("error"))
    if not row.get("artifact"):
        return tr  # unsupported / failed at export: nothing on disk to check
    target = get_target(row["target"])
    path = _artifact_path(out, row["artifact"])
    if path is None:
        tr.status, tr.error = "failed", f"{row['artifact']}: artifact path leaves the export directory {out}; refused"
        return tr
    if not path.exists():
        tr.status, tr.error = "failed", f"{path}: artifact missing"
        return tr
    from .targets.tf_serving import REPORT_DIR

    exclude = Path(*REPORT_DIR) if row["artifact"] == "../.." else None
    sha = tree_sha256(path, exclude=exclude)
    if sha != row.get("sha256"):
        tr.status, tr.error = "failed", (f"{path}: artifact changed since the export (sha256 {sha[:12]}..., report.json "
                                          f"says {str(row.get('sha256'))[:12]}...); re-run the export")
        return tr
    tr.status, tr.size_bytes, tr.sha256 = "ok", _size(path), sha
    art = Artifact(path, tr.variant, runtime_options=row.get("runtime_options", {}), skip=row.get("runtime_skip", {}))
    tol = _tolerance(target, tr.variant, target.Options(), options)
    noise, note = target.conditioning(art)
    say(f"verifying {row['target']}/{tr.variant}")
    tr.parity = check_artifact(art, target.runtimes, inputs, outputs, tol, noise=noise, note=note)
    tr.parity += target.checks(_VerifyContext(inputs, outputs, model), art, target.Options(), tol)
    mark_unverified(tr)
    return tr
