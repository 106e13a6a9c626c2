"""CoreML: an ML Program `.mlpackage` (default) or a legacy NeuralNetwork `.mlmodel`, converted by
coremltools from ONE traced concrete function (the rewritten serving function).

`ct.convert(keras_model)` breaks on Keras 3 models and the SavedModel from `model.export()` has
several concrete functions, which coremltools refuses; the traced function is the robust path.

The batch dimension is fixed to 1: that is how an app calls a CoreML model (one camera frame,
one request), it keeps every shape static so coremltools folds the shape arithmetic, and the
runtimes serve a batch row by row (`runtime_options["batch"]`).

Verified on Linux by `coreml-reference` (runtimes/coreml_reference, a NumPy ML Program
interpreter) and, on macOS, by `coreml` (native prediction). See docs/coreml.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConversionError, UsageError, first_line
from ..base import Artifact, Target, Tolerance, register_target
from .floor import METADATA_KEY, Floor, conditioning, first_overflow, measure

IOS_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
NN_TARGETS = ("iOS13", "iOS14", "macOS10_15", "macOS11")  # legacy neuralnetwork format only
# --quantize vocabulary (shared flag, exporter/quantize.py) = the variant names, as on every
# target: float16 = the fp16 program, int8 = linear per-channel weights, palettize = 6-bit k-means
# lookup tables (fp32 = the float32 program).
QUANTIZE = ("float16", "int8", "palettize")
# Deprecated: the names CoreML rows had before they matched the other targets' (kexport <= 0.1).
# Still accepted by --quantize and read from existing export directories by `kexport verify`.
QUANTIZE_ALIASES = {"fp16": "float16", "palettized": "palettize"}
COLOR_LAYOUTS = ("RGB", "BGR", "GRAYSCALE")

# The bound for fp32 ML Programs: |err| <= 1e-4 * max|keras| + 1e-6 (fp32 kernels differ
# from TensorFlow's only in summation order).
FP32 = Tolerance(atol=1e-6, rtol=1e-4)
# fp16 programs store every tensor in half precision (relative rounding 4.9e-4 per op). Measured
# (docs/coreml.md, random weights with calibrated BatchNorm): max|err| / max|keras| from 2.3e-4
# (sample models) to 1.8e-2 (MobileNetV2) and 4.1e-2 (InceptionV3, whose softmax saturates: a
# logit error e moves p by p(1-p)e). 5e-2 of the output scale plus 1e-3 (two fp16 steps near 1.0)
# bounds those; top-1 agreement >= 0.99 is the regression check that matters for a classifier.
FP16 = Tolerance(atol=1e-3, rtol=5e-2, min_top1=0.99)
# 8-bit linear weights (per-channel) and 6-bit palettes change the weights themselves: the error
# is that of the model with rounded weights, measured up to ~6e-2 of the output scale.
INT8 = Tolerance(atol=1e-2, rtol=1e-1, min_top1=0.9)
PALETTIZED = Tolerance(atol=2e-2, rtol=2e-1, min_top1=0.9)
# Ops that coremltools lists as convertible but crashes on for Keras 3 graphs.
_LOOP = ("coremltools 9 crashes (IndexError) on the loop a recurrent layer lowers to when its sequence "
         "length is not fixed; give the Input a fixed length so kexport unrolls it")
BROKEN_TF_OPS = {"StatelessWhile": _LOOP, "While": _LOOP}


@dataclass(frozen=True)
class CoreMLOptions:
    format: str = "mlprogram"  # mlprogram | neuralnetwork
    deployment_target: str | None = None
    precision: str = "float16"
    quantize: str | None = None  # shared --quantize: "int8,palettize", "all", ...
    image_input: str | None = None
    scale: float = 1.0
    bias: tuple = (0.0,)
    color_layout: str = "RGB"
    class_labels: str | None = None  # path to a text file, one label a line
    author: str | None = None
    license: str | None = None
    short_description: str | None = None
    model_version: str | None = None


@register_target
class CoreMLTarget(Target):
    name = "coreml"
    description = "CoreML ML Program (.mlpackage) for iOS/macOS, verified on Linux by a reference interpreter"
    runtimes = ("coreml-reference", "coreml")
    pip_extra = "coreml"
    requires = ("coremltools", "tensorflow")
    packages = ("coremltools",)
    tolerance = FP32
    Options = CoreMLOptions
    QUANTIZE = QUANTIZE
    QUANTIZE_ALIASES = QUANTIZE_ALIASES

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        # own dest: `kexport all` merges every target's flags and tfjs has a --format of its own
        parser.add_argument("--format", dest="coreml_format", choices=("mlprogram", "neuralnetwork"),
                            default="mlprogram", help="mlprogram (.mlpackage, iOS15+, default) or neuralnetwork (.mlmodel, iOS14 and older)")
        parser.add_argument("--deployment-target", choices=IOS_TARGETS + NN_TARGETS,
                            help="minimum OS (default iOS15 for mlprogram, iOS14 for neuralnetwork)")
        parser.add_argument("--precision", choices=("float16", "float32"), default="float16",
                            help="compute precision of the program (default float16, as coremltools)")
        parser.add_argument("--image-input", metavar="NAME", help="make this input a CoreML image (camera frames)")
        parser.add_argument("--scale", type=float, default=1.0, help="image input: tensor = scale * pixel + bias")
        parser.add_argument("--bias", default="0", help="image input: one value, or one per channel 'r,g,b'")
        parser.add_argument("--color-layout", choices=COLOR_LAYOUTS, default="RGB", help="image input channel order")
        parser.add_argument("--class-labels", metavar="LABELS.txt",
                            help="one label a line: make a CoreML classifier (label + probabilities)")
        parser.add_argument("--author", help="model metadata: author")
        parser.add_argument("--license", help="model metadata: license")
        parser.add_argument("--short-description", help="model metadata: short description")
        parser.add_argument("--model-version", help="model metadata: version string")

    @classmethod
    def options_from_args(cls, args):
        try:
            bias = tuple(float(b) for b in str(args.bias).split(","))
        except ValueError as e:
            raise UsageError(f"--bias={args.bias!r}: expected a number or 'r,g,b' numbers") from e
        return CoreMLOptions(
            format=args.coreml_format, deployment_target=args.deployment_target, precision=args.precision,
            quantize=args.quantize, image_input=args.image_input, scale=args.scale, bias=bias,
            color_layout=args.color_layout, class_labels=args.class_labels, author=args.author,
            license=args.license, short_description=args.short_description, model_version=args.model_version,
        )

    def variants(self, options) -> list[str]:
        from ...quantize import selected

        base = "float16" if options.precision == "float16" else "fp32"
        if options.format == "neuralnetwork":
            return [base]
        return list(dict.fromkeys([base] + selected(canonical_quantize(options.quantize), QUANTIZE)))

    def tolerance_for(self, variant: str, options) -> Tolerance:
        variant = QUANTIZE_ALIASES.get(variant, variant)  # rows written before the rename
        return {"fp32": FP32, "float16": FP16, "int8": INT8, "palettize": PALETTIZED}[variant]

    def conditioning(self, artifact):
        """(noise, note) for the fp16 program: per sample, FACTOR x how far Keras itself moves when
        it computes in float16, measured at export and stored in the package (floor.py)."""
        if QUANTIZE_ALIASES.get(artifact.variant, artifact.variant) != "float16":
            return None, None
        return conditioning(stored_floor(artifact.path))

    def preflight(self, ctx, options) -> list[str]:
        from coremltools.converters.mil.frontend.tensorflow import ops  # noqa: F401  (registers handlers)
        from coremltools.converters.mil.frontend.tensorflow.tf_op_registry import _TF_OPS_REGISTRY

        check_options(ctx.signature, options, self.name)
        # the graph coremltools converts: the traced function (its loops stay StatelessWhile)
        from ...context import STRUCTURAL_OPS, op_types

        ops_used = op_types(ctx.serving_function(rewrite=True)[0].graph.as_graph_def())
        problems = [f"input '{t.name}' is a string tensor: Core ML has no string tensor type (feed token "
                    "ids: map strings to integers in the app and export the model after its StringLookup)"
                    for t in ctx.signature.inputs if t.dtype == "string"]
        if problems:
            return problems
        for op in sorted(ops_used - STRUCTURAL_OPS):
            if op in BROKEN_TF_OPS:
                problems.append(f"TF op {op}: {BROKEN_TF_OPS[op]}")
            elif op not in _TF_OPS_REGISTRY:
                problems.append(f"TF op {op}")
        return problems

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        model, notes = convert(ctx, options, variant, self.name)
        floor = _float16_floor(ctx, model, options, variant, notes)
        dest.mkdir(parents=True, exist_ok=True)
        ext = "mlpackage" if options.format == "mlprogram" else "mlmodel"
        out = dest / f"{ctx.name}_{variant}.{ext}"
        model.save(str(out))
        if floor is not None and floor.overflow is not None:
            _refuse_overflow(ctx, out, floor, self.name)
        art = Artifact(out, variant=variant, notes=notes, runtime_options={"batch": 1},
                       extra={"format": options.format, "deployment_target": variant_target(options, variant),
                              "precision": "float16" if variant == "float16" else "float32"})
        if options.image_input:
            art.runtime_options["image_inputs"] = {options.image_input: {"scale": options.scale,
                                                                         "bias": list(options.bias)}}
        if options.format == "neuralnetwork":
            art.skip["coreml-reference"] = ("the reference interpreter executes ML Programs only; a NeuralNetwork "
                                            ".mlmodel (iOS14 and older) runs only in Core ML on macOS")
        return art


def canonical_quantize(value):
    """--quantize with the deprecated CoreML names (fp16, palettized) spelled as today."""
    from ...quantize import requested

    return [QUANTIZE_ALIASES.get(v, v) for v in requested(value)]


def _float16_floor(ctx, mlmodel, options, variant: str, notes: list) -> Floor | None:
    """Measure the model's float16 floor for the fp16 program and store it in the package."""
    if variant != "float16" or options.format != "mlprogram":
        return None
    floor = measure(ctx)
    if floor.reason:
        notes.append(f"float16 floor not measured ({floor.reason}): the documented fp16 bound applies")
        return floor
    mlmodel.user_defined_metadata[METADATA_KEY] = floor.to_metadata()
    return floor


def _refuse_overflow(ctx, path: Path, floor: Floor, target: str) -> None:
    """Keras overflowed in float16 on a reference sample: find the op of the program that does."""
    s, i = floor.overflow
    x = ([(ctx.inputs, None)] + list(getattr(ctx.outputs, "alternates", ()) or ()))[s][0]
    where = first_overflow(str(path), {k: np.asarray(v)[i:i + 1] for k, v in x.items()},
                           [layer.name for layer in _keras_layers(ctx.model)])
    if where:
        raise ConversionError(f"target '{target}': float16 overflows at {where} on reference sample {i}; "
                              "export with --precision float32 (or rescale that layer's inputs)")


def _keras_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _keras_layers(layer)


def stored_floor(path) -> Floor | None:
    """The float16 floor recorded in an fp16 package (None for packages written before it was)."""
    import coremltools as ct

    try:
        meta = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
    except Exception:  # not a package coremltools reads: the runtime row reports that  # noqa: BLE001
        return None
    return Floor.from_metadata(meta.get(METADATA_KEY))


def deployment_target(options) -> str:
    if options.deployment_target:
        return options.deployment_target
    return "iOS15" if options.format == "mlprogram" else "iOS14"


def variant_target(options, variant: str) -> str:
    """Compressed weights (constexpr ops) need iOS16 / macOS13: raise the floor for those variants."""
    dt = deployment_target(options)
    if variant in ("int8", "palettize") and dt in ("iOS15", "macOS12"):
        return "iOS16" if dt == "iOS15" else "macOS13"
    return dt


def check_options(signature, options, target: str) -> None:
    """Every bad option, before converting: image input, class labels, deployment target."""
    dt = deployment_target(options)
    if options.format == "mlprogram" and dt not in IOS_TARGETS:
        raise UsageError(f"target '{target}': --deployment-target {dt} is too old for an ML Program "
                         f"(needs one of {', '.join(IOS_TARGETS)}); use --format neuralnetwork for it")
    if options.format == "neuralnetwork" and dt not in NN_TARGETS:
        raise UsageError(f"target '{target}': --format neuralnetwork is for {', '.join(NN_TARGETS)}; "
                         f"--deployment-target {dt} should use the default mlprogram format")
    if options.image_input:
        image_layout(signature, options, target)
    if options.class_labels:
        read_labels(signature, options.class_labels, target)


def image_layout(signature, options, target: str) -> bool:
    """Validates --image-input; returns True when the input is channels-first."""
    names = signature.input_names
    if options.image_input not in names:
        raise UsageError(f"target '{target}': --image-input {options.image_input!r} names no model input; "
                         f"the inputs are {names}")
    spec = next(t for t in signature.inputs if t.name == options.image_input)
    want = 1 if options.color_layout == "GRAYSCALE" else 3
    shape = tuple(spec.shape)
    fix = f"an image input must be (batch, height, width, {want}) or (batch, {want}, height, width)"
    if len(shape) != 4 or "float" not in spec.dtype or None in shape[1:]:
        raise UsageError(f"target '{target}': input '{spec.name}' has shape {list(shape)} ({spec.dtype}), "
                         f"not an image; {fix}, float, with fixed sizes")
    if shape[3] == want:
        first = False
    elif shape[1] == want:
        first = True
    else:
        raise UsageError(f"target '{target}': input '{spec.name}' has shape {list(shape)}: no axis of "
                         f"{want} channels for --color-layout {options.color_layout}; {fix}")
    if len(options.bias) not in (1, want):
        raise UsageError(f"target '{target}': --bias has {len(options.bias)} values; give 1 or {want}")
    return first


def read_labels(signature, path, target: str) -> list[str]:
    try:
        labels = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read --class-labels ({e})") from e
    probs = [t for t in signature.outputs if len(t.shape) == 2]
    if len(signature.outputs) != 1 or not probs:
        raise UsageError(f"target '{target}': --class-labels needs a model with one (batch, classes) output; "
                         f"outputs are {[(t.name, list(t.shape)) for t in signature.outputs]}")
    n = probs[0].shape[1]
    if len(labels) != n:
        raise UsageError(f"{path}: {len(labels)} labels but output '{probs[0].name}' has {n} classes; "
                         "write one label a line, in class order")
    return labels


def convert(ctx, options, variant: str, target: str):
    """Returns (ct.models.MLModel with the Keras input/output names, notes)."""
    import coremltools as ct
    import numpy as np

    sig = ctx.signature
    concrete, _, applied = ctx.serving_function(rewrite=True)
    notes = list(applied)
    channels_first = image_layout(sig, options, target) if options.image_input else False
    inputs = []
    for t in sig.inputs:
        shape = (1,) + tuple(t.shape[1:])
        if None in shape:
            # Free sizes stay free (a RangeDim, default = the reference size): an app may feed any
            # size the model accepts. Verified by the interpreter at two sizes.
            ref = ctx.inputs[t.name].shape
            # (ML Programs need a finite upper bound: 4x the reference size, at least 1024)
            shape = ct.Shape((1,) + tuple(ct.RangeDim(lower_bound=1, upper_bound=max(1024, 4 * int(ref[i])),
                                                      default=int(ref[i]))
                                          if d is None else int(d) for i, d in enumerate(t.shape[1:], 1)))
            notes.append(f"input '{t.name}': free dimensions kept flexible (RangeDim, default {list(ref[1:])})")
        if t.name == options.image_input:
            bias = list(options.bias) if len(options.bias) > 1 else options.bias[0]
            inputs.append(ct.ImageType(name=t.name, shape=shape, scale=options.scale, bias=bias,
                                       color_layout=getattr(ct.colorlayout, options.color_layout),
                                       channel_first=channels_first))
            notes.append(f"input '{t.name}' is a CoreML image ({options.color_layout}, "
                         f"tensor = {options.scale} * pixel + {options.bias})")
        else:
            dtype = np.int32 if "int" in t.dtype else (np.bool_ if t.dtype == "bool" else np.float32)
            inputs.append(ct.TensorType(name=t.name, shape=shape, dtype=dtype))
    labels = read_labels(sig, options.class_labels, target) if options.class_labels else None
    dt = variant_target(options, variant)
    if dt != deployment_target(options):
        notes.append(f"deployment target raised to {dt}: compressed weights need it")
    kwargs = {"convert_to": options.format, "inputs": inputs, "minimum_deployment_target": getattr(ct.target, dt)}
    if options.format == "mlprogram":
        kwargs["compute_precision"] = ct.precision.FLOAT16 if variant == "float16" else ct.precision.FLOAT32
    if labels:
        kwargs["classifier_config"] = ct.ClassifierConfig(labels)
    # coremltools' fuse_elementwise_to_batchnorm turns x*A + B into batch_norm(mean 0, variance 1,
    # epsilon 1e-5): every such op scales by 1/sqrt(1 + 1e-5). Measured on DenseNet121 (120
    # BatchNorms after concat): 5.3e-4 relative error in fp32, 5e-6 of it per layer. Keep mul + add.
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::fuse_elementwise_to_batchnorm"])
    kwargs["pass_pipeline"] = pipeline
    try:
        mlmodel = ct.convert([concrete], source="tensorflow", **kwargs)
    except Exception as e:  # coremltools raises ValueError, NotImplementedError, IndexError, ...
        raise ConversionError(f"target '{target}': coremltools failed: {first_line(e)}") from e
    mlmodel = _rename_outputs(mlmodel, concrete, sig, target)
    if variant in ("int8", "palettize"):
        mlmodel = _compress(mlmodel, variant, target)
        notes.append("weights linearly quantized to int8 (per channel)" if variant == "int8"
                     else "weights palettized to 6-bit lookup tables (k-means)")
    _metadata(mlmodel, ctx, options, notes)
    return mlmodel, notes


def _rename_outputs(mlmodel, concrete, sig, target):
    """The TF frontend names outputs after graph tensors (Identity, Identity_1, ...); the serving
    function returns a dict, whose tensors TF flattens in sorted-key order."""
    import coremltools as ct

    spec = mlmodel.get_spec()
    graph_names = [t.name.split(":")[0] for t in concrete.outputs]
    mapping = dict(zip(graph_names, sorted(sig.output_names)))
    if spec.description.predictedFeatureName:  # classifier: probabilities come out as "<label>_probs"
        mapping[spec.description.predictedProbabilitiesName] = sig.output_names[0]
    have = [o.name for o in spec.description.output]
    for old in have:
        if old in mapping and old != mapping[old]:
            ct.utils.rename_feature(spec, old, mapping[old], rename_inputs=False)
    got = {o.name for o in spec.description.output} - {spec.description.predictedFeatureName}
    if got != set(sig.output_names):
        raise ConversionError(f"target '{target}': CoreML outputs {sorted(got)} do not match the Keras "
                              f"outputs {sig.output_names}")
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir if spec.WhichOneof("Type") == "mlProgram" else None,
                             skip_model_load=True)


def _compress(mlmodel, variant, target):
    import coremltools.optimize.coreml as cto

    try:
        if variant == "int8":
            cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel"))
            return cto.linear_quantize_weights(mlmodel, cfg)
        cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=6))
        return cto.palettize_weights(mlmodel, cfg)
    except Exception as e:
        raise ConversionError(f"target '{target}': coremltools.optimize ({variant}) failed: {first_line(e)}") from e


def _metadata(mlmodel, ctx, options, notes) -> None:
    from ... import __version__

    for attr, value in (("author", options.author), ("license", options.license),
                        ("short_description", options.short_description), ("version", options.model_version)):
        if value:
            setattr(mlmodel, attr, value)
    meta = mlmodel.user_defined_metadata
    meta["kexport.version"] = __version__
    meta["kexport.model_sha256"] = ctx.model_sha256
    meta["kexport.keras_inputs"] = ",".join(ctx.signature.input_names)
    meta["kexport.keras_outputs"] = ",".join(ctx.signature.output_names)
    if notes:
        meta["kexport.rewrites"] = "; ".join(notes)
