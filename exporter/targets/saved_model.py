"""SavedModel in TF-Serving's layout: OUT/saved-model/<name>/<version>/, `serving_default`
signature whose input and output keys are the Keras names."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .base import Artifact, Target, register_target


@dataclass(frozen=True)
class SavedModelOptions:
    version: int = 1


@register_target
class SavedModelTarget(Target):
    name = "saved-model"
    description = "TensorFlow SavedModel for TF-Serving (versioned directory)"
    runtimes = ("tf-saved-model",)
    pip_extra = ""
    requires = ("tensorflow",)
    packages = ("tensorflow",)
    Options = SavedModelOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--version", type=int, default=1, help="model version directory (default 1)")

    @classmethod
    def options_from_args(cls, args):
        return SavedModelOptions(version=args.version)

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        import shutil

        src, _ = ctx.saved_model(rewrite=False)
        out = dest / ctx.name / str(options.version)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, out)
        return Artifact(out)
