"""ONNX through tf2onnx, from one traced function (free batch dimension, Keras names kept).

Keras 3's own `export(format="onnx")` refuses freshly loaded models and turns Normalization
layers into extra inputs; tf2onnx on the traced function handles the same models.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, UnsupportedError
from .base import Artifact, Target, register_target
from .tflite import first_line

DEFAULT_OPSET = 17
# Graph plumbing that tf2onnx resolves itself rather than through an op handler.
_STRUCTURAL = {"Placeholder", "Const", "Identity", "IdentityN", "NoOp", "ReadVariableOp",
               "VarHandleOp", "StatefulPartitionedCall", "PartitionedCall", "_Arg", "_Retval"}


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = DEFAULT_OPSET


@register_target
class OnnxTarget(Target):
    name = "onnx"
    description = "ONNX model for onnxruntime and other ONNX runtimes"
    runtimes = ("onnxruntime",)
    extra = "onnx"
    requires = ("tf2onnx", "onnx")
    Options = OnnxOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")

    @classmethod
    def options_from_args(cls, args):
        return OnnxOptions(opset=getattr(args, "opset", None) or DEFAULT_OPSET)

    def preflight(self, ctx, options) -> list[str]:
        from tf2onnx import tfonnx  # noqa: F401  (importing it registers the op handlers)
        from tf2onnx.handler import tf_op

        graph_def, _, _ = ctx.frozen_graph(rewrite=True)
        ops = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
        handled = set()
        for opset_ops in tf_op.get_opsets()[""][: options.opset + 1]:
            handled.update(opset_ops)
        return [f"TF op {op}" for op in sorted(ops) if op not in handled and op not in _STRUCTURAL]

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        import tf2onnx

        graph_def, in_map, out_map = ctx.frozen_graph(rewrite=True)
        _, applied = ctx.saved_model(rewrite=True)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / "model.onnx"
        try:
            model_proto, _ = tf2onnx.convert.from_graph_def(
                graph_def, input_names=list(in_map), output_names=list(out_map), opset=options.opset,
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
        return Artifact(out, notes=list(applied), extra={"opset": options.opset})
