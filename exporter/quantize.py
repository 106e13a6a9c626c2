"""Quantized variants, the shared part: the `--quantize` vocabulary, and the calibration and
evaluation data every target's variants use.

One vocabulary across the CLI and the API: each target declares its variants (`QUANTIZE`); `all` means every variant of each target, and a
comma list asks for several (`--quantize int8,float16`). A value no chosen target knows is a
usage error, so a typo never silently produces nothing.

Data:
    --calibration data.npz   arrays named after the model inputs (static int8 ranges), or a folder
                             of images for a one-image-input model, resized to the input shape;
    --eval data.npz          the inputs plus `y` (labels of the classifier output; `y_<output>` for
                             several), or a folder of class sub-folders (label = sorted index).
Without --eval the reference inputs are used (the first --calibration samples when given, since
uniform noise is out of a calibrated model's range) and accuracy is reported as null (unknown).

Example:
    kexport.export("m.keras", ["tflite"], options=ExportOptions(quantize="int8",
                    calibration="train.npz", eval="heldout.npz"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

ALL = "all"
DEFAULT_MIN_AGREEMENT = 0.98
DEFAULT_MAX_ACCURACY_DROP = 1.0  # accuracy points (percent), e.g. 99.1% -> 98.1% is a 1.0 drop
CALIBRATION_LIMIT = 128  # samples fed to a calibrator: ranges settle long before that
# With --eval (else --calibration) and no --inputs, the reference inputs are this many of its
# samples (at least --samples): a quantized model calibrated on real data is judged on real data,
# not on uniform noise whose activations fall outside the calibrated ranges (on the digits model,
# noise gives int8 a top-1 agreement of 0.875 where the held-out digits give 0.998).
EVAL_REFERENCE_SAMPLES = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# ---- vocabulary -------------------------------------------------------------------------------

def quantize_choices(target) -> tuple[str, ...]:
    """The variants a target offers (its `QUANTIZE` declaration)."""
    return tuple(c for c in target.QUANTIZE if c != ALL)


def requested(value) -> list[str]:
    """'int8,float16' / ('int8', 'float16') / None -> ['int8', 'float16'] / []."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v and v.strip()]


def selected(value, choices) -> list[str]:
    """The variants of one target that `value` asks for, in the target's own order."""
    asked = requested(value)
    if ALL in asked:
        return list(choices)
    return [c for c in choices if c in asked]


def check_vocabulary(value, targets) -> list[str]:
    """Every requested variant must exist on at least one chosen target. Returns one line per
    deprecated spelling used (a target's QUANTIZE_ALIASES: CoreML's old `fp16`, `palettized`)."""
    aliases = {a: c for t in targets for a, c in getattr(t, "QUANTIZE_ALIASES", {}).items()}
    asked = [v for v in requested(value) if v != ALL]
    notes = [f"--quantize {v} is deprecated; it means {aliases[v]}" for v in asked if v in aliases]
    asked = [aliases.get(v, v) for v in asked]
    offered = {t.name: quantize_choices(t) for t in targets}
    known = {c for cs in offered.values() for c in cs}
    unknown = [v for v in asked if v not in known]
    if unknown:
        menu = "; ".join(f"{n}: {'|'.join(cs)}" for n, cs in offered.items() if cs) or "none of them quantize"
        raise UsageError(f"--quantize {','.join(unknown)} is not a variant of the chosen targets "
                         f"({menu}; or 'all' for every variant of each)")
    return notes


def check_thresholds(min_agreement: float, max_accuracy_drop: float) -> None:
    if not 0.0 <= min_agreement <= 1.0:
        raise UsageError(f"--min-agreement={min_agreement} must lie in [0, 1] (a fraction of samples)")
    if not 0.0 <= max_accuracy_drop <= 100.0:
        raise UsageError(f"--max-accuracy-drop={max_accuracy_drop} must lie in [0, 100] (accuracy points)")


# ---- data ---------------------------------------------------------------------------------------

@dataclass
class EvalData:
    inputs: dict  # name -> array
    labels: dict  # classifier output name -> int labels (empty: accuracy unknown)
    source: str  # "eval" or "reference"
    keras: dict | None = None  # Keras outputs on `inputs`, filled once

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values())))


def options_of(ctx):
    """The ExportOptions of the run (api.export attaches them to the context)."""
    from .options import ExportOptions

    return getattr(ctx, "export_options", None) or ExportOptions()


def calibration_inputs(ctx) -> tuple[dict, str]:
    """(inputs, description) for static int8 calibration, at most CALIBRATION_LIMIT samples."""
    key = "quantize.calibration"
    if key not in ctx._cache:
        path = options_of(ctx).calibration
        if path:
            data = load_images(path, ctx.model, ctx.signature, "--calibration")[0] if Path(path).is_dir() else \
                load_npz(path, ctx.signature, "--calibration")[0]
            n = len(next(iter(data.values())))
            data = {k: v[:CALIBRATION_LIMIT] for k, v in data.items()}
            desc = f"calibrated on {min(n, CALIBRATION_LIMIT)} samples of {path}"
        else:
            data = ctx.inputs
            desc = (f"calibrated on the {len(next(iter(data.values())))} reference inputs "
                    "(pass --calibration with real data for representative ranges)")
        ctx._cache[key] = (data, desc)
    return ctx._cache[key]


def batches(inputs: dict, size: int = 1):
    n = len(next(iter(inputs.values())))
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in inputs.items()}


def representative_dataset(ctx):
    """TFLite's representative dataset: one sample at a time, keyed by the signature's input names."""
    data, _ = calibration_inputs(ctx)
    return lambda: batches(data, 1)


def calibration_reader(ctx, size: int = 16):
    """An onnxruntime CalibrationDataReader over the calibration data."""
    from onnxruntime.quantization import CalibrationDataReader

    data, _ = calibration_inputs(ctx)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = batches(data, size)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = batches(data, size)

    return Reader()


def eval_reference_inputs(model, signature, options) -> dict:
    """The first samples of --eval (else --calibration): the parity reference inputs when no
    --inputs is given."""
    path, flag = (options.eval, "--eval") if options.eval else (options.calibration, "--calibration")
    inputs = load_images(path, model, signature, flag)[0] if Path(path).is_dir() else \
        load_npz(path, signature, flag)[0]
    n = max(options.samples, EVAL_REFERENCE_SAMPLES)
    return {k: v[:n] for k, v in inputs.items()}


def eval_data(ctx) -> EvalData:
    """The data variants are measured on, with the Keras outputs on it (computed once)."""
    key = "quantize.eval"
    if key not in ctx._cache:
        path = options_of(ctx).eval
        if path:
            inputs, labels = load_images(path, ctx.model, ctx.signature, "--eval", labelled=True) if Path(path).is_dir() else \
                load_npz(path, ctx.signature, "--eval", labelled=True)
            ev = EvalData(inputs, labels, "eval")
        else:
            opts = options_of(ctx)
            source = "calibration" if opts.calibration and not opts.inputs else "reference"
            ev = EvalData(ctx.inputs, {}, source, dict(ctx.outputs))
        if ev.keras is None:
            from .reference import KerasSession

            ev.keras = KerasSession(ctx.model, ctx.signature).predict(ev.inputs)
        ev.labels = _match_labels(ev.labels, ev.keras, path)
        ctx._cache[key] = ev
    return ctx._cache[key]


def _match_labels(labels: dict, keras_out: dict, path) -> dict:
    """Map `y` / `y_<output>` to classifier outputs; check counts and class range."""
    classifiers = [k for k, v in keras_out.items() if np.ndim(v) == 2 and np.shape(v)[1] > 1]
    out = {}
    for key, y in labels.items():
        name = key[2:] if key.startswith("y_") else None
        if name is None:
            if len(classifiers) != 1:
                raise UsageError(f"{path}: 'y' is ambiguous: the model has classifier outputs {classifiers}; "
                                 "name the label arrays y_<output>")
            name = classifiers[0]
        if name not in classifiers:
            raise UsageError(f"{path}: labels '{key}' match no classifier output (have {classifiers})")
        y = np.asarray(y).reshape(-1)
        ref = keras_out[name]
        if len(y) != len(ref):
            raise UsageError(f"{path}: '{key}' has {len(y)} labels for {len(ref)} samples")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= ref.shape[1]:
            raise UsageError(f"{path}: '{key}' must hold integer class indices in [0, {ref.shape[1]})")
        out[name] = y
    return out


def load_npz(path, signature, flag: str, labelled: bool = False) -> tuple[dict, dict]:
    """Inputs named after the model inputs (cast to their dtype) and, when `labelled`, the `y*` arrays."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read {flag} as .npz ({e})") from e
    missing = [n for n in signature.input_names if n not in data]
    if missing:
        raise UsageError(f"{path}: {flag} lacks arrays {missing}; it has {sorted(data)} "
                         "(name them after the model inputs, see 'kexport inspect')")
    inputs = {}
    for t in signature.inputs:
        a = data[t.name]
        if a.ndim != len(t.shape) or any(d is not None and d != s for d, s in zip(t.shape[1:], a.shape[1:])):
            raise UsageError(f"{path}: {flag} input '{t.name}' has shape {a.shape}, the model expects {t.shape}")
        inputs[t.name] = a.astype(t.dtype)
    counts = {len(v) for v in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"{path}: {flag} inputs need the same, non-zero number of samples (got {sorted(counts)})")
    labels = {k: v for k, v in data.items() if k == "y" or k.startswith("y_")} if labelled else {}
    return inputs, labels


def load_images(path, model, sig, flag: str, labelled: bool = False) -> tuple[dict, dict]:
    """A folder of images for a model with one NHWC image input (1 or 3 channels).

    Pixels are scaled to [0, 1], the range `reference_inputs` and most Keras image models without
    a leading Rescaling layer expect; a model whose first layer is `Rescaling` gets raw 0..255.
    With `labelled`, class sub-folders give labels by sorted name (as Keras'
    image_dataset_from_directory does).
    """
    root = Path(path)
    if len(sig.inputs) != 1 or len(sig.inputs[0].shape) != 4 or sig.inputs[0].shape[3] not in (1, 3) \
            or "float" not in sig.inputs[0].dtype:
        raise UsageError(f"{path}: {flag} is a folder of images, but the model input is not one image "
                         f"(got {[(t.name, t.shape) for t in sig.inputs]}); pass an .npz named after the inputs")
    spec = sig.inputs[0]
    h, w, c = spec.shape[1:]
    if h is None or w is None:
        raise UsageError(f"{path}: the model input '{spec.name}' has no fixed height/width {spec.shape}; "
                         f"resize the images yourself and pass {flag} as an .npz")
    try:
        from PIL import Image
    except ImportError as e:
        raise UsageError(f"{path}: reading an image folder needs Pillow (pip install pillow), "
                         f"or pass {flag} as an .npz") from e
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {flag} folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if labelled and not classes:
        labelled = False  # a flat folder: inputs only, accuracy stays unknown
    raw = _first_layer_is_rescaling(model)
    xs, ys = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32).reshape(h, w, c)
        except OSError as e:
            raise UsageError(f"{f}: cannot read this image for {flag} ({e})") from e
        xs.append(a if raw else a / 255.0)
        if labelled:
            ys.append(classes.index(f.relative_to(root).parts[0]) if len(f.relative_to(root).parts) > 1 else -1)
    inputs = {spec.name: np.stack(xs).astype(spec.dtype)}
    if labelled:
        y = np.asarray(ys)
        keep = y >= 0  # images at the top level carry no class
        return {spec.name: inputs[spec.name][keep]}, {"y": y[keep]}
    return inputs, {}


def _first_layer_is_rescaling(model) -> bool:
    layers = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]
    return bool(layers) and type(layers[0]).__name__ == "Rescaling"
