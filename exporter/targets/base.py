"""The Target protocol and its explicit registry.

A target converts the loaded model into one deployable artifact. It declares, as class
attributes, which runtimes verify it, which pip extra installs its converter and its default
tolerance; `preflight` lists *everything* it cannot take before any conversion starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    """Pass when max|artifact - keras| <= atol + rtol * max|keras| for every output, and (for
    classifier outputs, when min_top1 is set) top-1 agreement >= min_top1."""

    atol: float
    rtol: float
    min_top1: float | None = None


# fp32 everywhere: kernels differ only in summation order; float32 epsilon (1.2e-7) times the
# accumulation depth of a conv/dense (10^2..10^3 terms) bounds the relative error near 1e-4.
FP32 = Tolerance(atol=1e-5, rtol=1e-4)


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass
class Artifact:
    """What a target wrote for one variant. `path` is the file/dir a runtime loads."""

    path: Path
    variant: str = "fp32"
    notes: list[str] = field(default_factory=list)  # rewrites applied, caveats
    runtime_options: dict = field(default_factory=dict)  # passed to Runtime.load
    extra: dict = field(default_factory=dict)  # merged into the report row
    # runtime name -> reason it cannot run this artifact here (reported as a skipped row)
    skip: dict = field(default_factory=dict)


class Target:
    name: str = ""
    description: str = ""
    runtimes: tuple[str, ...] = ()
    pip_extra: str = ""  # the pip extra that installs the converter: kexport[<pip_extra>]
    requires: tuple[str, ...] = ()  # importable modules the converter needs
    tolerance: Tolerance = FP32
    Options: type = NoOptions
    # the `--quantize` variants this target offers (beside fp32), e.g. ("dynamic", "int8")
    QUANTIZE: tuple[str, ...] = ()
    # distributions whose versions go into report.json (converter and runtime packages)
    packages: tuple[str, ...] = ()
    # deprecated `--quantize` spellings -> today's variant names (CoreML: {"fp16": "float16", ...})
    QUANTIZE_ALIASES: dict = {}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Target-specific CLI flags (`kexport TARGET --help`)."""

    @classmethod
    def options_from_args(cls, args: argparse.Namespace):
        """`args` holds exactly this target's own flags (as add_arguments declared them) plus the
        shared ones (`quantize`): the CLI builds one namespace per target, so flags of two
        targets never collide."""
        return cls.Options()

    def variants(self, options) -> list[str]:
        return ["fp32"]

    def tolerance_for(self, variant: str, options) -> Tolerance:
        return self.tolerance

    def conditioning(self, artifact: Artifact) -> tuple[list | None, str | None]:
        """(noise, note): per reference set {output: per-sample deviation} that this artifact's own
        arithmetic implies, measured at export and stored in the artifact (CoreML float16: Keras
        itself computing in float16). A sample whose deviation exceeds the tolerance is
        ill-conditioned for this artifact, like Keras' float32 noise floor: left out and counted,
        never a raised tolerance. Default: none."""
        return None, None

    def missing_requirements(self) -> list[str]:
        import importlib.util

        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def preflight(self, ctx, options) -> list[str]:
        """Every layer/op this target cannot take (empty list = fine)."""
        return []

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        raise NotImplementedError

    def checks(self, ctx, artifact: Artifact, options, tol: Tolerance) -> list:
        """Parity rows beyond running the artifact in `runtimes` (a config parsed by its server's
        own schema, warmup records replayed, ...): a list of `parity.ParityRow`."""
        return []


_TARGETS: dict[str, Target] = {}


def register_target(cls: type[Target]) -> type[Target]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _TARGETS or cls.name == "all":
        raise ValueError(f"target name '{cls.name}' registered twice ({cls.__name__})")
    _TARGETS[cls.name] = cls()
    return cls


def get_target(name: str) -> Target:
    try:
        return _TARGETS[name]
    except KeyError:
        raise UsageError(f"Unrecognized target={name!r}. Supported targets are: {sorted(_TARGETS)}.") from None


def all_targets() -> dict[str, Target]:
    return dict(_TARGETS)
