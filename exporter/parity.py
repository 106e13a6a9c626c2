"""The parity engine, written once: reference inputs, then for every runtime of an artifact
compare outputs by *name*: names -> shapes -> values, collecting every mismatch.

Error measures, per output, over all elements and samples:
    max_abs_err = max |artifact - keras|
    max_rel_err = max_abs_err / max |keras|        (relative to the output's scale)
A row passes when max_abs_err <= atol + rtol * max|keras| for every output and, where the
tolerance sets `min_top1`, top-1 agreement on classifier-like outputs is at least that.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .signature import ModelSignature

DEFAULT_SAMPLES = 8
SEED = 20240611


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

    def to_json(self) -> dict:
        return asdict(self)


def reference_inputs(signature: ModelSignature, samples: int = DEFAULT_SAMPLES, seed: int = SEED):
    """Seeded data that fits each input: integers uniform in [0, int_high); floats feeding a
    Normalization layer normal around its mean/std; other floats uniform in [0, 1) (the range
    of scaled images)."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in signature.inputs:
        shape = (samples,) + tuple(1 if d is None else d for d in t.shape[1:])
        if "int" in t.dtype:
            out[t.name] = rng.integers(0, t.int_high or 10, size=shape).astype(t.dtype)
        elif t.mean is not None and t.std is not None:
            mean = np.asarray(t.mean).reshape(-1)
            std = np.asarray(t.std).reshape(-1)
            out[t.name] = (mean + std * rng.standard_normal(shape)).astype(t.dtype)
        elif t.dtype == "bool":
            out[t.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[t.name] = rng.random(shape, dtype=np.float64).astype(t.dtype)
    return out


def is_classifier(ref: np.ndarray) -> bool:
    return ref.ndim == 2 and ref.shape[1] > 1


def top1_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return float((ref.argmax(axis=-1) == got.argmax(axis=-1)).mean())


def uninformative(reference: dict[str, np.ndarray]) -> str | None:
    """A reference that barely varies across samples proves nothing (e.g. random-weight models
    whose softmax is uniform): every runtime would "match". Returns the reason, or None."""
    flat = []
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        if ref.shape[0] < 2:
            return None
        scale = float(np.max(np.abs(ref))) or 1.0
        spread = float(np.max(np.ptp(ref, axis=0)))
        if spread > 1e-4 * scale:
            return None
        flat.append(f"{name} varies by {spread:.2e} across samples (scale {scale:.2e})")
    return "reference outputs barely vary across inputs: " + "; ".join(flat)


def compare(runtime: str, reference: dict, got: dict, tol) -> ParityRow:
    """Names, then shapes, then values; every mismatch is collected into one row."""
    problems = []
    missing = sorted(set(reference) - set(got))
    extra = sorted(set(got) - set(reference))
    if missing:
        problems.append(f"missing outputs {missing} (got {sorted(got)})")
    if extra:
        problems.append(f"unexpected outputs {extra}")
    worst_abs = worst_rel = 0.0
    top1 = None
    per = {}
    for name in sorted(set(reference) & set(got)):
        ref = np.asarray(reference[name])
        val = np.asarray(got[name])
        if val.shape != ref.shape:
            problems.append(f"{name}: shape {val.shape} != {ref.shape}")
            continue
        ref64, val64 = ref.astype(np.float64), val.astype(np.float64)
        if not np.all(np.isfinite(val64)):
            problems.append(f"{name}: non-finite values")
            continue
        scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
        err = float(np.max(np.abs(val64 - ref64))) if ref64.size else 0.0
        rel = err / scale if scale else err
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        entry = {"max_abs_err": err, "max_rel_err": rel, "scale": scale}
        if is_classifier(ref):
            agree = top1_agreement(ref, val)
            entry["top1_agreement"] = agree
            top1 = agree if top1 is None else min(top1, agree)
            if tol.min_top1 is not None and agree < tol.min_top1:
                problems.append(f"{name}: top-1 agreement {agree:.3f} < {tol.min_top1}")
        bound = tol.atol + tol.rtol * scale
        if err > bound:
            problems.append(f"{name}: max abs err {err:.3g} > {bound:.3g} (atol {tol.atol} + rtol {tol.rtol} x {scale:.3g})")
        per[name] = entry
    return ParityRow(
        runtime=runtime,
        status="failed" if problems else "passed",
        max_abs_err=worst_abs, max_rel_err=worst_rel, atol=tol.atol, rtol=tol.rtol,
        top1_agreement=top1, reason="; ".join(problems) or None, outputs=per,
    )


def check_artifact(artifact, runtime_names, reference_in, reference_out, tol, *, model=None, signature=None):
    """Run the artifact in each runtime; an unavailable runtime is a skipped row with its reason."""
    from kexport.runtimes import get_runtime
    from kexport.runtimes.base import UnsupportedOp
    from kexport.runtimes.isolated import IsolatedSession

    rows = []
    dull = uninformative(reference_out)
    # Absolute: runtimes run in other processes with other working directories (Node, gunicorn).
    path = str(Path(artifact.path).resolve())
    for name in runtime_names:
        rt = get_runtime(name)
        reason = artifact.skip.get(name) or rt.available()
        if reason:
            rows.append(ParityRow(name, "skipped", atol=tol.atol, rtol=tol.rtol, reason=reason))
            continue
        t0 = time.perf_counter()
        session = None
        try:
            if rt.isolate:
                session = IsolatedSession(name, path, artifact.runtime_options)
            else:
                session = rt.load(path, **artifact.runtime_options)
            got = session.predict(reference_in)
        except UnsupportedOp as e:  # the runtime cannot execute it: no verdict on the artifact
            rows.append(ParityRow(name, "skipped", atol=tol.atol, rtol=tol.rtol, reason=f"{name}: {e}",
                                  seconds=round(time.perf_counter() - t0, 3)))
            continue
        except Exception as e:  # the runtime refused the artifact: that is a parity failure
            msg = str(e).strip().splitlines()
            rows.append(ParityRow(name, "failed", atol=tol.atol, rtol=tol.rtol,
                                  reason=f"{name} could not run the artifact: {msg[0][:400] if msg else type(e).__name__}",
                                  seconds=round(time.perf_counter() - t0, 3)))
            continue
        finally:
            if session is not None:
                session.close()
        row = compare(name, reference_out, got, tol)
        row.seconds = round(time.perf_counter() - t0, 3)
        if dull and row.status == "passed":
            row.status, row.reason = "uninformative", dull
        rows.append(row)
    return rows
