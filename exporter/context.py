"""The per-run state shared by every target: the model (loaded once), its signature, the
reference data, and traced functions / SavedModels cached so no target traces twice."""

from __future__ import annotations

import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .scratch import work_dir
from .signature import ModelSignature


@dataclass
class ExportContext:
    model: object
    model_path: Path
    model_sha256: str
    signature: ModelSignature
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    workdir: Path = field(default_factory=work_dir)  # named after this process: a killed run's is swept
    _cache: dict = field(default_factory=dict)

    def __post_init__(self):
        # gone with the context (`kexport inspect` never removed it) or at interpreter exit at the latest
        weakref.finalize(self, shutil.rmtree, str(self.workdir), True)

    @property
    def name(self) -> str:
        return self.model_path.stem.replace(".", "_") or "model"

    def serving_function(self, *, rewrite: bool):
        """A tf.function taking named tensors (free batch) and returning {output_name: tensor}.

        Returns (concrete_function, tf_function, applied_rewrites).
        """
        key = ("fn", rewrite)
        if key not in self._cache:
            other = self._cache.get(("fn", not rewrite))
            if other is not None and not rewrite and not other[2]:
                self._cache[key] = other  # no rewrite fired: the rewritten trace is the plain one
            else:
                self._cache[key] = _trace(self.model, self.signature, rewrite)
        return self._cache[key]

    def saved_model(self, *, rewrite: bool) -> tuple[Path, list[str]]:
        """Write (once) a SavedModel with a `serving_default` signature keyed by Keras names."""
        # When no rewrite fires, both traces are the same graph: write the SavedModel once.
        fired = self.serving_function(rewrite=True)[2]  # trace once; reused when nothing fires
        rewrite = rewrite and bool(fired)
        key = ("sm", rewrite)
        if key not in self._cache:
            path = self.workdir / ("saved_model_rewritten" if rewrite else "saved_model")
            _, fn, applied = self.serving_function(rewrite=rewrite)
            write_saved_model(self.model, fn, self.signature, path)
            self._cache[key] = (path, applied)
        return self._cache[key]

    def made_once(self, key: tuple, name: str, make) -> Path:
        """A file that several targets ship byte for byte (model.onnx for onnx, flask, triton and
        spark), made by `make(path)` once per run; each caller copies it. Conversions run one at
        a time (exporter/overlap.py), so no lock is needed."""
        k = ("file", key)
        if k not in self._cache:
            path = self.workdir / "made" / f"{len(self._cache)}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
            self._cache[k] = path
        return self._cache[k]

    def frozen_graph(self, *, rewrite: bool = True):
        """The serving signature reloaded from the SavedModel with variables (and captured
        tensors, e.g. Normalization statistics) folded into constants.

        Returns (graph_def, {tensor_name: input_name}, {tensor_name: output_name}).
        """
        fired = self.serving_function(rewrite=True)[2]  # trace once; reused when nothing fires
        rewrite = rewrite and bool(fired)
        key = ("frozen", rewrite)
        if key not in self._cache:
            import tensorflow as tf
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

            path, _ = self.saved_model(rewrite=rewrite)
            loaded = tf.saved_model.load(str(path))  # must outlive the conversion below
            fn = loaded.signatures["serving_default"]
            frozen = convert_variables_to_constants_v2(fn)
            in_names = {f"{n}:0": n for n in fn.structured_input_signature[1]}
            in_map = {t.name: in_names.get(t.name, t.name.split(":")[0]) for t in frozen.inputs}
            # outputs are flattened in sorted-key order (tf.nest)
            out_map = {t.name: k for t, k in zip(frozen.outputs, sorted(fn.structured_outputs))}
            self._cache[key] = (frozen.graph.as_graph_def(), in_map, out_map)
        return self._cache[key]


# Graph plumbing of a traced function (arguments, variables, calls, constants): never a model op a
# converter has to support. One set for every preflight (onnx, coreml, tfjs).
STRUCTURAL_OPS = frozenset({"Placeholder", "Const", "Identity", "IdentityN", "NoOp", "ReadVariableOp", "VarHandleOp",
                            "AssignVariableOp", "StatefulPartitionedCall", "PartitionedCall", "_Arg", "_Retval"})


def op_types(graph_def) -> set[str]:
    """Every op type in a GraphDef, nested functions (loop bodies, XLA calls) included."""
    return {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}


def tensor_specs(signature: ModelSignature):
    import tensorflow as tf

    return [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in signature.inputs]


def _trace(model, signature: ModelSignature, rewrite: bool):
    import tensorflow as tf

    from .rewrites import keras3_rewrites

    names = signature.input_names
    out_names = signature.output_names

    def serve(*args):
        if signature.dict_inputs:
            x = dict(zip(names, args))
        else:
            x = list(args) if len(args) > 1 else args[0]
        y = model(x, training=False)
        if isinstance(y, dict):
            flat = [y[n] for n in out_names]
        elif isinstance(y, (list, tuple)):
            flat = list(y)
        else:
            flat = [y]
        return {n: tf.identity(v, name=n) for n, v in zip(out_names, flat)}

    fn = tf.function(serve, input_signature=tensor_specs(signature), autograph=False)
    if rewrite:
        with keras3_rewrites(model) as applied:
            concrete = fn.get_concrete_function()
    else:
        applied = []
        concrete = fn.get_concrete_function()
    return concrete, fn, list(applied)


def write_saved_model(model, fn, signature: ModelSignature, path: Path) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", fn)
    archive.write_out(str(path), verbose=False)
