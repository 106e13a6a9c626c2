"""`kexport tfjs --format layers`: a layers model that `tf.loadLayersModel` really loads.

The TF.js converter copies a Keras 3 config verbatim, and TF.js 4.22 reads only the Keras 2
form: `batch_shape` (not `batch_input_shape`), DTypePolicy dicts (not dtype strings), the new
`inbound_nodes` form ({"args": [keras tensors], "kwargs": ...} instead of nested
[[name, node, tensor, kwargs]] lists), `module`/`registered_name` keys, new constructor
arguments (`lora_rank`, `input_axes`, ...) and layers TF.js does not have (Normalization).

So the whole config is translated here to the Keras 2 form, the model is rebuilt with tf_keras
(Keras 2, which validates the translation and checks it computes what Keras 3 computes on the
reference inputs), and tensorflowjs' own Keras 2 path writes model.json and the weights.
Normalization becomes the BatchNormalization that computes the same affine map.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from ...errors import ConversionError, UnsupportedError, first_line

# Layer classes TF.js 4.22 registers (tf.serialization.SerializationMap, checked by
# tests/test_tfjs_layers.py against the installed package).
TFJS_LAYERS = frozenset((
    "Activation Add AlphaDropout Average AveragePooling1D AveragePooling2D AveragePooling3D BatchNormalization "
    "Bidirectional CategoryEncoding CenterCrop Concatenate Conv1D Conv2D Conv2DTranspose Conv3D Conv3DTranspose "
    "ConvLSTM2D Cropping2D Dense DepthwiseConv2D Dot Dropout ELU Embedding Flatten GRU GaussianDropout "
    "GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D GlobalMaxPooling1D GlobalMaxPooling2D Identity "
    "InputLayer LSTM LayerNormalization LeakyReLU Masking MaxPooling1D MaxPooling2D MaxPooling3D Maximum Minimum "
    "Multiply PReLU Permute ReLU RepeatVector Rescaling Reshape Resizing SeparableConv2D SimpleRNN Softmax "
    "SpatialDropout1D ThresholdedReLU TimeDistributed UpSampling2D ZeroPadding2D").split())
# Layers translated to an equivalent TF.js layer.
EQUIVALENTS = {"Normalization": "BatchNormalization"}
# Keras activation name -> TF.js name, only where the math is the same. Keras 3 hard_sigmoid is
# relu6(x+3)/6, TF.js' hardSigmoid is the Keras 2 0.2x+0.5: not the same function.
ACTIVATIONS = {"relu": "relu", "relu6": "relu6", "elu": "elu", "selu": "selu", "sigmoid": "sigmoid",
               "softmax": "softmax", "softplus": "softplus", "softsign": "softsign", "tanh": "tanh",
               "linear": "linear", "swish": "swish", "silu": "swish", "mish": "mish"}
_INIT_KEYS = {"seed", "mean", "stddev", "minval", "maxval", "gain", "scale", "mode", "distribution", "value"}
_DROP = {"module", "registered_name", "build_config", "compile_config", "shared_object_id"}


def _layer_entries(model):
    cfg = model.get_config()
    if not isinstance(cfg, dict) or "layers" not in cfg:
        return []
    try:
        return flat_config(cfg, type(model).__name__ == "Sequential")["layers"]
    except NestingError:
        return []  # keras2_config reports it


def layers_problems(model) -> list[str]:
    """Every layer / activation / argument the layers format cannot take, all at once."""
    problems = []
    if type(model).__name__ not in ("Functional", "Sequential", "Model"):
        return [f"model class {type(model).__name__} (only Functional and Sequential models have a layers config)"]
    for entry in _layer_entries(model):
        cls, name, conf = entry.get("class_name"), entry.get("config", {}).get("name"), entry.get("config", {})
        if cls == "Lambda":
            problems.append(f"Lambda layer '{name}' (Python code cannot run in TF.js; use the graph format)")
        elif entry.get("registered_name") and entry.get("module") not in (None, "keras.layers") and cls not in TFJS_LAYERS:
            problems.append(f"custom layer '{name}' ({entry['registered_name']}) has no TF.js class")
        elif cls not in TFJS_LAYERS and cls not in EQUIVALENTS:
            problems.append(f"layer '{name}' ({cls}) does not exist in TF.js")
        for key in ("activation", "recurrent_activation"):
            act = conf.get(key)
            if isinstance(act, str) and act not in ACTIVATIONS:
                problems.append(f"layer '{name}': activation '{act}' has no identical TF.js activation")
        if cls == "Normalization" and (conf.get("invert") or list(conf.get("axis") or [-1]) != [-1]):
            problems.append(f"layer '{name}' (Normalization with invert or axis != -1) has no TF.js equivalent")
        for node in entry.get("inbound_nodes", []):
            for k, v in (node.get("kwargs") or {}).items() if isinstance(node, dict) else ():
                if is_tensor(v) or (isinstance(v, list) and any(is_tensor(x) for x in v)):
                    problems.append(f"layer '{name}' takes tensor argument '{k}', which a layers model cannot express")
    return problems


def is_tensor(v) -> bool:
    return isinstance(v, dict) and v.get("class_name") == "__keras_tensor__"


# ---- nested models -> one flat graph -------------------------------------------------------------

NESTED = ("Functional", "Sequential", "Model")


class NestingError(ValueError):
    """A nested model that cannot be inlined (one line, names the layer)."""


def _tensor(ref) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"keras_history": list(ref)}}


def _as_graph(cfg: dict, sequential: bool) -> dict:
    """A Functional or Sequential config as {"layers" (with inbound_nodes), "inputs", "outputs"}
    (inputs/outputs: lists of [layer, node, tensor], dict IO in its key order)."""
    layers = [dict(e) for e in cfg["layers"]]
    if not sequential:
        return {"name": cfg.get("name"), "layers": layers, "inputs": _io(cfg["input_layers"]),
                "outputs": _io(cfg["output_layers"])}
    if not layers or layers[0].get("class_name") != "InputLayer":
        shape = cfg.get("build_input_shape")
        if shape is None:
            raise NestingError(f"nested model '{cfg.get('name')}' was never built (no input shape)")
        layers.insert(0, {"class_name": "InputLayer", "config": {"batch_shape": list(shape), "dtype": "float32",
                                                                 "name": f"{cfg.get('name')}_input"}})
    prev = layers[0]["config"]["name"]
    for e in layers[1:]:
        e["inbound_nodes"] = [{"args": [_tensor([prev, 0, 0])], "kwargs": {}}]
        prev = e["config"]["name"]
    return {"name": cfg.get("name"), "layers": layers, "inputs": [[layers[0]["config"]["name"], 0, 0]],
            "outputs": [[prev, 0, 0]]}


def tensor_refs(args) -> list:
    """The keras_history of every Keras tensor in a layer's call arguments (nested lists too)."""
    out = []
    for a in args:
        if is_tensor(a):
            out.append(a["config"]["keras_history"])
        elif isinstance(a, (list, tuple)):
            out += tensor_refs(a)
    return out


def _remap(value, fn):
    """The same node structure with every keras tensor's history passed through fn."""
    if is_tensor(value):
        return {**value, "config": {**value["config"], "keras_history": list(fn(value["config"]["keras_history"]))}}
    if isinstance(value, (list, tuple)):  # get_config() holds tuples until serialised
        return [_remap(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _remap(v, fn) for k, v in value.items()}
    return value


def _flatten(graph: dict) -> dict:
    """Inline every nested model of a graph (recursively). A nested model called K times becomes
    its layers with K times their nodes (shared layers): call k of a layer with n nodes owns nodes
    k*n .. k*n+n-1, and the nested model's output t of call k is its inner output t under call k."""
    alias: dict[tuple, list] = {}
    resolve = lambda ref: alias.get(tuple(ref[:3]), list(ref[:3]))  # noqa: E731
    layers = []
    for entry in graph["layers"]:
        entry = {**entry, "inbound_nodes": _remap(entry.get("inbound_nodes", []), resolve)}
        if entry.get("class_name") not in NESTED:
            layers.append(entry)
            continue
        outer = entry["config"]["name"]
        inner = _flatten(_as_graph(entry["config"], entry["class_name"] == "Sequential"))
        in_names = [r[0] for r in inner["inputs"]]
        counts = {e["config"]["name"]: len(e.get("inbound_nodes") or []) for e in inner["layers"]}
        calls = []

        def under(k, ref, calls=calls, in_names=in_names, counts=counts):
            name, node, tensor = ref[:3]
            if name in in_names:
                return list(calls[k][in_names.index(name)])
            return [name, k * counts[name] + node, tensor]

        for k, node in enumerate(entry["inbound_nodes"]):
            # resolved call by call: a later call may take an earlier call's outputs
            got = [resolve(r) for r in tensor_refs(node.get("args", []) if isinstance(node, dict) else [])]
            if len(got) != len(in_names):
                raise NestingError(f"nested model '{outer}' is called with {len(got)} tensors for "
                                   f"{len(in_names)} inputs")
            calls.append(got)
            for t, ref in enumerate(inner["outputs"]):
                alias[(outer, k, t)] = under(k, ref)
        for e in inner["layers"]:
            if e.get("class_name") == "InputLayer":
                continue
            nodes = e.get("inbound_nodes") or []
            e = {**e, "inbound_nodes": [_remap(n, lambda r, k=k: under(k, r)) for k in range(len(calls))
                                        for n in nodes]}
            layers.append(e)
    return {**graph, "layers": layers, "inputs": [resolve(r) for r in graph["inputs"]],
            "outputs": [resolve(r) for r in graph["outputs"]]}


def flat_config(cfg: dict, sequential: bool = False) -> dict:
    """A Functional/Sequential Keras 3 config as one flat Functional graph: nested Functional and
    Sequential models inlined, a shared one as shared layers. Raises NestingError when two layers
    would share a name."""
    if sequential and not any(e.get("class_name") in NESTED for e in cfg["layers"]):
        return cfg
    graph = _flatten(_as_graph(cfg, sequential))
    seen: dict[str, int] = {}
    for e in graph["layers"]:
        seen[e["config"]["name"]] = seen.get(e["config"]["name"], 0) + 1
    dup = sorted(n for n, c in seen.items() if c > 1)
    if dup:
        raise NestingError(f"layer name '{dup[0]}' is used inside a nested model and outside it "
                           "(rename one: a flat Keras 2 model needs unique layer names)")
    return {"name": cfg.get("name"), "layers": graph["layers"], "input_layers": graph["inputs"],
            "output_layers": graph["outputs"]}


def leaf_layers(model) -> list:
    """The model's layers with nested models replaced by their own layers (each layer once)."""
    out, seen = [], set()
    for layer in model.layers:
        inner = leaf_layers(layer) if type(layer).__name__ in NESTED else [layer]
        for x in inner:
            if id(x) not in seen:
                seen.add(id(x))
                out.append(x)
    return out


# ---- Keras 3 config -> Keras 2 config ----------------------------------------------------------

def _plain(value):
    """Nested Keras 3 serialisations -> Keras 2: DTypePolicy dict -> name, drop module keys."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "config" in value:
            return value["config"]["name"]
        if "class_name" in value and "config" in value:
            conf = {k: _plain(v) for k, v in (value["config"] or {}).items()}
            if str(value.get("module", "")).startswith("keras.initializers"):
                conf = {k: v for k, v in conf.items() if k in _INIT_KEYS}
            return {"class_name": value["class_name"], "config": conf}
        return {k: _plain(v) for k, v in value.items() if k not in _DROP}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _accepted(cls_name: str) -> set[str] | None:
    import tf_keras

    cls = getattr(tf_keras.layers, cls_name, None)
    if cls is None:
        return None
    names = set()
    for klass in inspect.getmro(cls):
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters)
    return names | {"name", "trainable", "dtype", "batch_input_shape", "input_shape", "batch_size"}


def _layer_config(entry: dict, problems: list[str]) -> dict:
    cls = entry["class_name"]
    conf = _plain(entry["config"])
    name = conf.get("name")
    if cls == "InputLayer":
        conf["batch_input_shape"] = conf.pop("batch_shape", conf.get("batch_input_shape"))
        conf.pop("optional", None)
    if cls == "Normalization":
        cls = "BatchNormalization"
        conf = {"name": name, "trainable": False, "dtype": conf.get("dtype", "float32"), "axis": -1,
                "epsilon": 1e-12, "center": False, "scale": False, "fused": False}
    for key in ("activation", "recurrent_activation"):
        if isinstance(conf.get(key), str):
            conf[key] = ACTIVATIONS.get(conf[key], conf[key])
    allowed = _accepted(cls)
    if allowed is not None:
        for k in [k for k in conf if k not in allowed]:
            v = conf.pop(k)
            if v not in (None, False, 0, 0.0, [], {}, "float32"):
                problems.append(f"layer '{name}' ({cls}): argument {k}={v!r} has no Keras 2 / TF.js equivalent")
    return {"class_name": cls, "config": conf, "name": name}


def _history(t) -> list:
    layer, node, index = t["config"]["keras_history"]
    return [layer, node, index, {}]


def _inbound(nodes: list) -> list:
    out = []
    for node in nodes:
        args = node.get("args", []) if isinstance(node, dict) else []
        refs = []
        for a in args:
            if is_tensor(a):
                refs.append(_history(a))
            elif isinstance(a, list):
                refs.extend(_history(x) for x in a if is_tensor(x))
        out.append(refs)
    return out


def _io(refs) -> list:
    """input_layers / output_layers as a list of [layer, node, tensor] (a dict in its key order:
    the signature's order of named inputs and outputs)."""
    if isinstance(refs, dict):
        refs = list(refs.values())
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [list(r) for r in refs]


def keras2_config(model) -> tuple[dict, list[str]]:
    """({"class_name", "config"} in Keras 2 form, problems)."""
    cfg = model.get_config()
    problems: list[str] = []
    layers = []
    sequential = type(model).__name__ == "Sequential"
    if not isinstance(cfg, dict) or "layers" not in cfg:
        return {"class_name": "Functional", "config": {}}, [
            f"model class {type(model).__name__} has no layer graph in its config (a subclassed model)"]
    try:
        flat = flat_config(cfg, sequential)
    except NestingError as e:
        return {"class_name": "Functional", "config": {}}, [str(e)]
    if flat is not cfg:
        cfg, sequential = flat, False
    for entry in cfg["layers"]:
        layer = _layer_config(entry, problems)
        if not sequential:
            layer["inbound_nodes"] = _inbound(entry.get("inbound_nodes", []))
        layers.append(layer)
    if sequential:
        return {"class_name": "Sequential", "config": {"name": cfg["name"], "layers": layers}}, problems
    conf = {"name": cfg["name"], "layers": layers, "input_layers": _io(cfg["input_layers"]),
            "output_layers": _io(cfg["output_layers"])}
    return {"class_name": "Functional", "config": conf}, problems


def _weights_for(layer3, layer2) -> list[np.ndarray]:
    if type(layer3).__name__ == "Normalization":
        return [np.asarray(layer3.mean).reshape(-1), np.asarray(layer3.variance).reshape(-1)]
    return [np.asarray(w) for w in layer3.get_weights()]


def build_keras2(ctx, target: str):
    """The tf_keras twin of the Keras 3 model, checked on the reference inputs."""
    import tf_keras

    problems = layers_problems(ctx.model)
    spec, more = keras2_config(ctx.model)
    problems += more
    if problems:
        raise UnsupportedError(target, problems, "TF.js layers models cannot hold them; the graph format (default) can")
    try:
        twin = tf_keras.models.model_from_json(json.dumps(spec))
        for layer3 in leaf_layers(ctx.model):
            if layer3.weights:
                layer2 = twin.get_layer(layer3.name)
                layer2.set_weights(_weights_for(layer3, layer2))
    except Exception as e:  # tf_keras raises ValueError/TypeError/KeyError on a bad config
        raise ConversionError(f"target '{target}': the Keras 2 translation of the config was refused by "
                              f"tf_keras: {first_line(e)}") from e
    check_twin(twin, ctx, target)
    return twin


def check_twin(twin, ctx, target: str) -> None:
    """The Keras 2 twin must compute what the Keras 3 model computes on the reference inputs
    (fed in the twin's input order: input layers are named as in Keras 3)."""
    missing = [n for n in twin.input_names if n not in ctx.inputs]
    if missing:
        raise ConversionError(f"target '{target}': the Keras 2 translation has inputs {twin.input_names}, "
                              f"the model {sorted(ctx.inputs)}")
    xs = [ctx.inputs[n] for n in twin.input_names]
    got = twin(xs if len(xs) > 1 else xs[0], training=False)
    got = got if isinstance(got, (list, tuple)) else [got]
    for name, value in zip(ctx.signature.output_names, got):
        ref = np.asarray(ctx.outputs[name])
        err = float(np.max(np.abs(np.asarray(value) - ref)))
        if err > 1e-4 * (float(np.max(np.abs(ref))) or 1.0) + 1e-5:
            raise ConversionError(f"target '{target}': the Keras 2 translation computes '{name}' differently "
                                  f"from Keras 3 (max abs err {err:.3g}); please report this model")


def write_layers_model(ctx, out: Path, qmap, shard_size: int, target: str) -> tuple[list[str], dict]:
    from .graph import quiet_tensorflowjs

    quiet_tensorflowjs()
    from tensorflowjs.converters.keras_h5_conversion import save_keras_model

    twin = build_keras2(ctx, target)
    try:
        save_keras_model(twin, str(out), quantization_dtype_map=qmap, weight_shard_size_bytes=shard_size)
    except Exception as e:  # the converter raises plain Exceptions
        raise ConversionError(f"target '{target}': tensorflowjs could not write the layers model: "
                              f"{first_line(e)}") from e
    notes = ["Keras 3 config translated to the Keras 2 form TF.js reads (tf_keras twin checked on the reference inputs)"]
    if any(type(layer).__name__ == "Normalization" for layer in ctx.model.layers):
        notes.append("Normalization -> BatchNormalization(center=False, scale=False, epsilon=1e-12): same affine map")
    output_map = dict(zip(twin.output_names, ctx.signature.output_names))
    return notes, {"format": "layers", "output_map": output_map}
