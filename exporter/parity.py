"""The parity engine, written once: reference inputs, then for every runtime of an artifact
compare outputs by *name*: names -> shapes -> values, collecting every mismatch.

Error measures, per output, over all elements and the well-conditioned samples:
    max_abs_err = max |artifact - keras|
    max_rel_err = max_abs_err / max |keras|        (relative to the output's scale)
A row passes when max_abs_err <= atol + rtol * max|keras| for every output and, where the
tolerance sets `min_top1`, top-1 agreement on classifier-like outputs is at least that.

Two measures keep the verdict about the artifact, not about the inputs (docs/report.md):
- noise floor: Keras is run again on the inputs moved by one float32 ulp; a sample whose Keras
  output moves by more than the tolerance is ill-conditioned (e.g. a saturated network where one
  ulp flips the winning class). It is left out of the verdict and counted (`ill_conditioned`);
  a row with no sample left is `uninformative`.
- top-1 on near ties: a classifier sample counts for top-1 agreement only where the reference's
  top-2 margin exceeds twice the tolerance bound (an error the tolerance allows could swap the
  two otherwise); the others are counted (`ambiguous_top1`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .reference_data import (  # noqa: F401  (re-exported: the public names of the engine)
    SEED, ReferenceOutputs, conditioned, load_conditioning, reference_inputs, save_conditioning)

DEFAULT_SAMPLES = 8


@dataclass
class ParityRow:
    runtime: str
    status: str  # passed | failed | skipped | uninformative
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    atol: float | None = None
    rtol: float | None = None
    top1_agreement: float | None = None
    reason: str | None = None
    seconds: float | None = None
    outputs: dict = field(default_factory=dict)  # per-output errors
    device: str | None = None  # where the runtime ran, when not natively on this host (Runtime.device)
    samples: int | None = None  # reference samples compared (every checked input size)
    ill_conditioned: int | None = None  # samples left out: Keras itself moves beyond the tolerance
    ambiguous_top1: int | None = None  # classifier samples whose top-2 margin is inside the tolerance
    input_shapes: list = field(default_factory=list)  # [{input: shape}] checked (free dimensions: two)
    tolerance_note: str | None = None  # why the tolerance differs from the target's (float16 compute)

    def to_json(self) -> dict:
        return asdict(self)


# A mixed_float16 model computes in half precision (11-bit mantissa, relative rounding 4.9e-4 per
# op); artifacts compute in float32 (or keep the model's casts). Their difference is the float16
# compute error of the Keras reference itself, the same error an fp16 Core ML program shows:
# measured there (docs/coreml.md) from 2.3e-4 to 4.1e-2 of the output scale, bounded by atol 1e-3
# + rtol 5e-2. A target tolerance that is already looser stays.
FLOAT16_COMPUTE = (1e-3, 5e-2)


def for_compute_dtype(tol, reference):
    """The tolerance widened to the reference's half-precision compute error, with the reason."""
    import dataclasses

    dtype = getattr(reference, "compute_dtype", "float32")
    if dtype != "float16":
        return tol, None
    atol, rtol = max(tol.atol, FLOAT16_COMPUTE[0]), max(tol.rtol, FLOAT16_COMPUTE[1])
    if (atol, rtol) == (tol.atol, tol.rtol):
        return tol, None
    return dataclasses.replace(tol, atol=atol, rtol=rtol), (
        f"tolerance atol {atol} + rtol {rtol}: the Keras reference computes in float16 (mixed_float16 policy)")


def is_classifier(ref: np.ndarray) -> bool:
    return ref.ndim == 2 and ref.shape[1] > 1


def top1_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return float((ref.argmax(axis=-1) == got.argmax(axis=-1)).mean())


def top2_margin(ref: np.ndarray) -> np.ndarray:
    part = np.sort(np.asarray(ref, np.float64), axis=-1)
    return part[:, -1] - part[:, -2]


def uninformative(reference: dict[str, np.ndarray]) -> str | None:
    """A reference that barely varies across samples proves nothing (e.g. random-weight models
    whose softmax is uniform): every runtime would "match". Returns the reason, or None."""
    flat = []
    for name, ref in reference.items():
        ref = np.asarray(ref)
        if ref.dtype.kind not in "biuf":
            return None  # strings vary or not; no spread to measure
        ref = ref.astype(np.float64)
        if ref.shape[0] < 2:
            return None
        scale = float(np.max(np.abs(ref))) or 1.0
        spread = float(np.max(np.ptp(ref, axis=0)))
        if spread > 1e-4 * scale:
            return None
        flat.append(f"{name} varies by {spread:.2e} across samples (scale {scale:.2e})")
    return "reference outputs barely vary across inputs: " + "; ".join(flat)


def well_conditioned(reference: dict, tol) -> np.ndarray | None:
    """Boolean mask of the samples whose Keras noise floor is inside the tolerance (None: all)."""
    noise = getattr(reference, "noise", None)
    if not noise:
        return None
    return inside(noise, reference, tol)


def beyond(reference: dict, got: dict, tol) -> np.ndarray:
    """Boolean mask of the samples on which some float output is off by more than the tolerance
    (or not finite); outputs missing or of another shape are left to compare()."""
    n = len(next(iter(reference.values())))
    out = np.zeros(n, dtype=bool)
    for name, ref in reference.items():
        ref = np.asarray(ref)
        val = np.asarray(got.get(name)) if name in got else None
        if val is None or val.shape != ref.shape or ref.dtype.kind not in "biuf" or not ref.size:
            continue
        ref64, val64 = ref.astype(np.float64).reshape(n, -1), val.astype(np.float64).reshape(n, -1)
        bound = tol.atol + tol.rtol * float(np.max(np.abs(ref64)))
        with np.errstate(invalid="ignore"):
            out |= ~(np.abs(val64 - ref64) <= bound).all(axis=1)
    return out


def inside(noise: dict, reference: dict, tol) -> np.ndarray | None:
    """Boolean mask of the samples whose deviation in `noise` ({output: per sample}) is inside
    the tolerance of every output (None when no output has one)."""
    keep = None
    for name, dev in noise.items():
        if name not in reference:
            continue
        ref = np.asarray(reference[name])
        if ref.dtype.kind not in "biuf" or len(np.atleast_1d(dev)) != len(ref):
            continue
        scale = float(np.max(np.abs(ref.astype(np.float64)))) if ref.size else 0.0
        ok = np.asarray(dev) <= tol.atol + tol.rtol * scale
        keep = ok if keep is None else keep & ok
    return keep


def compare(runtime: str, reference: dict, got: dict, tol, keep: np.ndarray | None = None) -> ParityRow:
    """Names, then shapes, then values; every mismatch is collected into one row. `keep` masks
    the samples that count for values and top-1 (the others are ill-conditioned)."""
    problems = []
    missing = sorted(set(reference) - set(got))
    extra = sorted(set(got) - set(reference))
    if missing:
        problems.append(f"missing outputs {missing} (got {sorted(got)})")
    if extra:
        problems.append(f"unexpected outputs {extra}")
    worst_abs = worst_rel = 0.0
    top1 = None
    ambiguous = 0
    per = {}
    for name in sorted(set(reference) & set(got)):
        ref = np.asarray(reference[name])
        val = np.asarray(got[name])
        if val.shape != ref.shape:
            problems.append(f"{name}: shape {val.shape} != {ref.shape}")
            continue
        if ref.dtype.kind not in "biufc":  # strings (a lookup's output): exact equality
            wrong = int(np.sum(ref.astype(str) != val.astype(str)))
            if wrong:
                problems.append(f"{name}: {wrong} of {ref.size} strings differ")
            per[name] = {"mismatches": wrong}
            continue
        if keep is not None:
            ref, val = ref[keep], val[keep]
        ref64, val64 = ref.astype(np.float64), val.astype(np.float64)
        if not np.all(np.isfinite(val64)):
            problems.append(f"{name}: non-finite values")
            continue
        scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
        err = float(np.max(np.abs(val64 - ref64))) if ref64.size else 0.0
        rel = err / scale if scale else err
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        entry = {"max_abs_err": err, "max_rel_err": rel, "scale": scale}
        bound = tol.atol + tol.rtol * scale
        if is_classifier(ref) and len(ref):
            decisive = top2_margin(ref) > 2 * bound
            amb = int((~decisive).sum())
            ambiguous += amb
            entry["ambiguous_top1"] = amb
            if decisive.any():
                agree = top1_agreement(ref[decisive], val[decisive])
                entry["top1_agreement"] = agree
                top1 = agree if top1 is None else min(top1, agree)
                if tol.min_top1 is not None and agree < tol.min_top1:
                    problems.append(f"{name}: top-1 agreement {agree:.3f} < {tol.min_top1} "
                                    f"(on {int(decisive.sum())} samples whose top-2 margin exceeds 2 x {bound:.3g})")
        if err > bound:
            problems.append(f"{name}: max abs err {err:.3g} > {bound:.3g} (atol {tol.atol} + rtol {tol.rtol} x {scale:.3g})")
        per[name] = entry
    n = len(next(iter(reference.values()))) if reference else 0
    return ParityRow(
        runtime=runtime,
        status="failed" if problems else "passed",
        max_abs_err=worst_abs, max_rel_err=worst_rel, atol=tol.atol, rtol=tol.rtol,
        top1_agreement=top1, reason="; ".join(problems) or None, outputs=per,
        samples=int(keep.sum()) if keep is not None else n,
        ill_conditioned=int((~keep).sum()) if keep is not None else 0, ambiguous_top1=ambiguous,
    )


def _shapes(inputs: dict) -> dict:
    return {k: list(np.shape(v)[1:]) for k, v in inputs.items()}


def _merge(rows: list[ParityRow]) -> ParityRow:
    """One row for the sizes checked: worst errors, every problem, counts summed."""
    first = rows[0]
    if len(rows) == 1:
        return first
    failed = [r for r in rows if r.status == "failed"]
    top1 = [r.top1_agreement for r in rows if r.top1_agreement is not None]
    reasons = [f"at {r.input_shapes[0]}: {r.reason}" for r in failed]
    outputs = {}
    for r in rows:
        for k, v in r.outputs.items():
            outputs.setdefault(k, v)
            for m in ("max_abs_err", "max_rel_err"):
                if m in v and m in outputs[k]:
                    outputs[k] = {**outputs[k], m: max(outputs[k][m], v[m])}
    return ParityRow(
        first.runtime, "failed" if failed else "passed",
        max_abs_err=max(r.max_abs_err or 0.0 for r in rows), max_rel_err=max(r.max_rel_err or 0.0 for r in rows),
        atol=first.atol, rtol=first.rtol, top1_agreement=min(top1) if top1 else None,
        reason="; ".join(reasons) or None, outputs=outputs, samples=sum(r.samples or 0 for r in rows),
        ill_conditioned=sum(r.ill_conditioned or 0 for r in rows),
        ambiguous_top1=sum(r.ambiguous_top1 or 0 for r in rows),
        input_shapes=[s for r in rows for s in r.input_shapes],
    )


def _judge(name: str, sets: list, got_sets: list, tol, noise: list | None = None) -> ParityRow:
    rows = []
    for i, ((ref_in, ref_out), got) in enumerate(zip(sets, got_sets)):
        keep = well_conditioned(ref_out, tol)
        if noise and i < len(noise):  # excused: beyond the bound where the artifact's arithmetic explains it
            own = inside(noise[i], ref_out, tol)
            if own is not None:
                excused = ~own & beyond(ref_out, got, tol)
                keep = ~excused if keep is None else keep & ~excused
        if keep is not None and not keep.any():
            continue
        row = compare(name, ref_out, got, tol, keep)
        row.input_shapes = [_shapes(ref_in)]
        if keep is not None and keep.all():
            row.ill_conditioned = 0
        rows.append(row)
    total = sum(len(next(iter(s[1].values()))) for s in sets)
    if not rows:
        return ParityRow(name, "uninformative", atol=tol.atol, rtol=tol.rtol, samples=0, ill_conditioned=total,
                         reason=f"all {total} reference samples are ill-conditioned: Keras' own output moves "
                                f"beyond the tolerance when the inputs move by one float32 ulp"
                                + (" or when it computes in the artifact's precision" if noise else ""),
                         input_shapes=[_shapes(s[0]) for s in sets])
    row = _merge(rows)
    row.ill_conditioned = total - row.samples
    return row


def check_artifact(artifact, runtime_names, reference_in, reference_out, tol, *, model=None, signature=None,
                   noise: list | None = None, note: str | None = None):
    """Run the artifact in each runtime; an unavailable runtime is a skipped row with its reason.

    `reference_out` may carry (as a ReferenceOutputs) the Keras noise floor and reference data at
    a second input size (free dimensions): every runtime is checked on each size. `noise` (per
    reference set {output: per-sample deviation}) and `note`: what the artifact's own arithmetic
    does to the model (Target.conditioning): a sample the artifact gets wrong beyond the tolerance
    is left out (and counted) only where that deviation is beyond the tolerance too."""
    from kexport.runtimes import get_runtime
    from kexport.runtimes.base import UnsupportedOp
    from kexport.runtimes.isolated import IsolatedSession

    rows = []
    tol, tol_note = for_compute_dtype(tol, reference_out)
    tol_note = "; ".join(n for n in (note, tol_note) if n) or None
    sets = [(reference_in, reference_out)] + list(getattr(reference_out, "alternates", ()) or ())
    dull = uninformative(reference_out)
    # Absolute: runtimes run in other processes with other working directories (Node, gunicorn).
    path = str(Path(artifact.path).resolve())
    for name in runtime_names:
        rt = get_runtime(name)
        reason = artifact.skip.get(name) or rt.available()
        if reason:
            rows.append(ParityRow(name, "skipped", atol=tol.atol, rtol=tol.rtol, reason=reason, tolerance_note=tol_note))
            continue
        if getattr(rt, "validates", False):  # a validator (manifest schemas): problems, not outputs
            rows.append(_validation_row(rt, path, artifact.runtime_options, tol))
            continue
        t0 = time.perf_counter()
        session = None
        got_sets = []
        try:
            if rt.isolate:
                session = IsolatedSession(name, path, artifact.runtime_options)
            else:
                session = rt.load(path, **artifact.runtime_options)
            for ref_in, _ in sets:
                got_sets.append(session.predict(ref_in))
        except UnsupportedOp as e:  # the runtime cannot execute it: no verdict on the artifact
            rows.append(ParityRow(name, "skipped", atol=tol.atol, rtol=tol.rtol, reason=f"{name}: {e}",
                                  seconds=round(time.perf_counter() - t0, 3)))
            continue
        except Exception as e:  # the runtime refused the artifact: that is a parity failure
            msg = str(e).strip().splitlines()
            at = f" at input shapes {_shapes(sets[len(got_sets)][0])}" if len(sets) > 1 and session is not None else ""
            rows.append(ParityRow(name, "failed", atol=tol.atol, rtol=tol.rtol,
                                  reason=f"{name} could not run the artifact{at}: {msg[0][:400] if msg else type(e).__name__}",
                                  seconds=round(time.perf_counter() - t0, 3)))
            continue
        finally:
            if session is not None:
                session.close()
        row = _judge(name, sets, got_sets, tol, noise)
        row.seconds = round(time.perf_counter() - t0, 3)
        row.tolerance_note = tol_note
        if dull and row.status == "passed":
            row.status, row.reason = "uninformative", dull
        rows.append(row)
    for r in rows:  # e.g. litert-arm64: an arm64 userland emulated by qemu-user
        r.device = getattr(get_runtime(r.runtime), "device", None)
    return rows


def _validation_row(rt, path: str, options: dict, tol) -> ParityRow:
    """`passed` when the validator finds no problem; it computes no outputs, so no errors."""
    t0 = time.perf_counter()
    try:
        problems = rt.validate(path, **options)
    except Exception as e:  # an unreadable artifact is a failed check  # noqa: BLE001
        problems = [f"{rt.name} could not read the artifact: {str(e).strip()[:400] or type(e).__name__}"]
    return ParityRow(rt.name, "failed" if problems else "passed", atol=tol.atol, rtol=tol.rtol,
                     reason="; ".join(problems) or None, seconds=round(time.perf_counter() - t0, 3))
