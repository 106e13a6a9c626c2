"""A standalone Flask + gunicorn app that serves the ONNX (or TFLite) artifact behind
TF-Serving's REST API, without TensorFlow. Verified by the `flask-http` runtime: the app is
started under real gunicorn and asked over HTTP.

`kexport flask MODEL -o OUT` writes the app to OUT/flask/ (see docs/flask.md).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ...errors import UnsupportedError, UsageError
from ..base import Artifact, Target, register_target


@dataclass(frozen=True)
class FlaskOptions:
    runtime: str = "onnxruntime"  # or "litert"
    name: str | None = None  # the NAME in /v1/models/NAME; default: the model file's stem
    class_labels: str | None = None  # labels.txt, one label per line
    max_content_length: int = 16 * 1024 * 1024
    # Micro-batching is off by default: measured on 2 cores (docs/flask.md) it gains little for
    # tiny models and loses throughput for conv nets; BATCH_WINDOW_MS=2 turns it on in the app.
    batch_window_ms: float = 0.0
    max_batch_rows: int = 32
    workers: int = 2
    threads: int = 8


@register_target
class FlaskTarget(Target):
    name = "flask"
    description = "standalone Flask/gunicorn server with TF-Serving's REST API (no TensorFlow)"
    runtimes = ("flask-http",)
    extra = "serve"
    requires = ("jinja2",)  # the artifact's converter is checked in preflight (onnx or tflite)
    Options = FlaskOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        d = FlaskOptions()
        parser.add_argument("--runtime", choices=("onnxruntime", "litert"), default=d.runtime,
                            help="runtime inside the app: onnxruntime (ONNX artifact, default) or litert (TFLite)")
        parser.add_argument("--name", help="model name in the URL /v1/models/NAME (default: the model file's name)")
        parser.add_argument("--class-labels", metavar="LABELS.txt",
                            help="one label per line; predict?labels=true then adds the top label per example")
        parser.add_argument("--max-content-length", type=int, default=d.max_content_length, metavar="BYTES",
                            help=f"largest request body; larger ones get 413 (default {d.max_content_length})")
        parser.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                            help=f"micro-batching window in ms, 0 = off (default {d.batch_window_ms:g}; "
                                 "see docs/flask.md for when it pays)")
        parser.add_argument("--max-batch-rows", type=int, default=d.max_batch_rows,
                            help=f"most rows per micro-batch (default {d.max_batch_rows})")
        parser.add_argument("--gunicorn-workers", dest="gunicorn_workers", type=int, default=d.workers,
                            help=f"gunicorn worker processes (default {d.workers})")
        parser.add_argument("--gunicorn-threads", dest="gunicorn_threads", type=int, default=d.threads,
                            help=f"threads per worker (default {d.threads})")

    @classmethod
    def options_from_args(cls, args):
        d = FlaskOptions()
        get = lambda k: getattr(args, k, None) if getattr(args, k, None) is not None else getattr(d, k)  # noqa: E731
        opts = FlaskOptions(runtime=get("runtime"), name=getattr(args, "name", None),
                            class_labels=getattr(args, "class_labels", None),
                            max_content_length=get("max_content_length"), batch_window_ms=get("batch_window_ms"),
                            max_batch_rows=get("max_batch_rows"),
                            workers=getattr(args, "gunicorn_workers", None) or d.workers,
                            threads=getattr(args, "gunicorn_threads", None) or d.threads)
        _check(opts)
        return opts

    def preflight(self, ctx, options) -> list[str]:
        from .app import read_labels

        _check(options)
        if options.class_labels:  # a labels file that fits no output fails before any conversion
            read_labels(options.class_labels, ctx.signature)
        inner = _inner(options)
        missing = inner.missing_requirements()
        if missing:
            return [f"converter for the {options.runtime} artifact not installed ({', '.join(missing)}); "
                    f"pip install 'kexport[{inner.extra}]'"]
        return inner.preflight(ctx, inner.Options())

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        from .app import AppSettings, AppSpec, read_labels, render_app

        _check(options)
        labels = read_labels(options.class_labels, ctx.signature) if options.class_labels else {}
        inner = _inner(options)
        art = inner.export(ctx, dest / "model", inner.Options(), "fp32")
        if art.skip:  # e.g. a TFLite model with Flex ops: the app's LiteRT cannot run it
            raise UnsupportedError(self.name, [f"{options.runtime}: {r}" for r in art.skip.values()],
                                   "use --runtime onnxruntime")
        tol = self.tolerance_for(variant, options)
        spec = AppSpec(
            name=options.name or ctx.name, signature=ctx.signature, runtime=options.runtime,
            artifact=art.path.name, source_file=ctx.model_path.name, model_sha256=ctx.model_sha256,
            inputs=ctx.inputs, outputs=ctx.outputs, atol=tol.atol, rtol=tol.rtol, labels=labels,
            settings=AppSettings(max_content_length=options.max_content_length,
                                 batch_window_ms=options.batch_window_ms, max_batch_rows=options.max_batch_rows,
                                 workers=options.workers, threads=options.threads),
        )
        render_app(dest, spec)
        return Artifact(dest, notes=list(art.notes) + [f"serves {art.path.name} with {options.runtime}"],
                        extra={"runtime": options.runtime, "model_name": spec.name, **art.extra})


def _inner(options):
    """The target whose export code writes the artifact the app embeds."""
    from ..base import get_target

    return get_target("onnx" if options.runtime == "onnxruntime" else "tflite")


def _check(o: FlaskOptions) -> None:
    import re

    if o.runtime not in ("onnxruntime", "litert"):
        raise UsageError(f"Unrecognized runtime={o.runtime!r} for target 'flask'. Supported: ['litert', 'onnxruntime'].")
    if o.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", o.name):
        raise UsageError(f"--name {o.name!r}: use letters, digits, '_', '.' or '-' (it is part of the URL)")
    if o.max_content_length < 1024:
        raise UsageError(f"--max-content-length {o.max_content_length}: must be at least 1024 bytes")
    if not 0 <= o.batch_window_ms <= 100 or o.max_batch_rows < 1 or o.workers < 1 or o.threads < 1:
        raise UsageError("--batch-window-ms must be in [0, 100] ms and --max-batch-rows, --workers, --threads >= 1")
    if o.class_labels and not Path(o.class_labels).is_file():
        raise UsageError(f"{o.class_labels}: --class-labels file not found")
