"""A standalone Flask + gunicorn app that serves the ONNX (or TFLite) artifact behind
TF-Serving's REST API and the Open Inference Protocol (KServe v2 / Triton HTTP), without
TensorFlow. Verified by the `flask-http` runtime: the app is started under real gunicorn and
asked over HTTP.

Which runtimes the app can embed is not listed here: every runtime that declares `server`
(what a generated server takes from it) is a choice for --runtime.

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
    runtime: str = "onnxruntime"  # any runtime that declares `server` (onnxruntime, litert)
    name: str | None = None  # the NAME in /v1/models/NAME; default: the model file's stem (any text: escaped)
    class_labels: str | None = None  # labels.txt, one label per line
    max_content_length: int = 16 * 1024 * 1024
    # Micro-batching is off by default: measured on 2 cores (docs/flask.md) it gains little for
    # tiny models and loses throughput for conv nets; BATCH_WINDOW_MS=2 turns it on in the app.
    batch_window_ms: float = 0.0
    max_batch_rows: int = 32
    workers: int = 2
    worker_connections: int = 256  # open connections per gevent worker
    threads: int = 8  # ignored since the server runs gevent workers (no thread pool); kept for callers


@register_target
class FlaskTarget(Target):
    name = "flask"
    description = "standalone Flask/gunicorn server with TF-Serving's REST API and KServe v2 (no TensorFlow)"
    runtimes = ("flask-http",)
    pip_extra = "serve"
    requires = ("jinja2",)  # the artifact's converter is checked in preflight (onnx or tflite)
    packages = ("flask", "gunicorn", "onnxruntime", "ai-edge-litert")
    Options = FlaskOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from .app import server_runtimes

        d = FlaskOptions()
        choices = {n: r.artifact_target for n, r in server_runtimes().items()}
        parser.add_argument("--runtime", choices=sorted(choices), default=d.runtime,
                            help="runtime inside the app: " + ", ".join(f"{n} ({t} artifact)" for n, t in choices.items())
                                 + f" (default {d.runtime})")
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
        parser.add_argument("--worker-connections", dest="worker_connections", type=int,
                            default=d.worker_connections,
                            help=f"open connections per gunicorn (gevent) worker (default {d.worker_connections})")

    @classmethod
    def options_from_args(cls, args):
        opts = FlaskOptions(runtime=args.runtime, name=args.name, class_labels=args.class_labels,
                            max_content_length=args.max_content_length, batch_window_ms=args.batch_window_ms,
                            max_batch_rows=args.max_batch_rows, workers=args.gunicorn_workers,
                            worker_connections=args.worker_connections)
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
                                 workers=options.workers, worker_connections=options.worker_connections),
        )
        render_app(dest, spec)
        return Artifact(dest, notes=list(art.notes) + [f"serves {art.path.name} with {options.runtime}"],
                        extra={"runtime": options.runtime, "model_name": spec.name, **art.extra})


def _inner(options):
    """The target whose export code writes the artifact the app embeds."""
    from ..base import get_target
    from .app import server_runtime

    return get_target(server_runtime(options.runtime).artifact_target)


def _check(o: FlaskOptions) -> None:
    import re

    from .app import server_runtime

    server_runtime(o.runtime)  # UsageError naming the runtimes that can serve
    if o.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", o.name):
        raise UsageError(f"--name {o.name!r}: use letters, digits, '_', '.' or '-' (it is part of the URL)")
    if o.max_content_length < 1024:
        raise UsageError(f"--max-content-length {o.max_content_length}: must be at least 1024 bytes")
    if not 0 <= o.batch_window_ms <= 100 or o.max_batch_rows < 1 or o.workers < 1 or o.worker_connections < 1:
        raise UsageError("--batch-window-ms must be in [0, 100] ms and --max-batch-rows, --gunicorn-workers, "
                         "--worker-connections >= 1")
    if o.class_labels and not Path(o.class_labels).is_file():
        raise UsageError(f"{o.class_labels}: --class-labels file not found")
