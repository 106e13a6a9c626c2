"""TF.js graph models: the TF ops TF.js lacks (for preflight), and repairs of what the converter
writes so that every backend runs it, not only the cpu one.

The converter (grappler's remapper) fuses `MatMul/Conv2D + BiasAdd (+ activation)` into
`_FusedMatMul` / `_FusedConv2D` / `FusedDepthwiseConv2dNative`. It also fuses an `Add` whose
second operand is *not* a per-channel bias: the recurrent term `h @ U` of an unrolled LSTM
(rank 2), or the scalar `+ 3` of hard-swish / hard-sigmoid (MobileNetV3, rank 0). The cpu
backend broadcasts such a "bias"; the wasm backend accepts rank-1 bias only and refuses the
model ("_FusedMatMul only supports rank-1 bias but got rank 3"). `unfuse_nonvector_bias` splits
exactly those nodes back into `MatMul`/`Conv2D` + `AddV2` (+ the activation op), keeping the
fused node's name on the last op so every consumer stays wired. Rank-1 biases stay fused.

What grappler fuses also depends on the converting CPU: where TensorFlow enables its oneDNN
rewrites (by default on AVX-512/VNNI CPUs, or TF_ENABLE_ONEDNN_OPTS=1 anywhere) it fuses more
activations (`Conv2D+BiasAdd+Tanh`) and fusions without a bias (`NoOp+Relu6` after a depthwise
conv), which no TF.js backend runs. So every fused node that is not exactly "rank-1 constant bias
(+ an activation all backends fuse)" is split into its plain ops: the artifact is the same
whatever CPU converted it.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

# fused op -> the plain TF op it wraps
_BASE_OP = {"_FusedMatMul": "MatMul", "_FusedConv2D": "Conv2D",
            "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}
# activations with a standalone TF.js op, used when unfusing
_ACTIVATIONS = {"Relu": "Relu", "Relu6": "Relu6", "Elu": "Elu", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
                "LeakyRelu": "LeakyRelu", "Prelu": "Prelu"}
# oneDNN-only fused activations with no single TF.js op: written out as plain ops, with the scalar
# constants they need added to the model (a small extra weight file, kexport-consts.bin)
_COMPOSITE = {"_FusedHardSwish", "_MklSwish", "GeluApproximate", "GeluExact"}
CONSTS_FILE = "kexport-consts.bin"
# activations every TF.js backend (cpu, wasm, webgl, webgpu) implements inside its fused kernels
# (tfjs-core fused_util `applyActivation`; wasm FusableActivation): tanh is not among them.
_FUSABLE = {"Relu", "Relu6", "Elu", "Sigmoid", "LeakyRelu", "Prelu"}
# Variable plumbing of a traced function: freezing turns it into constants before TF.js sees it.
from ...context import STRUCTURAL_OPS  # noqa: E402,F401  (one set for every preflight)
_FUSION_ATTRS = {"fused_ops", "num_args", "epsilon", "leakyrelu_alpha", "TArgs", "num_host_args",
                 "filter_format"}


def quiet_tensorflowjs() -> None:
    """tensorflowjs imports tensorflow_decision_forests, whose welcome message imports IPython
    (not installed) whenever stdout is not a terminal (pytest, CI, pipes)."""
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")


def fused_ops(node: dict) -> list[str]:
    raw = node.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])
    return [base64.b64decode(s).decode() for s in raw]


def unsupported_tf_ops(graph_def) -> list[str]:
    """TF ops in `graph_def` (functions included) that the TF.js converter has no mapping for."""
    quiet_tensorflowjs()
    from tensorflowjs.converters.tf_saved_model_conversion_v2 import validate

    return sorted(validate(graph_def, skip_op_check=False, strip_debug_ops=False))


def weight_shapes(model_json: dict) -> dict[str, list]:
    return {w["name"]: w["shape"] for g in model_json.get("weightsManifest", []) for w in g["weights"]}


def unfuse_nonvector_bias(model_json: dict, consts: dict | None = None) -> tuple[list[str], list[str]]:
    """Repair model.json in place. Returns (notes, problems): notes say what was unfused;
    problems list fused activations TF.js cannot run (an unsupported row, not an artifact).
    `consts` collects the scalar constants composite activations need ({node name: value});
    without it (None) those activations are problems."""
    known = set(_ACTIVATIONS) | (_COMPOSITE if consts is not None else set())
    topo = model_json["modelTopology"]
    nodes = topo["node"]
    shapes = weight_shapes(model_json)
    by_name = {n["name"]: n for n in nodes}
    out, notes, problems = [], {}, []
    for node in nodes:
        base = _BASE_OP.get(node["op"])
        if base is None:
            out.append(node)
            continue
        ops = fused_ops(node)
        bias_op = ops[:1] if ops[:1] in (["BiasAdd"], ["NoOp"]) else []
        acts = ops[len(bias_op):]
        unknown = [o for o in acts if o not in known] if bias_op and len(acts) <= 1 else ops
        if unknown:
            problems.append(f"fused {'+'.join(ops)} in {node['op']} '{node['name']}' (TF.js has no kernel for {', '.join(unknown)})")
            out.append(node)
            continue
        if bias_op == ["BiasAdd"]:
            bias = node["input"][2]
            bias_src = by_name.get(bias.split(":")[0])
            const_rank = len(shapes[bias]) if bias in shapes and bias_src and bias_src["op"] == "Const" else None
            if const_rank == 1 and all(a in _FUSABLE for a in acts):
                out.append(node)
                continue
            why = (f"a rank-{const_rank} constant bias" if const_rank is not None else "a tensor bias") \
                if const_rank != 1 else f"fused {acts[0]} (no TF.js backend fuses it)"
        else:
            why = f"fused {'+'.join(ops)} without a bias (oneDNN rewrite)"
        out.extend(_split(node, base, ops, consts))
        key = f"{node['op']} with {why}"
        notes[key] = notes.get(key, 0) + 1
    topo["node"] = out
    msgs = [f"unfused {n} x {k} into {_BASE_OP.get(k.split()[0], '?')} + its plain ops (every TF.js backend runs them)"
            for k, n in notes.items()]
    return msgs, problems


def _split(node: dict, base: str, ops: list[str], consts: dict | None = None) -> list[dict]:
    """[core op, AddV2 bias (for BiasAdd), activation]; the last one keeps the fused node's name."""
    name = node["name"]
    attrs = {k: v for k, v in node.get("attr", {}).items() if k not in _FUSION_ATTRS}
    dtype = node.get("attr", {}).get("T", {"type": "DT_FLOAT"})
    a, b = node["input"][:2]
    args = [i for i in node["input"][2:] if not i.startswith("^")]  # bias and/or Prelu alpha
    control = [i for i in node["input"] if i.startswith("^")]
    has_bias = ops[:1] == ["BiasAdd"]
    act = ops[1] if len(ops) > 1 else None
    result = [{"name": f"{name}/kexport_core", "op": base, "input": [a, b] + control, "attr": attrs}]
    if has_bias:
        result.append({"name": f"{name}/kexport_bias", "op": "AddV2", "input": [result[-1]["name"], args[0]],
                       "attr": {"T": dtype}})
    if act in _COMPOSITE:
        result += _composite(act, name, result[-1]["name"], dtype, consts)
    elif act is not None:
        act_node = {"name": f"{name}/kexport_act", "op": _ACTIVATIONS[act], "input": [result[-1]["name"]],
                    "attr": {"T": dtype}}
        if act == "LeakyRelu":
            act_node["attr"]["alpha"] = node["attr"].get("leakyrelu_alpha", {"f": 0.2})
        if act == "Prelu":
            act_node["input"].append(args[1] if has_bias else args[0])
        result.append(act_node)
    result[-1]["name"] = name
    for n in result:
        if "device" in node:
            n["device"] = node["device"]
    return result


def _const(consts: dict, name: str, value: float) -> dict:
    consts[name] = float(value)
    return {"name": name, "op": "Const", "attr": {"value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": {}}},
                                                  "dtype": {"type": "DT_FLOAT"}}}


def _composite(act: str, name: str, x: str, dtype: dict, consts: dict) -> list[dict]:
    """Plain TF ops for a oneDNN fused activation of tensor `x` (the last node is renamed by the
    caller): hard-swish x*relu6(x+3)/6, swish x*sigmoid(x), GELU tanh / erf forms (as TF's)."""
    p = f"{name}/kexport_{act.strip('_').lower()}"
    t = {"T": dtype}
    c = lambda suffix, v: _const(consts, f"{p}/{suffix}", v)  # noqa: E731
    if act == "_FusedHardSwish":
        return [c("three", 3.0), c("sixth", 1.0 / 6.0),
                {"name": f"{p}/add", "op": "AddV2", "input": [x, f"{p}/three"], "attr": t},
                {"name": f"{p}/relu6", "op": "Relu6", "input": [f"{p}/add"], "attr": t},
                {"name": f"{p}/scaled", "op": "Mul", "input": [f"{p}/relu6", f"{p}/sixth"], "attr": t},
                {"name": f"{p}/out", "op": "Mul", "input": [x, f"{p}/scaled"], "attr": t}]
    if act == "_MklSwish":
        return [{"name": f"{p}/sigmoid", "op": "Sigmoid", "input": [x], "attr": t},
                {"name": f"{p}/out", "op": "Mul", "input": [x, f"{p}/sigmoid"], "attr": t}]
    nodes = [c("half", 0.5), c("one", 1.0)]
    if act == "GeluExact":  # 0.5 * x * (1 + erf(x / sqrt(2)))
        nodes += [c("rsqrt2", 1.0 / math.sqrt(2.0)),
                  {"name": f"{p}/scaled", "op": "Mul", "input": [x, f"{p}/rsqrt2"], "attr": t},
                  {"name": f"{p}/inner", "op": "Erf", "input": [f"{p}/scaled"], "attr": t}]
    else:  # GeluApproximate: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        nodes += [c("k", math.sqrt(2.0 / math.pi)), c("c", 0.044715),
                  {"name": f"{p}/x2", "op": "Mul", "input": [x, x], "attr": t},
                  {"name": f"{p}/x3", "op": "Mul", "input": [f"{p}/x2", x], "attr": t},
                  {"name": f"{p}/cx3", "op": "Mul", "input": [f"{p}/x3", f"{p}/c"], "attr": t},
                  {"name": f"{p}/sum", "op": "AddV2", "input": [x, f"{p}/cx3"], "attr": t},
                  {"name": f"{p}/arg", "op": "Mul", "input": [f"{p}/sum", f"{p}/k"], "attr": t},
                  {"name": f"{p}/inner", "op": "Tanh", "input": [f"{p}/arg"], "attr": t}]
    return nodes + [{"name": f"{p}/onep", "op": "AddV2", "input": [f"{p}/inner", f"{p}/one"], "attr": t},
                    {"name": f"{p}/hx", "op": "Mul", "input": [x, f"{p}/half"], "attr": t},
                    {"name": f"{p}/out", "op": "Mul", "input": [f"{p}/hx", f"{p}/onep"], "attr": t}]


def write_consts(model_json: dict, folder: Path, consts: dict) -> None:
    """Append the added scalar constants as one more weight group (float32, little-endian)."""
    import struct

    if not consts:
        return
    names = list(consts)
    (Path(folder) / CONSTS_FILE).write_bytes(b"".join(struct.pack("<f", consts[n]) for n in names))
    model_json.setdefault("weightsManifest", []).append(
        {"paths": [CONSTS_FILE], "weights": [{"name": n, "shape": [], "dtype": "float32"} for n in names]})


def positive_cumulative_axis(model_json: dict, folder: Path) -> list[str]:
    """TF.js 4.22 gets `Cumsum`/`Cumprod` wrong for a negative axis (tf.cumprod(x, -1) on a
    [2, 4] tensor has shape [undefined, 2]; wasm then reads out of bounds). Keras writes
    axis=-1. Where the axis constant is negative, feed `Rank(x) + axis` instead (computed in the
    graph, so no weight changes). Returns notes."""
    nodes = model_json["modelTopology"]["node"]
    cumulative = [n for n in nodes if n["op"] in ("Cumsum", "Cumprod")]
    if not cumulative:
        return []
    from tensorflowjs.read_weights import read_weights

    values = {w["name"]: w["data"] for w in read_weights(model_json["weightsManifest"], str(folder), flatten=True)}
    fixed = 0
    for node in cumulative:
        axis = node["input"][1]
        value = values.get(axis)
        if value is None or int(value) >= 0:
            continue
        base = node["name"]
        idx = node.get("attr", {}).get("Tidx", {"type": "DT_INT32"})
        nodes.append({"name": f"{base}/kexport_rank", "op": "Rank", "input": [node["input"][0]], "attr": {"T": node["attr"]["T"]}})
        nodes.append({"name": f"{base}/kexport_axis", "op": "AddV2", "input": [f"{base}/kexport_rank", axis],
                      "attr": {"T": idx}})
        node["input"][1] = f"{base}/kexport_axis"
        fixed += 1
    return [f"{fixed} x Cumsum/Cumprod with a negative axis fed rank + axis (TF.js 4.22 mishandles a negative axis)"] if fixed else []


def repair_model_json(path: Path) -> tuple[list[str], list[str]]:
    """Load, repair and rewrite a graph model.json. Returns (notes, problems)."""
    data = json.loads(path.read_text())
    consts: dict = {}
    notes, problems = unfuse_nonvector_bias(data, consts)
    write_consts(data, path.parent, consts)
    notes += positive_cumulative_axis(data, path.parent)
    if notes:
        path.write_text(json.dumps(data))
    return notes, problems


def keras_signature_names(model_json: dict, in_map: dict, out_map: dict) -> list[str]:
    """Key model.json's signature by the Keras names. The converter matches graph tensors to the
    SavedModel signature by dtype and shape only; where two inputs or outputs share both (a
    siamese pair, two same-sized heads) it falls back to tensor names ('left:0', 'Identity:0').
    `in_map`/`out_map` ({tensor name: Keras name}) come from the same frozen serving signature.
    Returns notes."""
    sig = model_json.get("signature") or {}
    renamed = []
    for part, mapping in (("inputs", in_map), ("outputs", out_map)):
        entries = sig.get(part) or {}
        fixed = {}
        for key, info in entries.items():
            want = mapping.get(info.get("name"), key)
            if want != key:
                renamed.append(f"{key} -> {want}")
            fixed[want] = info
        if entries:
            sig[part] = fixed
    return [f"signature keyed by the Keras names ({', '.join(renamed)})"] if renamed else []


def output_order(model_json: dict) -> dict[str, str]:
    """{Keras output name: graph tensor name} from the signature the converter wrote."""
    outs = (model_json.get("signature") or {}).get("outputs") or {}
    return {k: v["name"] for k, v in outs.items()}
