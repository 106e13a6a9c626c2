"""What each variant gains and costs, measured on this machine, and the gate that refuses a
variant that broke the model.

Per variant (report row fields, docs/quantization.md):
    size_ratio       size_bytes / size of the target's baseline artifact (fp32; CoreML: its default)
    top1_agreement   fraction of eval samples whose arg-max equals Keras' (worst classifier output)
    accuracy         fraction correct against the labels of --eval; null when there are no labels
    accuracy_delta   accuracy - Keras accuracy on the same data (null without labels)
    latency_ms       median single-sample latency in the target's runtime
    latency_ratio    latency_ms / baseline latency_ms, measured in the same process, interleaved
    gate             {status: passed | failed | skipped, reason}; baseline rows are never gated
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .quantize import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MIN_AGREEMENT, eval_data


def measure_variants(target, ctx, options, produced, tmp: Path, say=lambda s: None) -> None:
    """`produced` is [(TargetResult, Artifact)] in variant order; fills each row, applies the gate."""
    from kexport.runtimes.base import UnsupportedOp

    ok = [(r, a) for r, a in produced if r.status == "ok" and r.artifact]
    if len(ok) < 1:
        return
    base_row, base_art = next(((r, a) for r, a in ok if r.variant == "fp32"), ok[0])
    ev = eval_data(ctx)
    keras_acc = accuracy(ev.keras, ev.labels)
    runtime, why = _runtime_for(target, base_art)
    for row, art in ok:
        m = row.extra
        m.update(baseline_variant=base_row.variant, metrics_data={"source": ev.source, "samples": ev.n},
                 size_ratio=round(row.size_bytes / base_row.size_bytes, 4) if base_row.size_bytes else None,
                 keras_accuracy=keras_acc, top1_agreement=None, accuracy=None, accuracy_delta=None,
                 latency_ms=None, latency_ratio=None)
        reason = why or art.skip.get(runtime)
        if reason:
            m["metrics_skipped"] = reason
            continue
        try:
            got = _predict(runtime, art, ev.inputs)
        except UnsupportedOp as e:  # this runtime cannot execute it: no verdict, as in parity
            m["metrics_skipped"] = f"{runtime}: {e}"
            continue
        except Exception as e:  # the runtime refused it: parity says so too; the gate must not pass it
            m["metrics_error"] = f"{runtime} could not run the variant on the {ev.source} data: {_line(e)}"
            continue
        m["top1_agreement"] = agreement(ev.keras, got)
        acc = accuracy(got, ev.labels)
        m["accuracy"] = acc
        if acc is not None and keras_acc is not None:
            m["accuracy_delta"] = round(acc - keras_acc, 6)
    runnable = [(r, a) for r, a in ok if not ({"metrics_skipped", "metrics_error"} & set(r.extra))]
    _latency(runtime, base_row, runnable, ev, say)
    for row, art in ok:
        if row is not base_row:
            apply_gate(row, options, tmp, art)
            say(f"    {row.variant}: gate {row.extra['gate']['status']}"
                + (f" ({row.extra['gate']['reason']})" if row.extra["gate"].get("reason") else ""))


def agreement(reference: dict, got: dict) -> float | None:
    """Worst top-1 agreement over classifier outputs (None when the model has none)."""
    vals = []
    for name, ref in reference.items():
        ref = np.asarray(ref)
        if ref.ndim == 2 and ref.shape[1] > 1 and name in got:
            vals.append(float((ref.argmax(-1) == np.asarray(got[name]).reshape(ref.shape).argmax(-1)).mean()))
    return round(min(vals), 6) if vals else None


def accuracy(outputs: dict, labels: dict) -> float | None:
    """Accuracy of the labelled classifier output (the worst one when several are labelled)."""
    if not labels:
        return None
    return round(min(float((np.asarray(outputs[n]).argmax(-1) == y).mean()) for n, y in labels.items()), 6)


def apply_gate(row, options, tmp: Path, art) -> None:
    """Refuse a variant that broke the model: failed row, its files removed, exit code 1."""
    m = row.extra
    min_agree = getattr(options, "min_agreement", DEFAULT_MIN_AGREEMENT)
    max_drop = getattr(options, "max_accuracy_drop", DEFAULT_MAX_ACCURACY_DROP)
    gate = {"status": "passed", "reason": None, "min_agreement": min_agree, "max_accuracy_drop": max_drop}
    problems = []
    if m.get("metrics_error"):
        problems.append(m["metrics_error"])
    elif m.get("metrics_skipped"):
        gate.update(status="skipped", reason=f"not measured: {m['metrics_skipped']}")
    elif m.get("top1_agreement") is None:
        gate.update(status="skipped", reason="no classifier output to compare top-1 on; parity tolerance applies")
    else:
        if m["top1_agreement"] < min_agree:
            problems.append(f"top-1 agreement with Keras {m['top1_agreement']:.3f} < --min-agreement {min_agree} "
                            f"on {m['metrics_data']['samples']} {m['metrics_data']['source']} samples")
        delta = m.get("accuracy_delta")
        if delta is not None and -delta * 100.0 > max_drop + 1e-9:
            problems.append(f"accuracy {m['accuracy']:.4f} is {-delta * 100:.2f} points below Keras "
                            f"{m['keras_accuracy']:.4f} (> --max-accuracy-drop {max_drop})")
        if delta is None and gate["status"] == "passed":
            gate["reason"] = "accuracy unknown (no labels: pass --eval with y); top-1 agreement checked"
    if problems:
        gate.update(status="failed", reason="; ".join(problems))
        row.status = "failed"
        row.error = f"refused by the quantization gate: {gate['reason']} (variant not written)"
        _remove(art.path, tmp)
        row.artifact = None
    m["gate"] = gate


def _remove(path: Path, tmp: Path) -> None:
    """Delete a refused variant: its own file or folder, never the baseline's files."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
        parent = path.parent
        if parent != tmp and tmp in parent.parents and not any(f.suffix == path.suffix for f in parent.iterdir()):
            shutil.rmtree(parent, ignore_errors=True)  # its shards, e.g. a TF.js variant folder


def _latency(runtime, base_row, rows, ev, say) -> None:
    from kexport.runtimes.latency import measure

    if not runtime or not rows:
        return
    sample = {k: v[:1] for k, v in ev.inputs.items()}
    res = measure(runtime, [(str(a.path), a.runtime_options) for _, a in rows], sample)
    if res.get("ms") is None:
        for r, _ in rows:
            r.extra["latency_error"] = res.get("error")
        return
    by_row = dict(zip((id(r) for r, _ in rows), res["ms"]))
    base = by_row.get(id(base_row))
    for r, _ in rows:
        ms = by_row[id(r)]
        r.extra["latency_ms"] = ms
        r.extra["latency_ratio"] = round(ms / base, 3) if base else None
        r.extra["latency_rounds"] = res["rounds"]
    say(f"    latency ({runtime}, {res['rounds']} interleaved rounds): "
        + ", ".join(f"{r.variant} {by_row[id(r)]:.3f}ms" for r, _ in rows))


def _runtime_for(target, art) -> tuple[str | None, str | None]:
    """The first of the target's runtimes that can run this artifact here, else the reasons."""
    from kexport.runtimes import get_runtime

    reasons = []
    for name in target.runtimes:
        reason = art.skip.get(name) or get_runtime(name).available()
        if not reason:
            return name, None
        reasons.append(f"{name}: {reason}")
    return None, "; ".join(reasons) or "the target names no runtime"


def _predict(runtime: str, art, inputs: dict) -> dict:
    from kexport.runtimes import get_runtime
    from kexport.runtimes.isolated import IsolatedSession

    rt = get_runtime(runtime)
    session = IsolatedSession(runtime, str(art.path), art.runtime_options) if rt.isolate \
        else rt.load(str(art.path), **art.runtime_options)
    try:
        return session.predict(inputs)
    finally:
        session.close()


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


def format_variants(result) -> list[str]:
    """The terminal table of variant metrics (size, top-1, accuracy, latency, gate)."""
    def f(v, spec, scale=1.0):
        return "-" if v is None else format(v * scale, spec)

    rows = [("target", "variant", "size_ratio", "top1_agree", "accuracy", "acc_delta", "latency_ms", "lat_ratio", "gate")]
    for t in result.targets:
        m = t.extra
        if "size_ratio" not in m:
            continue
        rows.append((t.target, t.variant, f(m.get("size_ratio"), ".3f"), f(m.get("top1_agreement"), ".4f"),
                     f(m.get("accuracy"), ".4f"),
                     f(m.get("accuracy_delta"), "+.2f", 100.0) + ("pt" if m.get("accuracy_delta") is not None else ""),
                     f(m.get("latency_ms"), ".3f"), f(m.get("latency_ratio"), ".2f"),
                     (m.get("gate") or {}).get("status", "baseline")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    data = next((t.extra.get("metrics_data") for t in result.targets if t.extra.get("metrics_data")), None)
    if data:
        lines.append(f"(measured on {data['samples']} {data['source']} samples"
                     + ("; accuracy unknown without --eval labels" if data["source"] != "eval" else "") + ")")
    return lines
