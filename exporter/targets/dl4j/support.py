"""What DL4J 1.0.0-M2.1's KerasModelImport can take, and the problems list for the preflight.

The layer and activation lists are read from the pinned jar itself
(deeplearning4j-modelimport-1.0.0-M2.1: the class names `KerasLayerUtils.getKerasLayerFromConfig`
dispatches on, with the strings `Keras2LayerConfiguration` gives them, and the activations
`KerasActivationUtils` maps). Classes DL4J knows by name but does not dispatch (Dot, Minimum,
LocallyConnected2D, SeparableConv1D) are not in the list: the import refuses them.

Dispatched is not the same as working: each layer of the list was exported alone (after a
convolution of its rank, before Flatten + Dense) and run in DL4J. BROKEN holds the ones that
failed, with what DL4J did; tests/test_families_jvm.py runs each of them past the preflight and
turns red when a DL4J release computes one right.
"""

from __future__ import annotations

DL4J_VERSION = "1.0.0-M2.1"

DL4J_LAYERS = frozenset((
    "Activation Add AlphaDropout Average AveragePooling1D AveragePooling2D AveragePooling3D BatchNormalization "
    "Bidirectional Concatenate Conv1D Conv2D Conv2DTranspose Conv3D Conv3DTranspose Cropping1D Cropping2D "
    "Cropping3D Dense DepthwiseConv2D Dropout ELU Embedding Flatten GaussianDropout GaussianNoise "
    "GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D "
    "GlobalMaxPooling3D InputLayer LSTM LeakyReLU LocallyConnected1D Masking MaxPooling1D MaxPooling2D "
    "MaxPooling3D Maximum Multiply PReLU Permute ReLU RepeatVector Reshape SeparableConv2D SimpleRNN Softmax "
    "SpatialDropout1D SpatialDropout2D SpatialDropout3D Subtract ThresholdedReLU TimeDistributed UpSampling1D "
    "UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D").split())
# Keras 3 layers the Keras 2 translation turns into a DL4J layer (exporter/targets/tfjs/layers.py).
EQUIVALENTS = {"Normalization": "BatchNormalization"}
# Keras 3 activation names whose DL4J activation computes the same function. Keras 3's
# hard_sigmoid is relu6(x+3)/6, DL4J's is the Keras 2 clip(0.2x+0.5): not the same.
DL4J_ACTIVATIONS = frozenset("elu linear relu relu6 selu sigmoid silu softmax softplus softsign swish tanh".split())
RNN_WRAPPED = frozenset(("LSTM", "SimpleRNN"))

# Measured in DL4J 1.0.0-M2.1 (runtime `dl4j`), each layer after a convolution of its rank:
BROKEN = {
    "AveragePooling1D": "DL4J computes it wrongly (max abs err 0.39 on a channels-last sequence)",
    "UpSampling1D": "DL4J computes it wrongly or fails the next layer (max abs err 1.0, conv1d op failure)",
    "Cropping1D": "DL4J fails on its output (\"New shape length doesn't match\", conv1d op failure)",
    "Conv3DTranspose": "DL4J fails on its channels-last 5D input (IllegalStateException: invalid input array)",
    "Cropping3D": "DL4J fails the next layer on its output (wrong channel count)",
    "ZeroPadding3D": "DL4J fails the next layer on its output (wrong channel count)",
    "UpSampling3D": "DL4J fails on its channels-last 5D input (IllegalStateException: invalid input array)",
    # Conv3D -> pooling (2, valid|same) -> Flatten|Conv3D(1x1) -> Flatten: 7 of 16 failed, which
    # ones depends on the volume size and padding (DL4J infers a wrong channels-last output shape)
    "MaxPooling3D": "DL4J infers a wrong output shape for a channels-last 3D pooling: the next layer fails "
                    "for some volume sizes and paddings (7 of 16 measured)",
    "AveragePooling3D": "DL4J infers a wrong output shape for a channels-last 3D pooling: the next layer fails "
                        "for some volume sizes and paddings (7 of 16 measured)",
    "GlobalMaxPooling3D": "DL4J dispatches it but refuses it when building the graph (\"Unsupported Keras "
                          "pooling layer\"); a whole-volume MaxPooling3D + Flatten fails DL4J's layout "
                          "check too, and a maximum has no exact Flatten + Dense form",
}
# Measured: these pass after a convolution but fail as the first layer after the input.
FIRST_LAYER_BROKEN = {
    "UpSampling2D": "takes a channels-last image as channels-first and fails (\"Invalid input, does not match "
                    "configuration\")",
    "DepthwiseConv2D": "fails to build its input (IndexOutOfBoundsException)",
    "Masking": "fails (NullPointerException in its workspace)",
    "SpatialDropout3D": "takes a channels-last volume as channels-first and fails",
}

_WHY = {
    "GRU": "DL4J imports LSTM and SimpleRNN only",
    "Lambda": "DL4J imports a Lambda only with a SameDiff implementation registered in Java",
    "LayerNormalization": "no Keras import for it in DL4J",
    "Dot": "DL4J names Dot but its import refuses it",
}


def _layer_problems(cls: str, name: str, conf: dict, where: str = "") -> list[str]:
    problems = []
    label = f"layer '{name}' ({cls}{where})"
    if cls not in DL4J_LAYERS and cls not in EQUIVALENTS:
        why = _WHY.get(cls, f"not a Keras layer DL4J {DL4J_VERSION}'s KerasModelImport imports")
        return [f"{label}: {why}"]
    if cls in BROKEN:
        return [f"{label}: {BROKEN[cls]}"]
    for key in ("activation", "recurrent_activation"):
        act = conf.get(key)
        if act is not None and not isinstance(act, str):
            problems.append(f"{label}: custom {key} (DL4J imports named activations only)")
        elif isinstance(act, str) and act not in DL4J_ACTIVATIONS:
            problems.append(f"{label}: {key} '{act}' has no identical DL4J activation")
    if cls == "Normalization" and (conf.get("invert") or list(conf.get("axis") or [-1]) != [-1]):
        problems.append(f"{label}: invert or axis != -1 has no DL4J equivalent")
    if conf.get("groups", 1) not in (1, None):
        problems.append(f"{label}: grouped convolution (groups={conf['groups']}); DL4J ignores groups")
    if conf.get("return_state"):
        problems.append(f"{label}: return_state=True; DL4J returns the sequence or the last step only")
    if conf.get("stateful"):
        problems.append(f"{label}: stateful=True is not imported by DL4J")
    if cls in ("TimeDistributed", "Bidirectional"):
        inner = conf.get("layer") or {}
        icls, iconf = inner.get("class_name", "?"), inner.get("config") or {}
        if cls == "Bidirectional" and icls not in RNN_WRAPPED:
            problems.append(f"{label}: DL4J wraps LSTM or SimpleRNN only, not {icls}")
        else:
            problems += _layer_problems(icls, name, iconf, f" in {cls}")
    return problems


def _sources(entries: list[dict]):
    """entry -> the entries whose outputs it takes (a Sequential: the one before it)."""
    from ..tfjs import keras_tensor_refs

    by_name = {(e.get("config") or {}).get("name"): e for e in entries}
    sequential = not any(e.get("inbound_nodes") for e in entries)
    before = {id(b): a for a, b in zip(entries, entries[1:])}

    def sources(entry):
        if sequential:
            return [before[id(entry)]] if id(entry) in before else []
        refs = []
        for node in entry.get("inbound_nodes") or []:
            refs += keras_tensor_refs(node.get("args", []) if isinstance(node, dict) else [])
        return [by_name[r[0]] for r in refs if r[0] in by_name]

    return sources


def _first_after_input(entries: list[dict]) -> list[str]:
    """Layers DL4J fails on when they read a model input directly (it guesses the input's layout
    from the first layer)."""
    sources = _sources(entries)
    problems = []
    for e in entries:
        cls = e.get("class_name", "")
        if cls in FIRST_LAYER_BROKEN and any(s.get("class_name") == "InputLayer" for s in sources(e)):
            problems.append(f"layer '{e['config']['name']}' ({cls}) reads the model input directly: DL4J "
                            f"{DL4J_VERSION} {FIRST_LAYER_BROKEN[cls]} there (put a convolution, Dense or "
                            "Reshape before it)")
    return problems


def _global_average_3d(leaves) -> list[str]:
    """GlobalAveragePooling3D is written as Flatten + Dense (rewrite.py): it needs a fixed,
    channels-last volume and a kernel of bounded size."""
    from .rewrite import MAX_MEAN_WEIGHTS

    out = []
    for layer in leaves:
        if type(layer).__name__ != "GlobalAveragePooling3D":
            continue
        try:
            shape = tuple(layer.input.shape)
        except (AttributeError, ValueError):  # a layer called on inputs of several shapes
            shape = (None,) * 5
        label = f"layer '{layer.name}' (GlobalAveragePooling3D)"
        why = f"DL4J {DL4J_VERSION} refuses 3D global pooling, and its Flatten + Dense form needs "
        if layer.data_format != "channels_last" or layer.keepdims:
            out.append(f"{label}: {why}channels_last and keepdims=False")
        elif len(shape) != 5 or None in shape[1:]:
            out.append(f"{label}: {why}a fixed volume (input {shape})")
        elif shape[1] * shape[2] * shape[3] * shape[4] ** 2 > MAX_MEAN_WEIGHTS:
            out.append(f"{label}: {why}{shape[1] * shape[2] * shape[3] * shape[4] ** 2} weights here, more than "
                       f"{MAX_MEAN_WEIGHTS}")
    return out


def dl4j_problems(model) -> list[str]:
    """Every layer, activation and argument DL4J's Keras import cannot take, all at once."""
    if type(model).__name__ not in ("Functional", "Sequential", "Model"):
        return [f"model class {type(model).__name__} (DL4J imports Functional and Sequential models)"]
    from ..tfjs import is_keras_tensor, keras2_layers

    try:
        entries, leaves = keras2_layers(model)  # nested models inlined, as the HDF5 will hold them
    except ValueError as e:
        return [str(e)]
    problems = []
    for entry in entries:
        conf = entry.get("config") or {}
        cls, name = entry.get("class_name"), conf.get("name")
        if entry.get("module") not in (None, "keras.layers") and entry.get("registered_name") and cls not in DL4J_LAYERS:
            problems.append(f"custom layer '{name}' ({entry['registered_name']}) has no DL4J import")
            continue
        problems += _layer_problems(cls, name, conf)
        for node in entry.get("inbound_nodes", []):
            for k, v in (node.get("kwargs") or {}).items() if isinstance(node, dict) else ():
                if is_keras_tensor(v) or (isinstance(v, list) and any(is_keras_tensor(x) for x in v)):
                    problems.append(f"layer '{name}' takes tensor argument '{k}', which a Keras 2 HDF5 cannot express")
    return problems + _first_after_input(entries) + _global_average_3d(leaves)
