"""`kexport spark MODEL -o OUT`: a TensorFlow-free Spark scoring package around the ONNX (or, with
--runtime litert, TFLite) artifact, verified by the `spark-local` runtime: a real local[2] Spark
scores the reference inputs from Parquet through the package's own job (docs/spark.md).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ...errors import UnsupportedError, UsageError
from ..base import Artifact, Target, get_target, register_target


@dataclass(frozen=True)
class SparkOptions:
    runtime: str = "onnxruntime"  # or "litert"


@register_target
class SparkTarget(Target):
    name = "spark"
    description = "Spark batch-scoring job over Parquet (mapInArrow, ONNX or TFLite, no TensorFlow)"
    runtimes = ("spark-local",)
    pip_extra = "spark"
    requires = ("jinja2",)  # the artifact's converter is checked in preflight (onnx or tflite)
    Options = SparkOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--runtime", choices=("onnxruntime", "litert"), default=SparkOptions.runtime,
                            help="runtime on the executors: onnxruntime (ONNX artifact, default) or litert (TFLite)")

    @classmethod
    def options_from_args(cls, args):
        opts = SparkOptions(runtime=getattr(args, "runtime", None) or SparkOptions.runtime)
        _check(opts)
        return opts

    def preflight(self, ctx, options) -> list[str]:
        from .package import free_dimensions

        _check(options)
        problems = free_dimensions(ctx.signature)
        inner = _inner(options)
        missing = inner.missing_requirements()
        if missing:
            return problems + [f"converter for the {options.runtime} artifact not installed ({', '.join(missing)}); "
                               f"pip install 'kexport[{inner.extra}]'"]
        return problems + inner.preflight(ctx, inner.Options())

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        from ... import __version__
        from .package import PackageSpec, render_package

        _check(options)
        inner = _inner(options)
        art = inner.export(ctx, dest / "model", inner.Options(), "fp32")
        if art.skip:  # e.g. a TFLite model with Flex ops: LiteRT on the executors cannot run it
            raise UnsupportedError(self.name, [f"{options.runtime}: {r}" for r in art.skip.values()],
                                   "use --runtime onnxruntime")
        spec = PackageSpec(name=ctx.name, signature=ctx.signature, runtime=options.runtime, artifact=art.path.name,
                           source_file=ctx.model_path.name, model_sha256=ctx.model_sha256, kexport_version=__version__)
        render_package(dest, spec)
        return Artifact(dest, notes=list(art.notes) + [f"scores {art.path.name} with {options.runtime} in mapInArrow"],
                        extra={"runtime": options.runtime, **art.extra})


def _inner(options):
    """The target whose export code writes the artifact the package embeds."""
    return get_target("onnx" if options.runtime == "onnxruntime" else "tflite")


def _check(o: SparkOptions) -> None:
    if o.runtime not in ("onnxruntime", "litert"):
        raise UsageError(f"Unrecognized runtime={o.runtime!r} for target 'spark'. Supported: ['litert', 'onnxruntime'].")
