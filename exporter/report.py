"""report.json: what was produced, from what, and whether it computes what Keras computes.
The schema is documented in docs/report.md."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .parity import ParityRow

REPORT_NAME = "report.json"


@dataclass
class TargetResult:
    target: str
    variant: str = "fp32"
    status: str = "ok"  # ok | unverified (no runtime checked it) | failed | unsupported
    artifact: str | None = None  # relative to the report
    size_bytes: int | None = None
    sha256: str | None = None  # of the artifact (file, or directory tree): `verify` checks it
    seconds: float | None = None
    error: str | None = None
    notes: list = field(default_factory=list)
    parity: list = field(default_factory=list)  # ParityRow
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "ok" and all(p.status in ("passed", "skipped") for p in self.parity)

    def passed_allowing(self, unverified: bool) -> bool:
        return self.passed or (unverified and self.status == "unverified")

    def to_json(self) -> dict:
        d = asdict(self)
        d["parity"] = [p.to_json() if isinstance(p, ParityRow) else p for p in self.parity]
        extra = d.pop("extra")
        d.update(extra)
        return d


@dataclass
class ExportResult:
    kexport_version: str
    model: dict
    targets: list = field(default_factory=list)  # TargetResult
    seconds: dict = field(default_factory=dict)
    out_dir: str | None = None
    versions: dict = field(default_factory=dict)
    allow_unverified: bool = False

    @property
    def ok(self) -> bool:
        return all(t.passed_allowing(self.allow_unverified) for t in self.targets)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def failures(self) -> list[str]:
        msgs = []
        for t in self.targets:
            if t.status != "ok":
                msgs.append(f"{t.target}/{t.variant}: {t.status}: {t.error}")
            for p in t.parity:
                if p.status not in ("passed", "skipped"):
                    msgs.append(f"{t.target}/{t.variant} on {p.runtime}: {p.status}: {p.reason}")
        return msgs

    def to_json(self) -> dict:
        return {
            "kexport_version": self.kexport_version,
            "model": self.model,
            "versions": self.versions,
            "seconds": self.seconds,
            "targets": [t.to_json() for t in self.targets],
        }

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / REPORT_NAME
        write_json(path, self.to_json())
        return path


def write_json(path: Path, data: dict) -> None:
    """Written beside, then renamed over: a reader sees the old report or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def load_report(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def format_table(result: ExportResult) -> str:
    """The parity table printed at the end of a run."""
    rows = [("target", "variant", "status", "runtime", "parity", "max_abs_err", "top1", "size", "sec")]
    for t in result.targets:
        size = _human(t.size_bytes) if t.size_bytes else "-"
        sec = f"{t.seconds:.1f}" if t.seconds is not None else "-"
        if not t.parity:
            rows.append((t.target, t.variant, t.status, "-", "-", "-", "-", size, sec))
        for p in t.parity:
            err = f"{p.max_abs_err:.2e}" if p.max_abs_err is not None else "-"
            top1 = f"{p.top1_agreement:.3f}" if p.top1_agreement is not None else "-"
            rows.append((t.target, t.variant, t.status, p.runtime, p.status, err, top1, size, sec))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(t.extra.get("benchmark") for t in result.targets):
        lines += [""] + format_benchmark(result)
    if any("size_ratio" in t.extra for t in result.targets):  # quantized variants were measured
        from .variant_metrics import format_variants

        lines += [""] + format_variants(result)
    notes = []
    for t in result.targets:
        if t.error:
            notes.append(f"  {t.target}/{t.variant}: {t.error}")
        for n in t.notes:
            notes.append(f"  {t.target}/{t.variant}: {n}")
        for p in t.parity:
            if p.reason:
                notes.append(f"  {t.target}/{t.variant} [{p.runtime}] {p.status}: {p.reason}")
    return "\n".join(lines + ([""] + notes if notes else []))


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def format_benchmark(result: ExportResult) -> list[str]:
    """The table users know from export-format benchmarks, one line per artifact and runtime."""
    rows = [("target", "variant", "status", "size", "accuracy", "runtime", "ms/inference", "inferences/s")]
    for t in result.targets:
        for runtime, b in (t.extra.get("benchmark") or {}).items():
            acc = t.extra.get("accuracy")
            rows.append((t.target, t.variant, t.status, _human(t.size_bytes) if t.size_bytes else "-",
                         f"{acc:.4f}" if isinstance(acc, float) else "-", runtime,
                         f"{b['ms']:.3f}" if b.get("ms") else "-", f"{b['per_second']:.0f}" if b.get("per_second") else "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = ["benchmark (1 sample, median of the last 2 windows of 10 calls after warm-up; docs/benchmarks.md)"]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(2, "  ".join("-" * w for w in widths))
    return out
