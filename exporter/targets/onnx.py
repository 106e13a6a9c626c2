"""ONNX through tf2onnx, from one traced function (free batch dimension, Keras names kept).

Keras 3's own `export(format="onnx")` refuses freshly loaded models and turns Normalization
layers into extra inputs; tf2onnx on the traced function handles the same models.

Quantized variants (`--quantize dynamic|int8|all`), made from model.onnx by onnxruntime's
quantization tools after its pre-processing (shape inference + graph optimization):
    dynamic  int8 weights, activations quantized at run time (model_dynamic.onnx)
    int8     static QDQ int8: weights per channel, activation ranges from the calibration data
             (--calibration; MinMax calibration) (model_int8.onnx)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, first_line
from .base import FP32, Artifact, Target, Tolerance, register_target

QUANTIZE = ("dynamic", "int8")
# Same reasoning as the TFLite variants (exporter/targets/tflite.py): 8-bit steps of each
# tensor's range, half a step per quantized layer; the gate judges top-1 and accuracy on --eval.
TOLERANCES = {
    "fp32": FP32,
    "dynamic": Tolerance(atol=1e-3, rtol=0.1, min_top1=0.9),
    "int8": Tolerance(atol=1e-3, rtol=0.1, min_top1=0.9),
}

DEFAULT_OPSET = 17
# Graph plumbing that tf2onnx resolves itself rather than through an op handler.


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = DEFAULT_OPSET
    quantize: str | None = None  # "dynamic", "int8", "all" (exporter/quantize.py)


@register_target
class OnnxTarget(Target):
    name = "onnx"
    description = "ONNX model for onnxruntime and other ONNX runtimes"
    runtimes = ("onnxruntime", "onnxruntime-java")
    pip_extra = "onnx"
    requires = ("tf2onnx", "onnx")
    packages = ("tf2onnx", "onnx", "onnxruntime")
    Options = OnnxOptions
    QUANTIZE = QUANTIZE

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")

    @classmethod
    def options_from_args(cls, args):
        return OnnxOptions(opset=args.opset, quantize=args.quantize)

    def variants(self, options) -> list[str]:
        from ..quantize import selected

        return ["fp32"] + selected(options.quantize, QUANTIZE)

    def tolerance_for(self, variant: str, options) -> Tolerance:
        return TOLERANCES[variant]

    def preflight(self, ctx, options) -> list[str]:
        from tf2onnx import tfonnx  # noqa: F401  (importing it registers the op handlers)
        from tf2onnx.handler import tf_op

        from ..context import STRUCTURAL_OPS, op_types

        graph_def, _, _ = ctx.frozen_graph(rewrite=True)
        ops = op_types(graph_def)
        handled = set()
        for opset_ops in tf_op.get_opsets()[""][: options.opset + 1]:
            handled.update(opset_ops)
        return [f"TF op {op}" for op in sorted(ops) if op not in handled and op not in STRUCTURAL_OPS]

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        if variant != "fp32":
            fp32 = dest / "model.onnx"
            if not fp32.exists():
                self.export(ctx, dest, options, "fp32")
            return quantize_onnx(ctx, fp32, dest / f"model_{variant}.onnx", variant, self.name)
        import shutil

        _, applied = ctx.saved_model(rewrite=True)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / "model.onnx"
        # flask, triton and spark ship this same file: converted once per run, then copied
        made = ctx.made_once(("onnx", options.opset), "model.onnx", lambda p: self._convert(ctx, p, options.opset))
        shutil.copyfile(made, out)
        return Artifact(out, notes=list(applied), extra={"opset": options.opset})

    def _convert(self, ctx, out: Path, opset: int) -> None:
        import tf2onnx

        from ..context import op_types

        graph_def, in_map, out_map = ctx.frozen_graph(rewrite=True)
        sm_path, _ = ctx.saved_model(rewrite=True)
        try:
            if op_types(graph_def) & _TABLE_OPS:
                model_proto = _convert_with_tables(sm_path, opset)
            else:
                model_proto, _ = tf2onnx.convert.from_graph_def(
                    graph_def, input_names=list(in_map), output_names=list(out_map), opset=opset,
                    tensors_to_rename={**in_map, **out_map},
                )
        except Exception as e:
            raise ConversionError(f"target '{self.name}': tf2onnx failed: {first_line(e)}") from e
        names = {o.name for o in model_proto.graph.output} | {i.name for i in model_proto.graph.input}
        expected = set(ctx.signature.input_names) | set(ctx.signature.output_names)
        if names != expected:
            raise ConversionError(f"target '{self.name}': ONNX graph has inputs/outputs {sorted(names)}, "
                                  f"expected the Keras names {sorted(expected)}")
        out.write_bytes(model_proto.SerializeToString())


# Lookup tables (StringLookup, IntegerLookup, ...): freezing leaves their resource handle as a
# graph input; tf2onnx needs the tables' contents, which its SavedModel loader reads.
_TABLE_OPS = {"LookupTableFindV2", "LookupTableSizeV2", "HashTableV2", "MutableHashTableV2"}


def _convert_with_tables(sm_path: Path, opset: int):
    """The path of `python -m tf2onnx.convert --saved-model` (tf2onnx/convert.py main): the
    serving signature frozen with its initialized tables, tensors renamed to the signature keys."""
    import tensorflow as tf
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common

    graph_def, inputs, outputs, tables, rename = tf_loader.from_saved_model(
        str(sm_path), None, None, ["serve"], ["serving_default"], None, False,
        return_initialized_tables=True, return_tensors_to_rename=True)
    with tf.device("/cpu:0"):
        proto, _ = _convert_common(graph_def, name=str(sm_path), opset=opset, input_names=inputs,
                                   output_names=outputs, tensors_to_rename=rename, initialized_tables=tables)
    return proto


def quantize_onnx(ctx, fp32: Path, out: Path, variant: str, target: str) -> Artifact:
    """onnxruntime quantization of the fp32 model (pre-processed first, as onnxruntime advises)."""
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..quantize import calibration_inputs, calibration_reader

    if variant not in QUANTIZE:
        raise ValueError(f"Unrecognized variant={variant!r}. Supported variants are: {list(QUANTIZE)}.")
    notes = []
    with tempfile.TemporaryDirectory(prefix="kexport-onnxq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre))
            if variant == "dynamic":
                quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
            else:
                _, desc = calibration_inputs(ctx)
                notes.append(desc)
                quantize_static(str(pre), str(out), calibration_reader(ctx), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        except Exception as e:  # onnxruntime.quantization raises plain exceptions
            raise ConversionError(f"target '{target}': onnxruntime {variant} quantization failed: {first_line(e)}") from e
    return Artifact(out, variant=variant, notes=notes)
