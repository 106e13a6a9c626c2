"""What DL4J 1.0.0-M2.1's KerasModelImport can take, and the problems list for the preflight.

The layer and activation lists are read from the pinned jar itself
(deeplearning4j-modelimport-1.0.0-M2.1: the class names `KerasLayerUtils.getKerasLayerFromConfig`
dispatches on, with the strings `Keras2LayerConfiguration` gives them, and the activations
`KerasActivationUtils` maps). Classes DL4J knows by name but does not dispatch (Dot, Minimum,
LocallyConnected2D, SeparableConv1D) are not in the list: the import refuses them.
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

_WHY = {
    "GRU": "DL4J imports LSTM and SimpleRNN only",
    "Lambda": "DL4J imports a Lambda only with a SameDiff implementation registered in Java",
    "LayerNormalization": "no Keras import for it in DL4J",
    "Dot": "DL4J names Dot but its import refuses it",
}


def _is_tensor(v) -> bool:
    return isinstance(v, dict) and v.get("class_name") == "__keras_tensor__"


def _layer_problems(cls: str, name: str, conf: dict, where: str = "") -> list[str]:
    problems = []
    label = f"layer '{name}' ({cls}{where})"
    if cls in ("Functional", "Sequential", "Model"):
        return [f"nested model '{name}' (flatten it into one model)"]
    if cls not in DL4J_LAYERS and cls not in EQUIVALENTS:
        why = _WHY.get(cls, f"not a Keras layer DL4J {DL4J_VERSION}'s KerasModelImport imports")
        return [f"{label}: {why}"]
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


def dl4j_problems(model) -> list[str]:
    """Every layer, activation and argument DL4J's Keras import cannot take, all at once."""
    if type(model).__name__ not in ("Functional", "Sequential", "Model"):
        return [f"model class {type(model).__name__} (DL4J imports Functional and Sequential models)"]
    cfg = model.get_config()
    problems = []
    for entry in cfg.get("layers", []) if isinstance(cfg, dict) else []:
        conf = entry.get("config") or {}
        cls, name = entry.get("class_name"), conf.get("name")
        if entry.get("module") not in (None, "keras.layers") and entry.get("registered_name") and cls not in DL4J_LAYERS:
            problems.append(f"custom layer '{name}' ({entry['registered_name']}) has no DL4J import")
            continue
        problems += _layer_problems(cls, name, conf)
        for node in entry.get("inbound_nodes", []):
            for k, v in (node.get("kwargs") or {}).items() if isinstance(node, dict) else ():
                if _is_tensor(v) or (isinstance(v, list) and any(_is_tensor(x) for x in v)):
                    problems.append(f"layer '{name}' takes tensor argument '{k}', which a Keras 2 HDF5 cannot express")
    return problems
