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
            env = self._bind(feeds)
            for _ in self._execute(env):
                pass
        return {name: env[k] for k, name in self.outputs}

    def trace(self, feeds: dict):
        """Yields (step, {var name: rounded result}) after every step, in program order: a
        mismatch is bisected layer by layer against Keras (docs/coreml.md)."""
        with _one_blas_thread():
            env = self._bind(feeds)
            for step in self._execute(env):
                yield step, {name: env[name] for name, _ in step.outputs}

    def _bind(self, feeds: dict) -> dict:
        env = dict(self.consts)
        for name, (shp, dtype) in self.inputs.items():
            x = np.asarray(feeds[name]).astype(dtype)
            if len(x.shape) != len(shp) or any(d is not None and d != e for d, e in zip(shp, x.shape)):
                raise ValueError(f"input '{name}' has shape {x.shape}, the program expects {shp} (None: flexible)")
            env[name] = _widen(x)
        return env

    def _execute(self, env: dict):
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
            yield step


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
    spec, func = _read_main(path)
    _check_ops(func)
    keys = _VarKeys()
    for v in func.inputs.values():
        keys(v)
    program = Program(
        inputs={n: (_dims(v.shape), _np_dtype(v)) for n, v in func.inputs.items()},
        outputs=[(keys(v), v.name) for v in func.outputs], steps=[], description=_description(spec),
    )
    for o in func.operations:
        _add_operation(program, o, keys)
    _inline_params(program)
    return program


def _read_main(path: str):
    """(spec, the `main` function of the MIL program) via coremltools' milproto loader."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise NotMLProgram(f"{path}: a '{kind}' model, not an ML Program")
    prog = load(spec, spec.specificationVersion, mlmodel.weights_dir)
    return spec, prog.functions["main"]


def _check_ops(func) -> None:
    """Every op without an implementation (or with nested blocks: control flow), all at once."""
    unknown = sorted({o.op_type for o in func.operations if o.op_type != "const" and o.op_type not in OPS}
                     | {o.op_type for o in func.operations if o.blocks})
    if unknown:
        raise UnsupportedOp(", ".join(unknown), "the coreml-reference interpreter has no implementation")


def _np_dtype(var):
    from coremltools.converters.mil.mil import types

    try:
        return types.nptype_from_builtin(var.dtype)
    except Exception:  # str / dict outputs of `classify`
        return None


def _description(spec) -> dict:
    return {"inputs": {f.name: f.type.WhichOneof("Type") for f in spec.description.input},
            "predicted_feature": spec.description.predictedFeatureName or None}


class _VarKeys:
    """Environment keys are per Var object: the loader names inline values with a process-wide
    counter ("const_1"), which can repeat a name the program itself uses."""

    def __init__(self):
        self.keys: dict = {}
        self.taken: set = set()

    def __call__(self, var) -> str:
        if id(var) not in self.keys:
            name = var.name
            while name in self.taken:
                name += "'"
            self.keys[id(var)] = name
            self.taken.add(name)
        return self.keys[id(var)]


def _add_operation(program: Program, o, keys: _VarKeys) -> None:
    """A const becomes a value, a constexpr_* (weight decompression) is evaluated once, here;
    every other op becomes a Step."""
    if o.op_type == "const":
        program.consts[keys(o.outputs[0])] = _const(o.outputs[0].val)
        return
    if o.op_type.startswith("constexpr_"):
        args = {k: program.consts[keys(v)] for k, v in o.inputs.items()}
        program.consts[keys(o.outputs[0])] = _round_to(OPS[o.op_type](**args), _np_dtype(o.outputs[0]))
        return
    ins = {k: ("refs", [keys(x) for x in v]) if isinstance(v, (list, tuple)) else ("ref", keys(v))
           for k, v in o.inputs.items()}
    program.steps.append(Step(o.op_type, o.name, ins, [(keys(v), _np_dtype(v)) for v in o.outputs]))


def _inline_params(program: Program) -> None:
    """Small scalar / string consts are passed by value, not looked up."""
    for step in program.steps:
        for k, (kind, v) in list(step.inputs.items()):
            if kind == "ref" and v in program.consts and _is_param(program.consts[v]):
                step.inputs[k] = ("const", _param(program.consts[v]))


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
