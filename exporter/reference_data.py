"""Reference data that fits the model: seeded inputs at a size it accepts and in the range its
own preprocessing implies, the Keras outputs, and how far Keras disagrees with itself.

- Free dimensions (`Input((None, None, 3))`): `--input-shape NAME=1x224x224x3` chooses the size;
  otherwise the first candidate size the model accepts (images 224, 160, 128, ...; sequences 16,
  12, 8), found by calling the model on one sample. A second accepted size is kept as alternate
  reference data, so every target that keeps free dimensions is verified at two sizes.
- Ranges: a float input whose first layer is `Rescaling(scale, offset)` (after inference-time
  no-ops such as RandomFlip) gets raw values mapping onto [0, 1] (or [-1, 1] for a negative
  offset): 0..255 pixels for 1/255 or 1/127.5 - 1; one feeding a Normalization is drawn around
  its mean/std; other floats uniform in [0, 1); integers below an Embedding's input_dim; strings
  from a StringLookup's vocabulary (read in exporter/loader.py `signature_of`).
- Noise floor: Keras run again on the float inputs moved by a few float32 ulps (random signs per
  element, seeded); per sample and output, how far its output moves (exporter/parity.py uses it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 20240611
IMAGE_SIZES = (224, 160, 128, 96, 64, 32)
SEQUENCE_LENGTHS = (16, 12, 8, 4)


class ReferenceOutputs(dict):
    """The Keras outputs by name, plus `noise` ({output: per-sample max |Keras(x ± 1 ulp) -
    Keras(x)|}) and `alternates` ([(inputs, ReferenceOutputs)] at other input sizes)."""

    def __init__(self, outputs=(), noise=None, alternates=None, compute_dtype="float32"):
        super().__init__(outputs)
        self.noise = noise or {}
        self.alternates = list(alternates or [])
        # "float16" for a mixed_float16 model: Keras computes in half precision (exporter/parity.py)
        self.compute_dtype = compute_dtype


def compute_dtype(model) -> str:
    """The narrowest compute dtype among the model's layers ("float16" under mixed_float16)."""
    found = set()
    stack = [model]
    while stack:
        layer = stack.pop()
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None:
            found.add(policy.compute_dtype)
        stack.extend(getattr(layer, "layers", []) or [])
    for dt in ("bfloat16", "float16"):
        if dt in found:
            return dt
    return "float32"


def free_dims(signature) -> bool:
    return any(None in tuple(t.shape[1:]) for t in signature.inputs)


def _candidates(spec) -> tuple:
    return IMAGE_SIZES if len(spec.shape) >= 4 else SEQUENCE_LENGTHS


def _fill(spec, size: int) -> tuple:
    return tuple(size if d is None else int(d) for d in spec.shape[1:])


def _draw(spec, shape, rng):
    if spec.dtype == "string":
        vocab = list(spec.vocabulary or ("a", "b", "c"))
        return np.asarray(rng.choice(vocab, size=shape), dtype=str)
    if "int" in spec.dtype:
        return rng.integers(0, spec.int_high or 10, size=shape).astype(spec.dtype)
    if spec.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if spec.low is not None and spec.high is not None:
        return (spec.low + (spec.high - spec.low) * rng.random(shape)).astype(spec.dtype)
    if spec.mean is not None and spec.std is not None:
        mean = np.asarray(spec.mean).reshape(-1)
        std = np.asarray(spec.std).reshape(-1)
        return (mean + std * rng.standard_normal(shape)).astype(spec.dtype)
    return rng.random(shape, dtype=np.float64).astype(spec.dtype)


def _accepts(model, signature, sizes: dict) -> bool:
    """Does the model run on one sample at these per-input shapes?"""
    from .reference import KerasSession

    rng = np.random.default_rng(0)
    x = {t.name: _draw(t, (1,) + sizes[t.name], rng) for t in signature.inputs}
    try:
        out = KerasSession(model, signature).predict(x)
    except Exception:  # any Keras/TF error at this size: try the next one
        return False
    return all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in out.values() if np.asarray(v).dtype.kind in "f")


def check_input_shapes(signature, shapes: dict) -> None:
    """--input-shape NAME=1x224x224x3 must name an input, have its rank and keep its fixed sizes."""
    from .errors import UsageError

    specs = {t.name: t for t in signature.inputs}
    for name, shape in shapes.items():
        t = specs.get(name)
        if t is None:
            raise UsageError(f"--input-shape {name}=...: the model has no input {name!r}; its inputs are {list(specs)}")
        want = "x".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(t.shape))
        example = "x".join("224" if d is None else str(d) for d in t.shape[1:])
        fixed_differ = any(d is not None and int(d) != int(g) for d, g in zip(t.shape[1:], shape[1:]))
        if len(shape) != len(t.shape) or fixed_differ or any(int(g) < 1 for g in shape):
            raise UsageError(f"--input-shape {name}={'x'.join(str(g) for g in shape)}: input {name!r} has shape "
                             f"{want} (? = free); give every dimension, e.g. {name}=1x{example}")


def input_sizes(signature, shapes: dict | None = None, model=None, *, exclude: dict | None = None) -> dict | None:
    """{input name: shape without batch}; None when no candidate is accepted (alternates)."""
    shapes = shapes or {}
    check_input_shapes(signature, shapes)
    fixed = {t.name: tuple(int(d) for d in shapes[t.name][1:]) for t in signature.inputs if t.name in shapes}
    free = [t for t in signature.inputs if t.name not in fixed and None in tuple(t.shape[1:])]
    base = {t.name: fixed.get(t.name, tuple(t.shape[1:])) for t in signature.inputs}
    if not free and not exclude:
        return base
    n = max(len(_candidates(t)) for t in free) if free else 0
    order = list(range(n))
    if exclude is not None and free:
        # the alternate size: the largest candidate below the one in use (cheaper), else above
        used = max(exclude[t.name][j] for t in free for j, d in enumerate(t.shape[1:]) if d is None)
        cands = _candidates(free[0])
        order = [i for i in range(n) if cands[min(i, len(cands) - 1)] < used] + \
                [i for i in reversed(range(n)) if cands[min(i, len(cands) - 1)] > used]
    tried = []
    for i in order:
        sizes = dict(base)
        for t in free:
            c = _candidates(t)
            sizes[t.name] = _fill(t, c[min(i, len(c) - 1)])
        if sizes in tried or sizes == exclude:
            continue
        tried.append(sizes)
        if model is None or _accepts(model, signature, sizes):
            return sizes
    if exclude is not None:
        return None
    return {t.name: _fill(t, _candidates(t)[-1]) if t in free else base[t.name] for t in signature.inputs}


def reference_inputs(signature, samples: int = 8, seed: int = SEED, *, shapes: dict | None = None, model=None,
                     sizes: dict | None = None):
    """Seeded data that fits each input (see the module docstring)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or input_sizes(signature, shapes, model)
    return {t.name: _draw(t, (samples,) + tuple(sizes[t.name]), rng) for t in signature.inputs}


# Perturbations of the float inputs: per element +-ULPS[i] float32 ulps with seeded random signs.
# Random signs mimic independent rounding errors (a uniform shift of every pixel is one special
# direction and missed a flip measured on EfficientNetB0); three draws, the last 4 ulps wide.
ULPS = (1, 1, 4)


def noise_floor(model, signature, inputs: dict, outputs: dict, seed: int = SEED) -> dict:
    """{output: per-sample max |Keras(x moved a few ulps) - Keras(x)|}; {} when no input is float."""
    from .reference import KerasSession

    floats = [k for k, v in inputs.items() if np.asarray(v).dtype.kind == "f"]
    if not floats:
        return {}
    rng = np.random.default_rng(seed + 7)
    session = KerasSession(model, signature)
    noise = {}
    for ulps in ULPS:
        moved = {}
        for k, v in inputs.items():
            if k in floats:
                v = np.asarray(v)
                step = np.abs(np.spacing(v)) * ulps * rng.choice(np.array([-1, 1], v.dtype), size=v.shape)
                moved[k] = (v + step).astype(v.dtype)
            else:
                moved[k] = v
        got = session.predict(moved)
        for name, ref in outputs.items():
            ref = np.asarray(ref)
            if ref.dtype.kind not in "biuf":
                continue
            d = np.abs(np.asarray(got[name], np.float64) - ref.astype(np.float64)).reshape(len(ref), -1).max(axis=1)
            noise[name] = np.maximum(noise.get(name, 0.0), d)
    return noise


def conditioned(model, signature, inputs: dict, outputs: dict, *, samples: int | None = None,
                shapes: dict | None = None, seed: int = SEED) -> ReferenceOutputs:
    """The Keras outputs with their noise floor, and reference data at a second input size when
    the model has free dimensions (not for user-given inputs of fixed shape: pass shapes)."""
    from .reference import KerasSession

    ref = ReferenceOutputs(outputs, noise_floor(model, signature, inputs, outputs), compute_dtype=compute_dtype(model))
    if free_dims(signature):
        used = {k: tuple(np.shape(v)[1:]) for k, v in inputs.items()}
        other = input_sizes(signature, None, model, exclude=used)  # the user's --input-shape is `used`
        if other is not None:
            n = samples or len(next(iter(inputs.values())))
            alt_in = reference_inputs(signature, min(n, 4), seed + 1, sizes=other)
            alt_out = KerasSession(model, signature).predict(alt_in)
            ref.alternates.append((alt_in, ReferenceOutputs(alt_out, noise_floor(model, signature, alt_in, alt_out))))
    return ref


def save_conditioning(folder: Path, outputs) -> None:
    """Write the noise floor and alternate reference data next to inputs.npz / outputs.npz."""
    import json

    folder = Path(folder)
    (folder / "conditioning.json").write_text(json.dumps({"compute_dtype": getattr(outputs, "compute_dtype", "float32")}))
    noise = getattr(outputs, "noise", None)
    if noise:
        np.savez(folder / "noise.npz", **noise)
    for i, (alt_in, alt_out) in enumerate(getattr(outputs, "alternates", ()) or (), start=2):
        np.savez(folder / f"inputs_{i}.npz", **alt_in)
        np.savez(folder / f"outputs_{i}.npz", **alt_out)
        if getattr(alt_out, "noise", None):
            np.savez(folder / f"noise_{i}.npz", **alt_out.noise)


def _npz(path: Path) -> dict:
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_conditioning(folder: Path, outputs: dict) -> ReferenceOutputs:
    """The stored reference outputs with their noise floor and alternates (for `kexport verify`)."""
    import json

    folder = Path(folder)
    meta = folder / "conditioning.json"
    dtype = json.loads(meta.read_text()).get("compute_dtype", "float32") if meta.exists() else "float32"
    ref = ReferenceOutputs(outputs, _npz(folder / "noise.npz"), compute_dtype=dtype)
    i = 2
    while (folder / f"inputs_{i}.npz").exists():
        ref.alternates.append((_npz(folder / f"inputs_{i}.npz"),
                               ReferenceOutputs(_npz(folder / f"outputs_{i}.npz"), _npz(folder / f"noise_{i}.npz"))))
        i += 1
    return ref
