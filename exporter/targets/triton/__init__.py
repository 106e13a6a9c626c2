"""NVIDIA Triton Inference Server: a model repository Triton loads as it is.

    OUT/triton/NAME/config.pbtxt          Triton's ModelConfig (exact IO names, types, dims; batch
                                          dimension as max_batch_size; dynamic_batching,
                                          instance_group, model_warmup)
    OUT/triton/NAME/<version>/model.onnx  the onnx target's conversion (platform onnxruntime_onnx)
      or .../<version>/model.savedmodel/   the SavedModel (--platform tensorflow_savedmodel; under
                                          `kexport all`: --triton-platform)
    OUT/triton/NAME/warmup/input_N.bin    first reference sample per input (raw, row-major)

Serve it with `tritonserver --model-repository OUT/triton` (docs/deploy.md). Verified by the
`triton-config` runtime (config.pbtxt parsed strictly with Triton's own protobuf, checked against
the model file, the model run with the config's IO); `tritonserver` itself is a skipped row where
the server cannot be installed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConversionError, UsageError
from ..base import Artifact, Target, get_target, register_target
from .config import PLATFORMS, ConfigSpec, check_model_name, safe_model_name

DEFAULT_MAX_BATCH = 32  # as the Flask app's micro-batcher (max_batch_rows)
DEFAULT_QUEUE_DELAY_US = 500  # dynamic batching: wait at most 0.5 ms to fill a batch


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # Triton model name (directory, URL); default: the model file's stem
    version: int = 1
    platform: str = "onnxruntime_onnx"  # or "tensorflow_savedmodel"
    max_batch_size: int = DEFAULT_MAX_BATCH
    instances: int = 1  # instance_group count (KIND_CPU)
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    opset: int | None = None  # ONNX opset; None: the onnx target's default


@register_target
class TritonTarget(Target):
    name = "triton"
    description = "NVIDIA Triton model repository (config.pbtxt + ONNX or SavedModel)"
    runtimes = ("triton-config", "tritonserver")
    pip_extra = "triton"
    requires = ("tritonclient", "google.protobuf", "onnx", "tf2onnx")
    packages = ("tritonclient", "protobuf", "tf2onnx", "onnxruntime")
    Options = TritonOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        d = TritonOptions()
        parser.add_argument("--name", help="model name (directory and URL /v2/models/NAME; default: the model file's name)")
        parser.add_argument("--version", type=int, default=1, help="model version directory (default 1)")
        parser.add_argument("--opset", type=int, help="ONNX opset of model.onnx (default: the onnx target's)")
        parser.add_argument("--platform", choices=sorted(PLATFORMS), default=d.platform,
                            help="model.onnx on onnxruntime (default) or the SavedModel on TensorFlow")
        parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                            help=f"max_batch_size, also the dynamic batcher's limit (default {d.max_batch_size})")
        parser.add_argument("--instances", type=int, default=d.instances,
                            help=f"model instances on the CPU (instance_group count, default {d.instances})")
        parser.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us,
                            help=f"dynamic batching: longest wait to fill a batch (default {d.max_queue_delay_us} us)")

    @classmethod
    def options_from_args(cls, args):
        d = TritonOptions()
        get = lambda k, default: getattr(args, k, None) if getattr(args, k, None) is not None else default  # noqa: E731
        opts = TritonOptions(name=getattr(args, "name", None), version=get("version", d.version),
                             platform=get("platform", d.platform),
                             max_batch_size=get("max_batch_size", d.max_batch_size),
                             instances=get("instances", d.instances),
                             max_queue_delay_us=get("max_queue_delay_us", d.max_queue_delay_us),
                             opset=getattr(args, "opset", None))
        _check(opts)
        return opts

    def preflight(self, ctx, options) -> list[str]:
        _check(options)
        if options.platform == "onnxruntime_onnx":
            onnx = get_target("onnx")
            return onnx.preflight(ctx, _onnx_options(options))
        return []

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        from .config import build_config, onnx_io, saved_model_io, to_text, write_warmup, batched

        _check(options)
        name = options.name or safe_model_name(ctx.name)
        model_dir = dest / name
        version_dir = model_dir / str(options.version)
        notes = []
        if options.platform == "onnxruntime_onnx":
            art = get_target("onnx").export(ctx, version_dir, _onnx_options(options), "fp32")
            notes += art.notes
            inputs, outputs = onnx_io(art.path)
        else:
            import shutil

            src, _ = ctx.saved_model(rewrite=False)
            shutil.copytree(src, version_dir / PLATFORMS[options.platform])
            inputs, outputs = saved_model_io(version_dir / PLATFORMS[options.platform])
        inputs, outputs = _match_keras(ctx.signature, inputs, outputs)
        batch = batched(inputs, outputs)
        files = write_warmup(model_dir, inputs, ctx.inputs, batch)
        warmup = [{"name": "kexport_reference_batch_1", "batch_size": 1, "files": files}]
        if batch and options.max_batch_size > 1:
            warmup.append({"name": f"kexport_reference_batch_{options.max_batch_size}",
                           "batch_size": options.max_batch_size, "files": files})
        spec = ConfigSpec(name, options.platform, options.max_batch_size, options.instances, options.max_queue_delay_us)
        (model_dir / "config.pbtxt").write_text(to_text(build_config(spec, inputs, outputs, warmup)))
        if not batch:
            notes.append("a fixed first dimension: max_batch_size 0 (no dynamic batching)")
        return Artifact(dest, notes=notes, runtime_options={"model": name},
                        extra={"model_name": name, "triton_platform": options.platform,
                               "max_batch_size": options.max_batch_size if batch else 0})


def _onnx_options(options: TritonOptions):
    from ..onnx import DEFAULT_OPSET, OnnxOptions

    return OnnxOptions(opset=options.opset or DEFAULT_OPSET)


def _match_keras(signature, inputs, outputs):
    """The artifact's IO in Keras order; any difference in names, dtypes or shapes is an error
    (Triton would serve something the Keras model is not)."""
    problems = []
    ordered = []
    for specs, keras in ((inputs, signature.inputs), (outputs, signature.outputs)):
        by_name = {s.name: s for s in specs}
        if set(by_name) != {t.name for t in keras}:
            problems.append(f"names {sorted(by_name)} != Keras {sorted(t.name for t in keras)}")
            ordered.append(list(specs))
            continue
        for t in keras:
            s = by_name[t.name]
            want = tuple(-1 if d is None else d for d in t.shape)
            if s.dtype != t.dtype or tuple(s.shape) != want:
                problems.append(f"{t.name}: {s.dtype}{list(s.shape)} != Keras {t.dtype}{list(want)}")
        ordered.append([by_name[t.name] for t in keras])
    if problems:
        raise ConversionError("target 'triton': the model file's IO differs from the Keras model: " + "; ".join(problems))
    return ordered[0], ordered[1]


def _check(o: TritonOptions) -> None:
    if o.name is not None:
        reason = check_model_name(o.name)
        if reason:
            raise UsageError(f"--name: {reason}")
    if o.platform not in PLATFORMS:
        raise UsageError(f"Unrecognized --platform={o.platform!r}. Supported: {sorted(PLATFORMS)}.")
    if o.version < 1:
        raise UsageError(f"--version {o.version}: Triton versions are positive integers")
    if o.max_batch_size < 1 or o.instances < 1 or o.max_queue_delay_us < 0:
        raise UsageError("--max-batch-size and --instances must be >= 1, --max-queue-delay-us >= 0")
