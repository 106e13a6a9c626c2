"""TFLite / LiteRT flatbuffer, converted from the (rewritten) SavedModel, builtin ops only unless
--allow-tf-ops. Verified by ai_edge_litert in a process without TensorFlow.

Quantized variants (`--quantize dynamic|float16|int8|all`), each next to model.tflite:
    dynamic  int8 weights, float activations quantized on the fly (model_dynamic.tflite)
    float16  float16 weights, dequantized to float32 at load (model_float16.tflite)
    int8     full integer: weights and activations int8, activation ranges from the calibration
             data (--calibration); --int8-io also makes the inputs/outputs int8 (microcontrollers,
             Edge TPU): LiteRT's session (de)quantizes them with the tensors' scale/zero point.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, UnsupportedError, first_line
from ..native_log import captured_native_stderr
from .base import FP32, Artifact, Target, Tolerance, register_target

QUANTIZE = ("dynamic", "float16", "int8")
# Tolerances against the float32 Keras model, by variant (fp32 stays strict: FP32).
# float16 weights: a relative rounding error of 2^-11 (4.9e-4) per weight; over a dot product
# of independent rounding errors the output drifts by a few times that: rtol 1e-2 of the
# output's scale leaves 20x headroom and still catches a wrong layer.
# dynamic / int8: a weight step is 1/127 of its channel's range, an activation step 1/255 of its
# tensor's range; every quantized layer adds up to half a step, so a 4-6 layer network drifts by a
# few percent of the output scale: rtol 0.1. The real quality test is top-1 agreement (min_top1
# here on the reference inputs; the gate in exporter/variant_metrics.py on --eval data).
TOLERANCES = {
    "fp32": FP32,
    "float16": Tolerance(atol=1e-4, rtol=1e-2, min_top1=0.98),
    "dynamic": Tolerance(atol=1e-3, rtol=0.1, min_top1=0.9),
    "int8": Tolerance(atol=1e-3, rtol=0.1, min_top1=0.9),
}


@dataclass(frozen=True)
class TFLiteOptions:
    allow_tf_ops: bool = False
    quantize: str | None = None  # "dynamic", "int8,float16", "all" (exporter/quantize.py)
    int8_io: bool = False


@register_target
class TFLiteTarget(Target):
    name = "tflite"
    description = "TensorFlow Lite / LiteRT flatbuffer for Android, iOS, Raspberry Pi"
    runtimes = ("litert", "litert-arm64")
    pip_extra = "tflite"
    requires = ("tensorflow",)
    packages = ("tensorflow", "ai-edge-litert")
    Options = TFLiteOptions
    QUANTIZE = QUANTIZE

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--allow-tf-ops", action="store_true",
                            help="allow TF (Flex / SELECT_TF_OPS) ops; the device then needs the Flex delegate")
        parser.add_argument("--int8-io", action="store_true",
                            help="--quantize int8: int8 inputs and outputs too (microcontrollers, Edge TPU)")

    @classmethod
    def options_from_args(cls, args):
        return TFLiteOptions(allow_tf_ops=args.allow_tf_ops, quantize=args.quantize, int8_io=args.int8_io)

    def variants(self, options) -> list[str]:
        from ..quantize import selected

        return ["fp32"] + selected(options.quantize, QUANTIZE)

    def tolerance_for(self, variant: str, options) -> Tolerance:
        return TOLERANCES[variant]

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        sm_path, applied = ctx.saved_model(rewrite=True)
        configure, notes, extra = (None, [], {}) if variant == "fp32" else quantization(ctx, options, variant)
        try:
            data, tf_ops = convert_saved_model(sm_path, allow_tf_ops=options.allow_tf_ops, target=self.name,
                                               configure=configure)
        except ConversionError as e:
            if variant != "int8":
                raise
            raise UnsupportedError(self.name, [f"full-integer int8 ({e})"],
                                   "some op has no int8 kernel; use --quantize dynamic or float16") from e
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / ("model.tflite" if variant == "fp32" else f"model_{variant}.tflite")
        out.write_bytes(data)
        art = Artifact(out, variant=variant, notes=list(applied) + notes, extra=extra)
        if tf_ops:
            art.notes.append(f"uses TF Select ops: {', '.join(tf_ops)}")
            reason = (f"the artifact needs the Flex delegate for TF ops {', '.join(tf_ops)}, which ai_edge_litert "
                      "alone does not have (as on a phone or a Pi); link the TensorFlow Lite Flex delegate to run it")
            art.skip.update({rt: reason for rt in self.runtimes})
        return art


def quantization(ctx, options, variant: str):
    """(configure(converter), notes, report extras) for one quantized variant."""
    import tensorflow as tf

    from ..quantize import calibration_inputs, representative_dataset

    if variant not in QUANTIZE:
        raise ValueError(f"Unrecognized variant={variant!r}. Supported variants are: {list(QUANTIZE)}.")
    notes, extra = [], {}
    if variant == "int8":
        _, desc = calibration_inputs(ctx)
        notes.append(desc)
        extra["int8_io"] = options.int8_io

    def configure(conv):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            conv.target_spec.supported_types = [tf.float16]
        elif variant == "int8":
            conv.representative_dataset = representative_dataset(ctx)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if options.int8_io:
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8

    return configure, notes, extra


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
