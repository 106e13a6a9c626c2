"""Load an ML Program (.mlpackage) into plain NumPy steps, and execute them.

Loading uses coremltools' milproto loader (it runs on Linux and resolves the weight blobs);
the result keeps no coremltools object, so execution needs only NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..base import UnsupportedOp

from .registry import OPS


class NotMLProgram(Exception):
    """The model is a NeuralNetwork (or pipeline) model, not an ML Program."""


@dataclass
class Step:
    op_type: str
    name: str
    # MIL input name -> ("ref", var name) | ("refs", [var names]) | ("const", value)
    inputs: dict
    outputs: list  # [(var name, numpy dtype or None for non-tensor outputs)]


@dataclass
class Program:
    inputs: dict  # name -> (shape tuple, numpy dtype)
    outputs: list  # (environment key, output name), in program order
    steps: list
    consts: dict = field(default_factory=dict)  # var name -> value (float consts kept as float32)
    description: dict = field(default_factory=dict)  # spec: input kinds, classifier output names

    def run(self, feeds: dict) -> dict:
        with _one_blas_thread():
            return self._run(feeds)

    def _run(self, feeds: dict) -> dict:
        env = dict(self.consts)
        for name, (shp, dtype) in self.inputs.items():
            x = np.asarray(feeds[name]).astype(dtype)
            if len(x.shape) != len(shp) or any(d is not None and d != e for d, e in zip(shp, x.shape)):
                raise ValueError(f"input '{name}' has shape {x.shape}, the program expects {shp} (None: flexible)")
            env[name] = _widen(x)
        for step in self.steps:
            args = {}
            for k, (kind, v) in step.inputs.items():
                args[k] = env[v] if kind == "ref" else [env[n] for n in v] if kind == "refs" else v
            try:
                res = OPS[step.op_type](**args)
            except Exception as e:
                raise RuntimeError(f"op '{step.op_type}' ({step.name}) failed: {e}") from e
            res = res if isinstance(res, tuple) else (res,)
            for (name, dtype), val in zip(step.outputs, res):
                env[name] = _round_to(val, dtype)
        return {name: env[k] for k, name in self.outputs}


def _one_blas_thread():
    """At batch 1 every matmul is small: OpenBLAS threads cost more in hand-offs than they gain,
    and on a busy machine their spin-waiting made MobileNetV2 8x slower (1.55 s -> 0.19 s at
    96x96 with one thread). threadpoolctl is optional; without it BLAS keeps its default."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _widen(x):
    """fp16 -> fp32 (exact); every op computes on float32."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _round_to(val, dtype):
    """Round a result to the dtype the program declares (fp16 results keep only fp16 precision,
    stored widened to float32 so the next op need not convert)."""
    if dtype is None or not isinstance(val, (np.ndarray, np.generic, float, int, bool)):
        return val
    val = np.asarray(val)
    if dtype == np.float16:
        return val.astype(np.float16).astype(np.float32)
    return val.astype(dtype, copy=False)


def load_program(path: str) -> Program:
    """Read a .mlpackage; raises NotMLProgram, or UnsupportedOp naming every unknown op."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.converters.mil.mil import types

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise NotMLProgram(f"{path}: a '{kind}' model, not an ML Program")
    prog = load(spec, spec.specificationVersion, mlmodel.weights_dir)
    func = prog.functions["main"]

    def np_dtype(var):
        try:
            return types.nptype_from_builtin(var.dtype)
        except Exception:  # str / dict outputs of `classify`
            return None

    unknown = sorted({o.op_type for o in func.operations if o.op_type != "const" and o.op_type not in OPS}
                     | {o.op_type for o in func.operations if o.blocks})
    if unknown:
        raise UnsupportedOp(", ".join(unknown), "the coreml-reference interpreter has no implementation")
    # Environment keys are per Var object: the loader names inline values with a process-wide
    # counter ("const_1"), which can repeat a name the program itself uses.
    keys: dict = {}
    taken: set = set()

    def key(var):
        if id(var) not in keys:
            name = var.name
            while name in taken:
                name += "'"
            keys[id(var)] = name
            taken.add(name)
        return keys[id(var)]

    for v in func.inputs.values():
        key(v)
    program = Program(
        inputs={n: (_dims(v.shape), np_dtype(v)) for n, v in func.inputs.items()},
        outputs=[(key(v), v.name) for v in func.outputs], steps=[],
        description={"inputs": {f.name: f.type.WhichOneof("Type") for f in spec.description.input},
                     "predicted_feature": spec.description.predictedFeatureName or None},
    )
    for o in func.operations:
        if o.op_type == "const":
            program.consts[key(o.outputs[0])] = _const(o.outputs[0].val)
            continue
        if o.op_type.startswith("constexpr_"):  # weight decompression: evaluated once, here
            args = {k: program.consts[key(v)] for k, v in o.inputs.items()}
            program.consts[key(o.outputs[0])] = _round_to(OPS[o.op_type](**args), np_dtype(o.outputs[0]))
            continue
        ins = {}
        for k, v in o.inputs.items():
            ins[k] = ("refs", [key(x) for x in v]) if isinstance(v, (list, tuple)) else ("ref", key(v))
        program.steps.append(Step(o.op_type, o.name, ins, [(key(v), np_dtype(v)) for v in o.outputs]))
    # small scalar / string consts are passed by value, not looked up
    for step in program.steps:
        for k, (kind, v) in list(step.inputs.items()):
            if kind == "ref" and v in program.consts and _is_param(program.consts[v]):
                step.inputs[k] = ("const", _param(program.consts[v]))
    return program


def _dims(shape) -> tuple:
    """Fixed sizes as ints; a flexible (symbolic) size as None."""
    out = []
    for d in shape:
        try:
            out.append(int(d))
        except TypeError:
            out.append(None)
    return tuple(out)


def _const(val):
    if isinstance(val, np.ndarray) and val.dtype == np.float16:
        return val.astype(np.float32)  # exact; spares a conversion at every use
    if isinstance(val, np.generic) and val.dtype == np.float16:
        return np.float32(val)
    return val


def _is_param(val):
    return isinstance(val, (str, bool, int, float, np.generic)) or (isinstance(val, np.ndarray) and val.dtype.kind in "USb")


def _param(val):
    if isinstance(val, np.ndarray) and val.dtype.kind in "US":
        return [str(v) for v in val.reshape(-1)]
    if isinstance(val, np.generic) and val.dtype.kind in "US":
        return str(val)
    return val
