"""Target `tf-serving`: a TF-Serving model repository (versioned SavedModel with warmup records,
models.config, batching parameters, REST examples, README, compose file).

Verified by the SavedModel loader and `saved_model_cli run` (runtimes), plus its own checks: the
signature defs as TF-Serving reads them, the warmup records replayed, the top-k signature.
`kexport tf-serving MODEL -o REPO` runs this target and publishes the version into REPO
(publish.py). See docs/tf_serving.md.
"""

from __future__ import annotations

from pathlib import Path

from ..base import FP32, Artifact, Target, register_target
from .publish import REPORT_DIR, RUNTIMES, TFServingOptions, add_arguments, export_repository, options_from_args, run_command  # noqa: F401


@register_target
class TFServingTarget(Target):
    name = "tf-serving"
    description = "TF-Serving repository: versioned SavedModel, models.config, batching, warmup records"
    runtimes = RUNTIMES
    pip_extra = "tf-serving"
    requires = ("tensorflow", "tensorflow_serving")
    packages = ("tensorflow", "tensorflow-serving-api")
    tolerance = FP32
    Options = TFServingOptions

    @classmethod
    def add_arguments(cls, parser) -> None:
        add_arguments(parser)

    @classmethod
    def options_from_args(cls, args):
        return options_from_args(args)

    def preflight(self, ctx, options) -> list[str]:
        from .publish import _classify_spec, _extra_signature_name, check_options

        check_options(options)
        _classify_spec(ctx, options, _extra_signature_name(options))  # bad labels fail before converting
        return []

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        from .publish import write_bundle

        vdir, extra = write_bundle(ctx, dest, options)
        return Artifact(vdir, variant, extra=extra)

    def checks(self, ctx, artifact: Artifact, options, tol) -> list:
        from .publish import version_checks

        return version_checks(ctx, artifact.path, options, tol)
