"""The op table of the reference interpreter: MIL op name -> NumPy function.

Every op function takes the op's MIL inputs as keyword arguments (NumPy arrays, Python scalars,
strings, or lists of arrays for variadic inputs such as `concat(values=...)`) and returns one
array or a tuple (one per MIL output). Float inputs always arrive as float32 and the interpreter
rounds each result to the dtype the program declares for it, so an fp16 program keeps fp16
tensors between ops (as on a device) while each op accumulates in fp32 (as GPU/ANE kernels do).
"""

from __future__ import annotations

import numpy as np

OPS: dict = {}


def op(*names):
    """Register a function for one or more MIL op names."""

    def deco(fn):
        for n in names:
            if n in OPS:
                raise ValueError(f"MIL op '{n}' registered twice")
            OPS[n] = fn
        return fn

    return deco


def axes_of(axes, rank: int) -> tuple:
    """MIL axes (None = all, negative allowed) -> sorted tuple of non-negative axes."""
    if axes is None:
        return tuple(range(rank))
    return tuple(sorted(int(a) % rank for a in np.atleast_1d(axes)))


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1, lower: bool = False) -> tuple[int, int]:
    """(before, after) padding of TF/MIL 'same': output = ceil(size / stride). The odd pixel goes
    after ('same') or before ('same_lower')."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def spatial_pads(pad_type: str, pad, shape, kernel, strides, dilations) -> list[tuple[int, int]]:
    """Per spatial axis (before, after) for MIL pad_type valid | same | same_lower | custom."""
    n = len(kernel)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type in ("same", "same_lower"):
        return [same_pads(shape[i], kernel[i], strides[i], dilations[i], pad_type == "same_lower") for i in range(n)]
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(pad).reshape(-1)]
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    raise ValueError(f"unknown pad_type {pad_type!r}")
