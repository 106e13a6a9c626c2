"""OpenVINO IR (model.xml + model.bin), converted by `openvino.convert_model` from the SavedModel
serving signature kexport already writes (every Keras input/output name and free dimension
kept), verified by the OpenVINO Runtime on the CPU device in a process without TensorFlow.

Source, measured (docs/openvino.md): the SavedModel signature and the verified ONNX artifact
convert the same model families (samples, conv, depthwise, masked LSTM/GRU, attention, dict
outputs, siamese multi-IO, free H x W, Conv3D, grouped conv + exact GELU, ...), at the same
errors; the SavedModel needs neither tf2onnx nor an ONNX conversion, and its signature already
carries the Keras names, so it is the source. The rewritten trace (exporter/rewrites.py) is the
one TFLite converts too (written once per run): both traces convert and pass, and the unrolled
LSTM runs 2.5x faster in OpenVINO than its loop (token_lstm: 0.71 vs 1.79 ms, 1 thread).

Precision: `ov.save_model` compresses weights to float16 *by default*; kexport writes fp32
(`compress_to_fp16=False`) and offers the compressed forms as variants (`--quantize`):
    float16  float16 weights, decompressed to f32 when compiled (model_float16/)
    int8     int8 weights (NNCF `compress_weights`, INT8_ASYM: per output channel, data-free),
             decompressed at run time; activations stay float (model_int8/)
Every variant is a folder holding model.xml + model.bin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConversionError, UnsupportedError, first_line
from ..base import FP32, Artifact, Target, Tolerance, register_target

QUANTIZE = ("float16", "int8")
# Against the float32 Keras model, by variant; fp32 stays strict (FP32; measured 0 - 1.2e-6).
# float16 weights: relative rounding error 2^-11 (4.9e-4) per weight, a few times that on an
# output after a dot product of independent errors: rtol 1e-2 of the output's scale (the same
# bound as TFLite float16; measured up to 1.4e-3 relative on the samples, docs/openvino.md).
# int8 weights: a step is 1/255 of a channel's weight range (asymmetric), half a step per weight,
# growing through 4-6 layers to a few percent of the output scale: rtol 0.1 as for TFLite's
# dynamic int8 (measured up to 2.0e-2 relative); the gate judges top-1 and accuracy on --eval.
TOLERANCES = {
    "fp32": FP32,
    "float16": Tolerance(atol=1e-4, rtol=1e-2, min_top1=0.98),
    "int8": Tolerance(atol=1e-3, rtol=0.1, min_top1=0.9),
}
RUNTIME_OPTIONS = {"inference_precision": "f32"}  # see runtimes/openvino_cpu.py: bf16 by default on AVX512_BF16/AMX


@dataclass(frozen=True)
class OpenVINOOptions:
    quantize: str | None = None  # "float16", "int8", "all" (exporter/quantize.py)


@register_target
class OpenVINOTarget(Target):
    name = "openvino"
    description = "OpenVINO IR (model.xml + model.bin) for Intel CPUs, GPUs and NPUs"
    runtimes = ("openvino-cpu",)
    pip_extra = "openvino"
    requires = ("openvino", "tensorflow")
    packages = ("openvino", "nncf")
    Options = OpenVINOOptions
    QUANTIZE = QUANTIZE

    @classmethod
    def options_from_args(cls, args):
        return OpenVINOOptions(quantize=args.quantize)

    def variants(self, options) -> list[str]:
        from ...quantize import selected

        return ["fp32"] + selected(options.quantize, QUANTIZE)

    def tolerance_for(self, variant: str, options) -> Tolerance:
        return TOLERANCES[variant]

    def preflight(self, ctx, options) -> list[str]:
        """Every TF op the OpenVINO TensorFlow frontend cannot convert, each with its reason."""
        return converted(ctx)[1]

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        import openvino as ov

        if variant not in TOLERANCES:
            raise ValueError(f"Unrecognized variant={variant!r}. Supported variants are: {list(TOLERANCES)}.")
        model, problems, applied = converted(ctx)
        if problems:
            raise UnsupportedError(self.name, problems, HINT)
        model = model.clone()
        notes = list(applied)
        if variant == "int8":
            model = compress_int8(model, self.name)
            notes.append("int8 weights (NNCF INT8_ASYM, per output channel, data-free); activations float")
        out = dest / ("model" if variant == "fp32" else f"model_{variant}")
        out.mkdir(parents=True, exist_ok=True)
        try:
            ov.save_model(model, str(out / "model.xml"), compress_to_fp16=(variant == "float16"))
        except RuntimeError as e:
            raise ConversionError(f"target '{self.name}': saving the IR failed: {first_line(e)}") from e
        return Artifact(out, variant=variant, notes=notes, runtime_options=dict(RUNTIME_OPTIONS),
                        extra={**device_record(), "source": "SavedModel serving_default",
                               "weights": {"fp32": "float32", "float16": "float16", "int8": "int8"}[variant]})


HINT = ("the OpenVINO TensorFlow frontend has no conversion for them; keep such layers (lookup tables, "
        "string ops) outside the exported model, or use the saved-model target")


def converted(ctx):
    """(ov.Model with Keras names, [], rewrites applied) or (None, [every unsupported op with its
    reason], []); converted once per run."""
    key = "openvino.model"
    if key not in ctx._cache:
        ctx._cache[key] = _convert(ctx)
    return ctx._cache[key]


def _convert(ctx):
    import openvino as ov

    from ...native_log import captured_native_stderr

    sm_path, applied = ctx.saved_model(rewrite=True)
    try:
        with captured_native_stderr():
            model = ov.convert_model(str(sm_path))
    except Exception as e:  # the frontend raises OpConversionFailure / RuntimeError with a report
        ops = unconverted_ops(str(e))
        if ops:
            return None, ops, []
        raise ConversionError(f"target 'openvino': openvino.convert_model failed: {first_line(e)}") from e
    keep_keras_names(model, ctx.signature)
    return model, [], list(applied)


def unconverted_ops(text: str) -> list[str]:
    """'TF op X (reason)' for every op in the frontend's failure report, in its order."""
    reasons = {}
    for m in re.finditer(r"^-- (\w+) with a message:\n(.*?)(?=^-- |^Summary:|\Z)", text, re.M | re.S):
        lines = [ln.strip() for ln in m.group(2).splitlines()
                 if ln.strip() and not ln.startswith("Exception from") and "Check '" not in ln]
        reasons[m.group(1)] = lines[0][:160] if lines else ""
    ops = []
    for label in ("No conversion rule found for operations:", "Conversion is failed for:"):
        m = re.search(re.escape(label) + r"\s*([^\n]+)", text)
        if m:
            ops += [o.strip() for o in m.group(1).split(",") if o.strip()]
    ops = list(dict.fromkeys(ops or reasons))
    return [f"TF op {op}" + (f" ({reasons[op]})" if reasons.get(op) else " (no conversion rule)") for op in ops]


def keep_keras_names(model, signature) -> None:
    """Give every port exactly its Keras name; refuse a model whose ports do not map one to one
    onto the Keras inputs/outputs, or that fixed a dimension Keras left free."""
    for ports, specs, kind in ((model.inputs, signature.inputs, "inputs"), (model.outputs, None, "outputs")):
        want = [t.name for t in specs] if specs is not None else list(signature.output_names)
        found = {}
        for port in ports:
            hit = [n for n in want if n in port.get_names()]
            if len(hit) != 1:
                raise ConversionError(f"target 'openvino': an IR {kind[:-1]} has names {sorted(port.get_names())}, "
                                      f"not exactly one of the Keras {kind} {want}")
            found[hit[0]] = port
        if sorted(found) != sorted(want) or len(ports) != len(want):
            raise ConversionError(f"target 'openvino': IR {kind} {sorted(found)} do not match "
                                  f"the Keras {kind} {sorted(want)}")
        for name, port in found.items():
            port.get_tensor().set_names({name})
    for spec in signature.inputs:
        shape = next(p for p in model.inputs if p.get_any_name() == spec.name).get_partial_shape()
        same_rank = shape.rank.is_static and shape.rank.get_length() == len(spec.shape)
        if not same_rank or any(d is None and not shape[i].is_dynamic for i, d in enumerate(spec.shape)):
            raise ConversionError(f"target 'openvino': input '{spec.name}' became {shape}, Keras has "
                                  f"{list(spec.shape)} (free dimensions must stay free)")


def compress_int8(model, target: str):
    """NNCF data-free int8 weight compression (asymmetric, per output channel)."""
    import contextlib
    import importlib.util
    import io
    import logging

    if importlib.util.find_spec("nncf") is None:
        raise UnsupportedError(target, ["int8 weight compression"],
                               "NNCF is not installed: pip install 'kexport[openvino]'")
    with contextlib.redirect_stdout(io.StringIO()):  # progress bars
        import nncf

        nncf.set_log_level(logging.ERROR)
        try:
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        except Exception as e:  # nncf raises its own error types and plain ones
            raise ConversionError(f"target '{target}': NNCF int8 weight compression failed: {first_line(e)}") from e


def device_record() -> dict:
    """What the report records about where the artifact is verified."""
    from kexport.runtimes.openvino_cpu import device_info

    return {"openvino_device": device_info(RUNTIME_OPTIONS["inference_precision"])}
