"""report.html: one self-contained page (inline CSS and SVG, no script, no external request)
beside report.json, rendered from report.json's content alone, with usage snippets for each
platform written with the model's real input/output names and shapes.

Every value from the model (names, paths, notes) is escaped twice by construction: first for the
language of the snippet it lands in (Python, JavaScript, Swift, Kotlin, shell), then for HTML
(Jinja autoescape). Nothing is pasted.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from urllib.parse import quote

HTML_NAME = "report.html"
STATUS_CLASS = {"passed": "ok", "ok": "ok", "skipped": "skip", "unverified": "warn", "uninformative": "warn",
                "failed": "bad", "unsupported": "bad"}


# ---- language escapers ------------------------------------------------------------------------

def py_str(s) -> str:
    return repr(str(s))


def js_str(s) -> str:
    return json.dumps(str(s))


_COMMON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quoted(s, escape) -> str:
    """A double-quoted literal: backslash, quote and \\n/\\r/\\t escaped alike in Swift and
    Kotlin; `escape(ch)` gives the language's own rule for every other character (None: as is)."""
    return '"' + "".join(_COMMON_ESCAPES.get(ch) or escape(ch) or ch for ch in str(s)) + '"'


def swift_str(s) -> str:
    # Swift: other control characters as \u{hex}; "\(" cannot start an interpolation once "\" is escaped
    return _quoted(s, lambda ch: f"\\u{{{ord(ch):x}}}" if ord(ch) < 0x20 or ord(ch) == 0x7F else None)


def kotlin_str(s) -> str:
    # Kotlin: "$" starts a template; controls and non-ASCII as \uXXXX UTF-16 units
    return _quoted(s, lambda ch: "\\$" if ch == "$" else (
        "".join(f"\\u{u:04x}" for u in _utf16(ch)) if ord(ch) < 0x20 or ord(ch) > 0x7E else None))


def _utf16(ch: str) -> list[int]:
    b = ch.encode("utf-16-be")
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]


def sh_str(s) -> str:
    return shlex.quote(str(s))


def url_part(s) -> str:
    return quote(str(s), safe="")


# ---- data for the page ------------------------------------------------------------------------

def _fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def _human(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def matrix(report: dict) -> tuple[list[str], list[dict]]:
    """(runtime columns, one row per target/variant with a cell per runtime)."""
    runtimes = list(dict.fromkeys(p["runtime"] for t in report["targets"] for p in t.get("parity", [])))
    rows = []
    for t in report["targets"]:
        cells = {p["runtime"]: p for p in t.get("parity", [])}
        rows.append({"target": t["target"], "variant": t.get("variant", "fp32"), "status": t["status"],
                     "error": t.get("error"), "size": _human(t.get("size_bytes")), "size_bytes": t.get("size_bytes"),
                     "notes": t.get("notes", []), "cells": [cells.get(r) for r in runtimes]})
    return runtimes, rows


def error_plot(report: dict, width: int = 720) -> dict:
    """An inline SVG (as data for the template): per target/variant/output one line on a log
    axis, one mark per runtime at its max |error|, a tick at the tolerance atol + rtol * scale."""
    lines = []
    for t in report["targets"]:
        for p in t.get("parity", []):
            for out, o in (p.get("outputs") or {}).items():
                if o.get("max_abs_err") is None or p.get("atol") is None:
                    continue
                tol = p["atol"] + p["rtol"] * (o.get("scale") or 0.0)
                key = f"{t['target']}/{t.get('variant', 'fp32')} · {out}"
                lines.append((key, p["runtime"], max(o["max_abs_err"], 1e-12), max(tol, 1e-12), p["status"]))
    labels = list(dict.fromkeys(k for k, *_ in lines))
    if not labels:
        return {"width": width, "height": 0, "labels": [], "marks": [], "ticks": [], "axis": []}
    values = [v for _, _, e, tol, _ in lines for v in (e, tol)]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    left, right, row_h = 260, 20, 22
    span = width - left - right

    def x(v):
        return round(left + span * (math.log10(v) - lo) / (hi - lo), 1)

    runtimes = list(dict.fromkeys(r for _, r, *_ in lines))
    marks, ticks = [], {}
    for key, runtime, err, tol, status in lines:
        y = 30 + labels.index(key) * row_h
        marks.append({"x": x(err), "y": y, "runtime": runtime, "err": f"{err:.2e}", "tol": f"{tol:.2e}",
                      "cls": STATUS_CLASS.get(status, "warn"), "shape": runtimes.index(runtime) % 4})
        ticks[key] = {"x": x(tol), "y": y, "tol": f"{tol:.2e}"}
    axis = [{"x": x(10.0 ** e), "label": f"1e{e}"} for e in range(lo, hi + 1)]
    return {"width": width, "height": 40 + len(labels) * row_h, "labels": [{"text": k, "y": 30 + i * row_h + 4}
            for i, k in enumerate(labels)], "marks": marks, "ticks": list(ticks.values()), "axis": axis,
            "left": left, "runtimes": [{"name": r, "shape": i % 4} for i, r in enumerate(runtimes)]}


def latency(report: dict) -> list[dict]:
    rows = []
    for t in report["targets"]:
        for runtime, info in (t.get("runtime_timing") or {}).items():
            ms = info.get("predict_ms_median") if isinstance(info, dict) else None
            if ms:
                rows.append({"target": t["target"], "variant": t.get("variant", "fp32"), "runtime": runtime,
                             "ms": f"{ms:.2f}"})
        for runtime, b in (t.get("benchmark") or {}).items():
            if b.get("ms") is not None:
                rows.append({"target": t["target"], "variant": t.get("variant", "fp32"), "runtime": runtime,
                             "ms": f"{b['ms']:.2f}", "per_s": f"{b.get('per_second', 0):.0f}"})
        if t.get("latency_ms") is not None:
            rows.append({"target": t["target"], "variant": t.get("variant", "fp32"), "runtime": t.get("latency_runtime", ""),
                         "ms": f"{t['latency_ms']:.2f}"})
    return rows


def variants(report: dict) -> list[dict]:
    rows = []
    for t in report["targets"]:
        if "size_ratio" in t:
            rows.append({"target": t["target"], "variant": t.get("variant"), "size_ratio": _fmt(t.get("size_ratio"), ".3f"),
                         "agreement": _fmt(t.get("top1_agreement"), ".3f"),
                         "accuracy": _fmt(t.get("accuracy"), ".4f"), "accuracy_change": _fmt(t.get("accuracy_change"), "+.4f"),
                         "gate": t.get("gate") or ""})
    return rows


def _shape(spec: dict, batch: int = 1) -> list[int]:
    return [batch if i == 0 and d is None else (d if d is not None else 224) for i, d in enumerate(spec["shape"])]


def snippets(report: dict) -> dict:
    """Template variables for the usage snippets (names escaped by the language filters)."""
    model = report["model"]
    ins = [{"name": t["name"], "shape": _shape(t), "dtype": t.get("dtype", "float32")} for t in model.get("inputs", [])]
    outs = [{"name": t["name"], "shape": _shape(t)} for t in model.get("outputs", [])]
    arts = {t["target"]: t["artifact"] for t in report["targets"] if t.get("artifact") and t.get("variant", "fp32") in ("fp32", "float16", "fp16")}
    name = Path(model.get("path") or "model").stem.replace(".", "_") or "model"
    for t in report["targets"]:
        if t["target"] in ("tf-serving", "flask") and t.get("model_name"):
            name = t["model_name"]
    return {"inputs": ins, "outputs": outs, "artifacts": arts, "served_name": name}


def render(report: dict, out_dir: Path) -> Path:
    """Write OUT/report.html from the report dict; returns its path."""
    import jinja2

    from . import templates

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates.ROOT / "report")),
                             undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=True)
    env.filters.update(py=py_str, js=js_str, swift=swift_str, kotlin=kotlin_str, sh=sh_str, url=url_part,
                       sci=lambda v: _fmt(v), json=lambda v: json.dumps(v))
    runtimes, rows = matrix(report)
    html = env.get_template("report.html.j2").render(
        report=report, model=report["model"], runtimes=runtimes, rows=rows, plot=error_plot(report),
        latency=latency(report), variants=variants(report), snip=snippets(report), css=STATUS_CLASS,
        versions=report.get("versions", {}), seconds=report.get("seconds", {}))
    path = Path(out_dir) / HTML_NAME
    tmp = path.with_name(f".{HTML_NAME}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
