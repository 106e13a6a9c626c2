"""Element-wise MIL ops: activations, unary math, broadcasting binary ops, comparisons, cast.

Binary ops broadcast as NumPy does (the MIL spec uses the same rule). Scalars such as `alpha`
arrive as float32 NumPy scalars.
"""

from __future__ import annotations

import math

import numpy as np

from .registry import op

f32 = np.float32


def _erf(x):
    # NumPy has no erf and the reference may import only NumPy: math.erf per element is exact
    # (float64), and fast enough for the GELU tensors of a batch-1 program.
    return _ERF(np.asarray(x, np.float64)).astype(np.float32)


_ERF = np.vectorize(math.erf, otypes=[np.float64])

UNARY = {
    "relu": lambda x: np.maximum(x, f32(0)),
    "relu6": lambda x: np.clip(x, f32(0), f32(6)),
    "sigmoid": lambda x: f32(1) / (f32(1) + np.exp(-x)),
    "tanh": np.tanh,
    "silu": lambda x: x / (f32(1) + np.exp(-x)),
    "softplus": lambda x: np.logaddexp(f32(0), x),
    "softsign": lambda x: x / (f32(1) + np.abs(x)),
    "erf": _erf,
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "square": np.square,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,  # half to even, as the MIL reference says
    "sign": np.sign,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "atanh": np.arctanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "logical_not": np.logical_not,
    "identity": lambda x: x,
}

BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _unary(fn):
    return lambda x: fn(x)


def _binary(fn):
    return lambda x, y: fn(x, y)


for _name, _fn in UNARY.items():
    op(_name)(_unary(_fn))
for _name, _fn in BINARY.items():
    op(_name)(_binary(_fn))


@op("gelu")
def gelu(x, mode="EXACT"):
    if mode == "EXACT":
        return f32(0.5) * x * (f32(1) + _erf(x / f32(math.sqrt(2.0))))
    if mode == "TANH_APPROXIMATION":
        return f32(0.5) * x * (f32(1) + np.tanh(f32(math.sqrt(2 / math.pi)) * (x + f32(0.044715) * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (f32(1) + np.exp(f32(-1.702) * x))
    raise ValueError(f"gelu: unknown mode {mode!r}")


@op("leaky_relu")
def leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, f32(alpha) * x)


@op("elu")
def elu(x, alpha=1.0):
    return np.where(x > 0, x, f32(alpha) * np.expm1(np.minimum(x, f32(0))))


@op("prelu")
def prelu(x, alpha):
    a = np.asarray(alpha).reshape((1, -1) + (1,) * (x.ndim - 2))  # one alpha per channel (axis 1)
    return np.where(x >= 0, x, a * x)


@op("sigmoid_hard")
def sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.clip(f32(alpha) * x + f32(beta), f32(0), f32(1))


@op("scaled_tanh")
def scaled_tanh(x, alpha=1.0, beta=1.0):
    return f32(alpha) * np.tanh(f32(beta) * x)


@op("clamped_relu")
def clamped_relu(x, alpha=0.0, beta=6.0):
    return np.minimum(np.where(x >= 0, x, f32(alpha) * x), f32(beta))


@op("linear_activation")
def linear_activation(x, alpha=1.0, beta=0.0):
    return f32(alpha) * x + f32(beta)


@op("thresholded_relu")
def thresholded_relu(x, alpha=1.0):
    return np.where(x > f32(alpha), x, f32(0))


@op("clip")
def clip(x, alpha, beta):
    return np.minimum(np.maximum(x, alpha), beta)


@op("threshold")
def threshold(x, alpha):
    return np.maximum(x, alpha)


@op("rsqrt")
def rsqrt(x, epsilon=1e-12):
    return f32(1) / np.sqrt(x + f32(epsilon))


@op("inverse")
def inverse(x, epsilon=1e-4):
    return f32(1) / (x + f32(epsilon))


@op("select")
def select(cond, a, b):
    return np.where(cond, a, b)


DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


@op("cast")
def cast(x, dtype):
    try:
        return np.asarray(x).astype(DTYPES[dtype])
    except KeyError:
        raise ValueError(f"cast: unknown dtype {dtype!r}") from None
