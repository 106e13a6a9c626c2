"""Rewrites of the Keras 2 spec into layers DL4J 1.0.0-M2.1 runs, each computing the same
function; the tf_keras twin check and the DL4J run prove the result (tests/test_families_jvm.py).

- **Shared layers.** DL4J's import merges every inbound node of a layer into one vertex with all
  of their inputs (measured: a shared encoder over two inputs computed garbage, max abs err 0.22).
  A layer called K times becomes K layers with the same weights, one call each.
- **GlobalAveragePooling3D.** DL4J dispatches it, then refuses it building the graph
  ("Unsupported Keras pooling layer"); a whole-volume AveragePooling3D and a Reshape to a
  sequence fail in DL4J too (measured). Flatten after Conv3D is what DL4J runs right, so the
  mean over the D x H x W volume is written as Flatten + Dense(C, no bias) whose kernel holds 1/N
  on each channel's diagonal: the same linear map (rounding as any other summation order).
"""

from __future__ import annotations

import re

import numpy as np

# The Dense that replaces a GlobalAveragePooling3D has N*C*C weights; above this many the HDF5
# grows by more than 16 MB for one pooling, and the preflight refuses instead.
MAX_MEAN_WEIGHTS = 4_000_000

def _unique(base: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", base)
    new, i = base, 1
    while new in taken:
        new, i = f"{base}{i}", i + 1
    taken.add(new)
    return new


def _refs_map(value, fn):
    """Every [layer, node, tensor(, kwargs)] reference in inbound nodes / IO lists through fn."""
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
        return fn(value)
    if isinstance(value, list):
        return [_refs_map(v, fn) for v in value]
    return value


def _topological(layers: list[dict]) -> list[dict]:
    """Layers in an order where every layer follows its inputs (DL4J infers shapes in list order)."""
    by_name = {layer["name"]: layer for layer in layers}
    done, out = set(), []

    def visit(layer):
        if layer["name"] in done:
            return
        done.add(layer["name"])
        for node in layer.get("inbound_nodes") or []:
            for ref in node:
                if ref[0] in by_name:
                    visit(by_name[ref[0]])
        out.append(layer)

    for layer in layers:
        visit(layer)
    return out


def unshare(spec: dict) -> tuple[dict, dict[str, str]]:
    """(spec with one inbound node per layer, {copy name: original name})."""
    conf = dict(spec["config"])
    if "input_layers" not in conf:  # Sequential: no shared layers
        return spec, {}
    taken = {layer["name"] for layer in conf["layers"]}
    copies: dict[str, str] = {}
    owner: dict[tuple[str, int], str] = {}
    layers = []
    for layer in conf["layers"]:
        nodes = layer.get("inbound_nodes") or []
        layers.append({**layer, "inbound_nodes": nodes[:1]})
        for k, node in enumerate(nodes[1:], start=1):
            name = _unique(f"{layer['name']}_call{k}", taken)
            copies[name] = layer["name"]
            owner[(layer["name"], k)] = name
            layers.append({**layer, "name": name, "config": {**layer["config"], "name": name},
                           "inbound_nodes": [node]})
    if not copies:
        return spec, {}

    def fix(ref):
        copy = owner.get((ref[0], ref[1]))
        return [copy, 0, *ref[2:]] if copy else ref

    for layer in layers:
        layer["inbound_nodes"] = _refs_map(layer["inbound_nodes"], fix)
    conf["layers"] = _topological(layers)
    conf["input_layers"] = _refs_map(conf["input_layers"], fix)
    conf["output_layers"] = _refs_map(conf["output_layers"], fix)
    return {"class_name": spec["class_name"], "config": conf}, copies


def global_average_3d(spec: dict, shapes: dict[str, tuple]) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(spec with each GlobalAveragePooling3D as Flatten + Dense, {dense name: kernel}, notes).
    `shapes` holds each such layer's input shape (batch, D, H, W, C), fixed (the preflight checks)."""
    conf = dict(spec["config"])
    taken = {layer["name"] for layer in conf["layers"]}
    layers, kernels, notes = [], {}, []
    for layer in conf["layers"]:
        if layer["class_name"] != "GlobalAveragePooling3D":
            layers.append(layer)
            continue
        name, dtype = layer["name"], layer["config"].get("dtype", "float32")
        _, d, h, w, c = shapes[name]
        n = d * h * w
        flat = _unique(f"{name}_flatten", taken)
        entry = {"class_name": "Flatten", "name": flat,
                 "config": {"name": flat, "trainable": False, "dtype": dtype, "data_format": "channels_last"}}
        dense = {"class_name": "Dense", "name": name,
                 "config": {"name": name, "trainable": False, "dtype": dtype, "units": c, "activation": "linear",
                            "use_bias": False, "kernel_initializer": {"class_name": "Zeros", "config": {}}}}
        if "inbound_nodes" in layer:
            entry["inbound_nodes"] = layer["inbound_nodes"]
            dense["inbound_nodes"] = [[[flat, 0, 0, {}]]]
        layers += [entry, dense]
        kernels[name] = (np.tile(np.eye(c, dtype=np.float32), (n, 1)) / np.float32(n)).astype(np.float32)
        notes.append(f"{name}: GlobalAveragePooling3D -> Flatten + Dense({c}, kernel 1/{n} per channel): "
                     "the same mean (DL4J refuses 3D global pooling)")
    conf["layers"] = layers
    return {"class_name": spec["class_name"], "config": conf}, kernels, notes
