"""The Keras 2 HDF5 DL4J reads: the TF.js layers translation (Keras 3 config -> Keras 2 config,
exporter/targets/tfjs/layers.py) plus what DL4J 1.0.0-M2.1's import needs on top of it.

- Normalization becomes BatchNormalization there with center/scale off; DL4J's import then
  dereferences the missing gamma/beta (NullPointerException), so here it keeps center/scale with
  gamma = 1, beta = 0: the same affine map.
- Initializers become Zeros, regularizers and constraints are dropped: the weights are set right
  after, and ND4J's Orthogonal initializer (Keras' LSTM default) can loop forever on some shapes.
- DL4J finds a weight's parameter name by deleting the layer name, used as a regular
  expression, from the stored name (KerasModelUtils.findParameterName): a layer `embed` turns
  `embeddings:0` into `dings:0` and the import fails. Such layers (or names with regex
  characters) are renamed `<name>_dl4j`; the runtime maps the names back.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ...errors import ConversionError, UnsupportedError, first_line

_BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


def _param_names(layer) -> set[str]:
    if type(layer).__name__ == "Normalization":
        return set(_BN_PARAMS)
    return {v.path.rsplit("/", 1)[-1] for v in layer.weights}


def unsafe_names(layers) -> dict[str, str]:
    """{layer name: new name} for the layers with weights DL4J's weight import would mangle
    (`layers`: the leaf layers, or a model, whose nested models are then looked into)."""
    if hasattr(layers, "layers"):
        from ..tfjs import keras2_layers

        layers = keras2_layers(layers)[1]
    taken = {layer.name for layer in layers}
    renames = {}
    for layer in layers:
        params = _param_names(layer)
        if not params:
            continue
        name = layer.name
        if _PLAIN_NAME.fullmatch(name) and not any(name in f"{p}:0" for p in params):
            continue
        base = re.sub(r"\W", "_", name) + "_dl4j"
        new, i = base, 1
        while new in taken or any(new in f"{p}:0" for p in params):
            new, i = f"{base}{i}", i + 1
        taken.add(new)
        renames[name] = new
    return renames


def _rename_refs(value, renames):
    if isinstance(value, list) and value and isinstance(value[0], str) and value[0] in renames:
        return [renames[value[0]], *value[1:]]
    if isinstance(value, list):
        return [_rename_refs(v, renames) for v in value]
    return value


def _strip_training(conf: dict) -> dict:
    out = {}
    for k, v in conf.items():
        if k.endswith("_initializer") and v is not None:
            v = {"class_name": "Zeros", "config": {}}
        elif k.endswith(("_regularizer", "_constraint")):
            v = None
        elif k == "layer" and isinstance(v, dict) and "config" in v:  # TimeDistributed / Bidirectional
            v = {**v, "config": _strip_training(v["config"])}
        out[k] = v
    return out


def dl4j_spec(spec: dict, renames: dict[str, str], normalizations: set[str]) -> dict:
    """The translated Keras 2 spec adjusted for DL4J (see the module docstring)."""
    conf = dict(spec["config"])
    layers = []
    for layer in conf["layers"]:
        layer = dict(layer)
        lconf = _strip_training(layer["config"])
        name = lconf.get("name")
        if name in normalizations:
            lconf.update(center=True, scale=True)
        if name in renames:
            lconf["name"] = renames[name]
            if "name" in layer:
                layer["name"] = renames[name]
        layer["config"] = lconf
        if "inbound_nodes" in layer:
            layer["inbound_nodes"] = _rename_refs(layer["inbound_nodes"], renames)
        layers.append(layer)
    conf["layers"] = layers
    for key in ("input_layers", "output_layers"):
        if key in conf:
            conf[key] = _rename_refs(conf[key], renames)
    return {"class_name": spec["class_name"], "config": conf}


def _weights(layer) -> list[np.ndarray]:
    if type(layer).__name__ == "Normalization":
        mean = np.asarray(layer.mean).reshape(-1)
        return [np.ones_like(mean), np.zeros_like(mean), mean, np.asarray(layer.variance).reshape(-1)]
    return [np.asarray(w) for w in layer.get_weights()]


def build_twin(ctx, target: str):
    """(tf_keras twin, renames, notes), the twin checked against Keras 3 on the reference inputs."""
    import tf_keras

    from ..tfjs import check_keras2_twin, keras2_config, keras2_layers
    from .rewrite import global_average_3d, unshare

    spec, problems = keras2_config(ctx.model)
    if problems:
        raise UnsupportedError(target, problems, "the Keras 2 HDF5 DL4J reads cannot express them")
    _, leaves = keras2_layers(ctx.model)
    renames = unsafe_names(leaves)
    norms = {layer.name for layer in leaves if type(layer).__name__ == "Normalization"}
    spec, copies = unshare(dl4j_spec(spec, renames, norms))
    shapes = {x.name: tuple(x.input.shape) for x in leaves if type(x).__name__ == "GlobalAveragePooling3D"}
    shapes.update({c: shapes[o] for c, o in copies.items() if o in shapes})
    spec, kernels, notes = global_average_3d(spec, shapes)
    if copies:
        notes.insert(0, "shared layers duplicated with the same weights (DL4J merges a shared layer's calls): "
                     + ", ".join(f"{o} -> {c}" for c, o in copies.items()))
    try:
        twin = tf_keras.models.model_from_json(json.dumps(spec))
        for layer in leaves:
            if layer.weights:
                twin.get_layer(renames.get(layer.name, layer.name)).set_weights(_weights(layer))
        for copy, original in copies.items():
            twin.get_layer(copy).set_weights(twin.get_layer(original).get_weights())
        for name, kernel in kernels.items():
            twin.get_layer(name).set_weights([kernel])
    except Exception as e:  # tf_keras raises ValueError/TypeError/KeyError on a bad config
        raise ConversionError(f"target '{target}': the Keras 2 translation was refused by tf_keras: "
                              f"{first_line(e)}") from e
    check_keras2_twin(twin, ctx, target)
    return twin, renames, notes
