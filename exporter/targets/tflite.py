"""TFLite / LiteRT flatbuffer, converted from the (rewritten) SavedModel, builtin ops only unless
--allow-tf-ops. Verified by ai_edge_litert in a process without TensorFlow."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, UnsupportedError
from ..native_log import captured_native_stderr
from .base import Artifact, Target, register_target


@dataclass(frozen=True)
class TFLiteOptions:
    allow_tf_ops: bool = False


@register_target
class TFLiteTarget(Target):
    name = "tflite"
    description = "TensorFlow Lite / LiteRT flatbuffer for Android, iOS, Raspberry Pi"
    runtimes = ("litert",)
    extra = "tflite"
    requires = ("tensorflow",)
    Options = TFLiteOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--allow-tf-ops", action="store_true",
                            help="allow TF (Flex / SELECT_TF_OPS) ops; the device then needs the Flex delegate")

    @classmethod
    def options_from_args(cls, args):
        return TFLiteOptions(allow_tf_ops=bool(getattr(args, "allow_tf_ops", False)))

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        sm_path, applied = ctx.saved_model(rewrite=True)
        data, tf_ops = convert_saved_model(sm_path, allow_tf_ops=options.allow_tf_ops, target=self.name)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / "model.tflite"
        out.write_bytes(data)
        art = Artifact(out, notes=list(applied))
        if tf_ops:
            art.notes.append(f"uses TF Select ops: {', '.join(tf_ops)}")
            art.skip["litert"] = (
                f"the artifact needs the Flex delegate for TF ops {', '.join(tf_ops)}, which ai_edge_litert "
                "alone does not have (as on a phone); link the TensorFlow Lite Flex delegate to run it"
            )
        return art


def convert_saved_model(sm_path: Path, *, allow_tf_ops: bool, target: str, configure=None):
    """Returns (flatbuffer bytes, list of TF ops used). `configure(converter)` sets quantization."""
    import tensorflow as tf

    def make():
        conv = tf.lite.TFLiteConverter.from_saved_model(str(sm_path), signature_keys=["serving_default"])
        if configure:
            configure(conv)
        return conv

    def run(conv):
        with captured_native_stderr():
            return conv.convert()

    try:
        return run(make()), []
    except Exception as e:  # converter raises ConverterError and friends
        first = e
    ops = sorted(set(non_builtin_ops(str(first))))
    if not ops:
        raise ConversionError(f"target '{target}': TFLite converter failed: {first_line(first)}") from first
    # Builtins-only errors name every non-builtin op alike; a SELECT_TF_OPS pass tells which of
    # them the Flex delegate can run.
    conv = make()
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        data = run(conv)
    except Exception as e:
        custom = sorted(set(non_builtin_ops(str(e)))) or ops
        raise UnsupportedError(
            target, [f"TF op {o}" + ("" if o in custom else " (Flex)") for o in ops],
            f"{', '.join(custom)}: neither a TFLite builtin nor a Flex op; implement a TFLite custom "
            "op or replace the layer that uses it",
        ) from e
    if not allow_tf_ops:
        raise UnsupportedError(
            target, [f"TF op {o}" for o in ops],
            "no TFLite builtin exists for them; re-run with --allow-tf-ops to use SELECT_TF_OPS "
            "(the device then needs the Flex delegate)",
        ) from first
    return data, ops


def non_builtin_ops(text: str) -> list[str]:
    """TF op names the converter could not map, from its error text."""
    ops = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)
    for label in ("TF Select ops", "Custom ops"):
        m = re.search(label + r": ([^\n]+)", text)
        if m:
            ops += [o.strip().strip(".") for o in m.group(1).split(",")]
    return [o for o in ops if o]


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
