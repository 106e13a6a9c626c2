"""One loader for .keras, Keras 3 .h5, Keras 2 (tf_keras) .h5 and SavedModel directories.

Safe mode is on by default: a model containing a Lambda layer is refused *before* any of its
code is deserialized, by reading the stored config rather than loading it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import zipfile
from pathlib import Path

from .errors import ModelLoadError, keras_load_message
from .safety import check_model_file, check_saved_model
from .signature import ModelSignature, TensorSpec

FORMATS = (".keras", ".h5", ".hdf5", "SavedModel directory")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _stored_config(path: Path) -> dict | None:
    """The model config as stored in the file, read without deserializing any layer."""
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
            raise ModelLoadError(
                f"{path}: not a valid .keras archive ({type(e).__name__}: {e}); the file may be "
                "truncated or corrupt - re-save it with model.save('model.keras')"
            ) from e
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    raise ModelLoadError(
                        f"{path}: HDF5 file holds no model config (weights-only file?); save the "
                        "whole model with model.save('model.h5') or model.save('model.keras')"
                    )
                return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except OSError as e:
            raise ModelLoadError(
                f"{path}: not a readable HDF5 model file ({e}); pass a .keras, .h5 or SavedModel "
                "directory"
            ) from e
    return None


def _walk_layers(cfg):
    """Yield (class_name, name) for every layer config, nested models included."""
    if isinstance(cfg, dict):
        if "class_name" in cfg and isinstance(cfg.get("config"), dict):
            yield cfg["class_name"], cfg["config"].get("name", "?")
        for v in cfg.values():
            yield from _walk_layers(v)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _walk_layers(v)


def lambda_layers(cfg: dict | None) -> list[str]:
    return sorted({name for cls, name in _walk_layers(cfg) if cls == "Lambda"})


def load_custom_objects(module_path: str | os.PathLike | None) -> dict:
    """Import a user file that defines / registers custom layers; return its classes by name."""
    if not module_path:
        return {}
    p = Path(module_path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: custom-objects file not found; pass --custom-objects path/to/module.py")
    spec = importlib.util.spec_from_file_location(f"kexport_custom_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # user code: any failure is reported, with its cause chained
        raise ModelLoadError(f"{p}: importing custom objects failed: {type(e).__name__}: {e}") from e
    return {n: o for n, o in vars(mod).items() if inspect.isclass(o) and o.__module__ == mod.__name__}


def load_model(path, *, safe_mode: bool = True, custom_objects: str | dict | None = None):
    """Load a Keras model from any supported format.

    Args:
        path: a `.keras` file, a `.h5` (Keras 3 or Keras 2) file, or a SavedModel directory.
        safe_mode: refuse models with Lambda layers (arbitrary code) unless False.
        custom_objects: a dict, or a path to a Python file that defines the custom layers.

    Returns:
        A Keras 3 model.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: file not found; pass a .keras, .h5 or SavedModel directory")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ModelLoadError(f"{path}: directory has no saved_model.pb; pass a .keras, .h5 or SavedModel directory")
        check_saved_model(path, safe_mode=safe_mode)  # exporter/safety.py: ops with side effects, before any runs
        return _load_saved_model(path)
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelLoadError(f"{path}: unknown model format '{path.suffix}'; supported: {', '.join(FORMATS)}")
    check_model_file(path, safe_mode=safe_mode)  # exporter/safety.py: zip/HDF5 bombs, before anything is read
    cfg = _stored_config(path)
    lambdas = lambda_layers(cfg)
    if safe_mode and lambdas:
        raise ModelLoadError(
            f"{path}: Lambda layer(s) {', '.join(lambdas)} run arbitrary Python code and are refused "
            "in safe mode; re-run with --unsafe only if you trust this file"
        )
    objs = custom_objects if isinstance(custom_objects, dict) else load_custom_objects(custom_objects)
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=safe_mode, custom_objects=objs, compile=False)
    except Exception as e:  # keras raises many types (ValueError, TypeError, KeyError, OSError)
        msg = keras_load_message(e)
        hint = "if it uses custom layers, pass --custom-objects path/to/module.py"
        raise ModelLoadError(f"{path}: Keras could not load the model: {msg}; {hint}") from e


def _load_saved_model(path: Path):
    """Wrap a SavedModel's `serving_default` signature as a Keras 3 functional model whose
    inputs and outputs keep the signature's names. Only graph code runs: no Python is loaded."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except (KeyError, OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: cannot load the SavedModel's serving_default signature ({e})") from e
    in_specs = fn.structured_input_signature[1]
    out_specs = fn.structured_outputs

    class SavedModelSignature(keras.layers.Layer):
        def call(self, inputs):
            return fn(**{k: tf.cast(v, in_specs[k].dtype) for k, v in inputs.items()})

        def compute_output_spec(self, inputs):
            batch = next(iter(inputs.values())).shape[0]
            return {k: keras.KerasTensor((batch,) + tuple(s.shape[1:]), dtype=s.dtype.name) for k, s in out_specs.items()}

    inputs = {n: keras.Input(shape=tuple(s.shape[1:]), dtype=s.dtype.name, name=n) for n, s in sorted(in_specs.items())}
    layer = SavedModelSignature(name="saved_model")
    layer._kexport_loaded = loaded  # the signature needs its object graph alive
    outputs = layer(inputs)
    return keras.Model(inputs, {k: outputs[k] for k in sorted(out_specs)}, name=path.name)


def _producer(t):
    return t._keras_history[0]


def signature_of(model) -> ModelSignature:
    """Derive input/output names, shapes (free batch) and dtypes from a loaded model."""
    import keras

    graph = getattr(model, "_functional", None) or model  # a Sequential's inner functional graph
    if not getattr(graph, "inputs", None):
        raise ModelLoadError(
            f"model '{model.name}' has no defined inputs (a subclassed or never-built model); "
            "build it with keras.Input(...) or call it once before saving"
        )
    dict_inputs = isinstance(graph._inputs_struct, dict)
    if dict_inputs:
        in_items = list(graph._inputs_struct.items())
    else:
        in_items = [(_producer(t).name, t) for t in graph.inputs]
    if isinstance(graph._outputs_struct, dict):
        out_items = list(graph._outputs_struct.items())
    else:
        out_items = [(_producer(t).name, t) for t in graph.outputs]
        names = [n for n, _ in out_items]
        if len(set(names)) != len(names):  # several outputs of one layer
            out_items = [(f"{n}_{i}", t) for i, (n, t) in enumerate(out_items)]

    prep = input_preprocessing(model)

    def spec(name, t, is_input):
        dtype = keras.backend.standardize_dtype(t.dtype)
        shape = (None,) + tuple(t.shape[1:])
        if not is_input:
            return TensorSpec(name, shape, dtype)
        info = prep.get(_producer(t).name, prep.get(name, {}))
        high = info.get("int_high", 10) if "int" in dtype else None
        return TensorSpec(name, shape, dtype, high, info.get("mean"), info.get("std"), info.get("low"),
                          info.get("high"), info.get("vocabulary"))

    return ModelSignature(
        tuple(spec(n, t, True) for n, t in in_items),
        tuple(spec(n, t, False) for n, t in out_items),
        dict_inputs=dict_inputs,
    )


# Inference-time no-ops (augmentation) and shape-only preprocessing: the range of the raw input
# is set by the first layer after them.
_PASS_THROUGH = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                 "RandomBrightness", "RandomCrop", "RandomHeight", "RandomWidth", "GaussianNoise",
                 "GaussianDropout", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "Resizing", "CenterCrop",
                 "AlphaDropout", "ActivityRegularization", "RandomGrayscale", "RandomHue", "RandomSaturation",
                 "RandomColorJitter", "RandomSharpness", "Identity")


def input_preprocessing(model) -> dict:
    """{input layer name: what its first preprocessing layer implies}: `int_high` (Embedding,
    IntegerLookup), `mean`/`std` (Normalization), `low`/`high` (Rescaling: the raw range it maps
    onto [0, 1], or [-1, 1] for a negative offset), `vocabulary` (StringLookup)."""
    import keras
    import numpy as np

    consumers: dict = {}
    inputs: dict = {}  # a Sequential lists no InputLayer among its layers: found as a producer
    for layer in _all_layers(model):
        for node in getattr(layer, "_inbound_nodes", []):
            for t in node.input_tensors:
                src = _producer(t)
                consumers.setdefault(id(src), []).append(layer)
                if isinstance(src, keras.layers.InputLayer):
                    inputs[id(src)] = src
    found: dict = {}
    for layer in inputs.values():
        info: dict = {}
        todo, seen = list(consumers.get(id(layer), [])), set()
        while todo:
            nxt = todo.pop(0)
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            cls = type(nxt).__name__
            if cls in _PASS_THROUGH:
                todo.extend(consumers.get(id(nxt), []))
            elif isinstance(nxt, keras.layers.Normalization) and getattr(nxt, "mean", None) is not None:
                info["mean"] = tuple(float(v) for v in np.ravel(np.asarray(nxt.mean, dtype="float64")))
                info["std"] = tuple(float(v) for v in np.sqrt(np.ravel(np.asarray(nxt.variance, dtype="float64"))))
            elif isinstance(nxt, keras.layers.Rescaling):
                scale = np.ravel(np.asarray(nxt.scale, dtype="float64"))
                offset = float(np.min(np.ravel(np.asarray(nxt.offset, dtype="float64"))))
                s = float(np.max(np.abs(scale))) or 1.0
                lo, hi = (-1.0, 1.0) if offset < 0 else (0.0, 1.0)
                a, b = sorted(((lo - offset) / s, (hi - offset) / s))
                info["low"], info["high"] = max(a, 0.0) if a > -1e-6 else a, b
            elif isinstance(nxt, keras.layers.Embedding):
                info["int_high"] = min(info.get("int_high", nxt.input_dim), nxt.input_dim)
            elif isinstance(nxt, keras.layers.StringLookup):
                vocab = [v for v in nxt.get_vocabulary() if v != nxt.oov_token and v != getattr(nxt, "mask_token", None)]
                info["vocabulary"] = tuple(str(v) for v in vocab) or None
            elif isinstance(nxt, keras.layers.IntegerLookup):
                vocab = [int(v) for v in nxt.get_vocabulary()[nxt.num_oov_indices:] if v is not None and int(v) >= 0]
                if vocab:
                    info["int_high"] = max(vocab) + 1
            elif isinstance(nxt, keras.Model):  # a nested model: its own input layer decides
                inner = input_preprocessing(nxt)
                if len(inner) == 1:
                    info.update(next(iter(inner.values())))
        found[layer.name] = info
    return found


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and layer is not model:
            yield from _all_layers(layer)
