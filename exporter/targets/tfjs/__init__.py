"""TF.js: a graph model converted in-process by `tensorflowjs` from the rewritten SavedModel
(default), or a layers model (`--format layers`) with the Keras 3 topology translated to the
Keras 2 form TF.js reads. Verified in Node (cpu and wasm backends) and in headless Chromium.

Layout of OUT/tfjs/: one folder per variant (`fp32/`, `float16/`, `uint8/`, `uint16/`), each a
`model.json` plus weight shards; with `--demo`, `index.html` and `vendor/` (the TF.js bundle from
runtimes/tfjs_node/node_modules) next to them, a page that runs the fp32 model in a browser.

Why the SavedModel: `tensorflowjs_converter --input_format keras` on a Keras 3 `.h5` writes a
layers model TF.js 4.22 refuses to load, and reports success. The rewrites (exact GELU -> Erf,
grouped conv, RNN unrolling) keep `Erfc` and `While` loops, which TF.js rejects or fails on at
run time, out of the graph. See docs/tfjs.md.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConversionError, UnsupportedError, UsageError, first_line
from ..base import FP32, Artifact, Target, Tolerance, register_target

FORMATS = ("graph", "layers")
QUANTIZE_CHOICES = ("float16", "uint8", "uint16")
DEFAULT_SHARD = 4 * 1024 * 1024  # the converter's default: 4 MiB keeps browser caching effective

# float16 / uint16 weights: each weight is rounded to 11 mantissa bits (fp16, relative 4.9e-4)
# or to 1/65535 of its tensor's range (uint16); activations stay float32. The output error is
# that of the model with those rounded weights: ~1e-3 of the output scale through a few layers.
# 1e-2 of the scale leaves margin; top-1 agreement catches a real break.
HALF = Tolerance(atol=1e-3, rtol=1e-2, min_top1=0.99)
# uint8: per-tensor affine quantization to 256 levels (step = range/255), the rounding error of
# each weight is up to 1/510 of its tensor's range: outputs move by a few percent of their scale.
UINT8 = Tolerance(atol=1e-2, rtol=1e-1, min_top1=0.99)


@dataclass(frozen=True)
class TfjsOptions:
    format: str = "graph"
    quantize: str | None = None  # comma list of float16|uint8|uint16, or "all" (extra variants)
    shard_size: int = DEFAULT_SHARD
    demo: bool = False


def parse_size(text) -> int:
    """'4194304', '4MB', '512k' -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]i?[bB]?)?\s*", str(text))
    if not m:
        raise UsageError(f"--shard-size={text!r}: expected bytes, e.g. 4194304 or 4MB")
    n = int(m.group(1)) * {"k": 1024, "m": 1024 * 1024}.get((m.group(2) or " ")[0].lower(), 1)
    if n <= 0:
        raise UsageError(f"--shard-size={text!r}: must be positive")
    return n


@register_target
class TfjsTarget(Target):
    name = "tfjs"
    description = "TensorFlow.js graph (or layers) model for browsers and Node, with a demo page"
    runtimes = ("tfjs-node-cpu", "tfjs-node-wasm", "tfjs-chromium")
    pip_extra = "tfjs"
    requires = ("tensorflowjs", "tensorflow")
    packages = ("tensorflowjs",)
    tolerance = FP32
    Options = TfjsOptions
    QUANTIZE = QUANTIZE_CHOICES

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--format", choices=FORMATS, default="graph",
                            help="graph model (default, from the SavedModel) or layers model (tf.loadLayersModel)")
        parser.add_argument("--shard-size", default=str(DEFAULT_SHARD),
                            help="max bytes per weight shard file, e.g. 4MB (default 4 MiB)")
        parser.add_argument("--demo", action="store_true",
                            help="also write index.html, a page that runs the model in a browser (kexport serve-demo)")

    @classmethod
    def options_from_args(cls, args):
        return TfjsOptions(format=args.format, quantize=args.quantize, shard_size=parse_size(args.shard_size),
                           demo=args.demo)

    def variants(self, options) -> list[str]:
        from ...quantize import selected

        return ["fp32"] + selected(options.quantize, QUANTIZE_CHOICES)

    def tolerance_for(self, variant: str, options) -> Tolerance:
        return {"fp32": FP32, "float16": HALF, "uint16": HALF, "uint8": UINT8}[variant]

    def preflight(self, ctx, options) -> list[str]:
        strings = [f"input '{t.name}' is a string tensor: tensorflowjs 4.22 leaves the lookup table of a "
                   "StringLookup as an extra model input, so no TF.js backend can run it (map strings to "
                   "integer ids in JavaScript and export the model after its StringLookup)"
                   for t in ctx.signature.inputs if t.dtype == "string"]
        if strings:
            return strings
        if options.format == "layers":
            from .layers import layers_problems

            return layers_problems(ctx.model)
        from .graph import STRUCTURAL_OPS, unsupported_tf_ops

        # The traced (rewritten) function, not the frozen graph: freezing means writing and
        # reloading a SavedModel, which the converter does again anyway. Variable reads are the
        # only ops freezing removes.
        concrete, _, _ = ctx.serving_function(rewrite=True)
        ops = unsupported_tf_ops(concrete.graph.as_graph_def())
        return [f"TF op {op}" for op in ops if op not in STRUCTURAL_OPS]

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        out = dest / variant
        qmap = None if variant == "fp32" else {variant: True}
        if options.format == "layers":
            from .layers import write_layers_model

            notes, runtime_options = write_layers_model(ctx, out, qmap, options.shard_size, self.name)
        else:
            notes, runtime_options = self._graph(ctx, out, qmap, options.shard_size)
        # the folder, so report sizes count the weight shards, not only model.json
        art = Artifact(out, variant=variant, notes=notes, runtime_options=runtime_options)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        art.extra["format"] = options.format
        art.extra["weight_shards"] = len([f for f in out.iterdir() if f.suffix == ".bin"])
        if variant == "fp32":
            ctx._cache["tfjs.fp32_bytes"] = size
            if getattr(getattr(ctx, "export_options", None), "benchmark", False):  # latency only when asked
                art.extra["runtime_timing"] = self._timing(art, ctx)
            if options.demo:
                from .demo import write_demo

                write_demo(ctx, dest, out, runtime_options)
                art.notes.append("demo page: index.html (kexport serve-demo OUT)")
        else:
            base = ctx._cache.get("tfjs.fp32_bytes")
            art.extra["quantized_weights"] = variant
            art.extra["size_ratio"] = round(size / base, 4) if base else None
        return art

    def _graph(self, ctx, out: Path, qmap, shard_size: int):
        from .graph import keras_signature_names, quiet_tensorflowjs, repair_model_json

        quiet_tensorflowjs()
        from tensorflowjs.converters.tf_saved_model_conversion_v2 import convert_tf_saved_model

        sm_path, applied = ctx.saved_model(rewrite=True)
        try:
            convert_tf_saved_model(str(sm_path), str(out), signature_def="serving_default",
                                   quantization_dtype_map=qmap, weight_shard_size_bytes=shard_size)
        except ValueError as e:  # "Unsupported Ops in the model ..."
            ops = _ops_from_error(str(e))
            if ops:
                raise UnsupportedError(self.name, [f"TF op {o}" for o in ops],
                                       "TF.js has no kernel for them; see docs/tfjs.md") from e
            raise ConversionError(f"target '{self.name}': tensorflowjs converter failed: {first_line(e)}") from e
        except Exception as e:  # the converter raises bare Exceptions too
            raise ConversionError(f"target '{self.name}': tensorflowjs converter failed: {first_line(e)}") from e
        model_json = out / "model.json"
        if not model_json.exists():
            raise ConversionError(f"target '{self.name}': the converter wrote no model.json in {out} "
                                  "(it could not freeze the SavedModel)")
        notes, problems = repair_model_json(model_json)
        if problems:
            raise UnsupportedError(self.name, problems, "no TF.js backend implements these fused kernels")
        data = json.loads(model_json.read_text())
        _, in_map, out_map = ctx.frozen_graph(rewrite=True)
        renamed = keras_signature_names(data, in_map, out_map)
        if renamed:
            model_json.write_text(json.dumps(data))
            notes += renamed
        _check_names(data, ctx.signature, self.name)
        return list(applied) + notes, {"format": "graph"}

    def _timing(self, art: Artifact, ctx) -> dict:
        """Node start, load and per-prediction latency, cpu vs wasm, and the backend the browser
        page uses (report.json `runtime_timing`): each runtime's own `timing()`."""
        from kexport.runtimes import get_runtime

        return {name: get_runtime(name).timing(str(art.path), ctx.inputs, **art.runtime_options) for name in self.runtimes}


def _ops_from_error(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or "Unsupported Ops" not in lines[0] or len(lines) < 2:
        return []
    return sorted(o.strip() for o in lines[1].split(",") if o.strip())


def _check_names(model_json: dict, signature, target: str) -> None:
    sig = model_json.get("signature") or {}
    ins, outs = set(sig.get("inputs") or {}), set(sig.get("outputs") or {})
    if ins != set(signature.input_names) or outs != set(signature.output_names):
        raise ConversionError(
            f"target '{target}': model.json signature has inputs {sorted(ins)} / outputs {sorted(outs)}, "
            f"expected the Keras names {signature.input_names} / {signature.output_names}")


def serve_demo(out, host: str = "127.0.0.1", port: int = 8000) -> None:
    """`kexport serve-demo`: serve the demo page of an export (see demo.py)."""
    from .demo import serve

    serve(out, host, port)


def keras2_config(model) -> tuple[dict, list[str]]:
    """The Keras 3 -> Keras 2 topology translation of the layers format (layers.py), for other
    targets that write a Keras 2 model (dl4j): (config, problems)."""
    from .layers import keras2_config as translate

    return translate(model)


def keras2_layers(model):
    """(flat Keras 3 layer config entries, leaf layers): nested Functional/Sequential models
    inlined as keras2_config inlines them (layers.py), for targets that check or fill the twin
    layer by layer. Raises ValueError (one line) for a nesting that cannot be inlined."""
    from .layers import flat_config, leaf_layers

    cfg = model.get_config()
    if not isinstance(cfg, dict) or "layers" not in cfg:  # a subclassed model: no layer graph to read
        return [], leaf_layers(model)
    return flat_config(cfg, type(model).__name__ == "Sequential")["layers"], leaf_layers(model)


def keras_tensor_refs(args) -> list:
    """The keras_history of every Keras tensor in a layer config's call arguments (layers.py)."""
    from .layers import tensor_refs

    return tensor_refs(args)


def is_keras_tensor(value) -> bool:
    """A Keras tensor in a layer config's call arguments (layers.py)."""
    from .layers import is_tensor

    return is_tensor(value)


def check_keras2_twin(twin, ctx, target: str) -> None:
    """Raise ConversionError unless a Keras 2 twin computes what the model computes (layers.py)."""
    from .layers import check_twin

    check_twin(twin, ctx, target)
