"""Compile-time (constexpr_*) MIL ops that decompress weights: int8 linear quantization and
palettization (`coremltools.optimize`). Their inputs are all constants, so the loader evaluates
them once when the program is loaded; the dense weights then feed ordinary ops.
"""

from __future__ import annotations

import numpy as np

from .registry import op


def _along(v, axis, rank):
    """Per-channel parameter (scalar or 1-D along `axis`) shaped to broadcast against the data."""
    v = np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
    if v.ndim == 0:
        return v
    shape = [1] * rank
    shape[int(axis) % rank] = -1
    return v.reshape(shape)


@op("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """iOS16: scale * (data - zero_point), per tensor or per channel along `axis`."""
    q = np.asarray(quantized_data).astype(np.float32)
    rank = q.ndim
    return (q - _along(zero_point, axis, rank).astype(np.float32)) * _along(scale, axis, rank)


def _blockwise(param, shape):
    """Repeat a blockwise parameter (same rank as the data, each dim dividing the data's) so that
    it covers the data: block size along a dim = data dim / param dim."""
    p = np.asarray(param)
    for axis, (n, m) in enumerate(zip(shape, p.shape)):
        if m != n:
            p = np.repeat(p, n // m, axis=axis)
    return p


@op("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """iOS18: scale * (data - offset), scale/offset given per block."""
    d = np.asarray(data).astype(np.float32)
    if offset is not None:
        d = d - _blockwise(offset, d.shape).astype(np.float32)
    return d * _blockwise(scale, d.shape).astype(np.float32)


def unpack_bits(packed, nbits: int, count: int) -> np.ndarray:
    """n-bit unsigned integers packed LSB first (the coremltools / Core ML layout)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: count * nbits]
    weights = (1 << np.arange(nbits)).astype(np.int64)
    return (bits.reshape(count, nbits).astype(np.int64) * weights).sum(axis=1)


@op("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    lut = np.asarray(lut)
    if shape is not None:  # iOS16: one palette for the tensor, indices bit-packed
        shape = [int(s) for s in np.asarray(shape)]
        nbits = int(np.log2(lut.size))
        idx = unpack_bits(indices, nbits, int(np.prod(shape)))
        return lut.reshape(-1)[idx].reshape(shape)
    # iOS18: indices have the output's shape; lut (*blocks, palette, vector_size) per block
    idx = np.asarray(indices).astype(np.int64)
    if lut.shape[-1] != 1:
        raise NotImplementedError("vector palettization (vector_size > 1)")
    table = lut[..., 0]  # (*blocks, palette)
    block_ids = [np.arange(n) // (n // b) for n, b in zip(idx.shape, table.shape[:-1])]
    grids = np.meshgrid(*block_ids, indexing="ij")
    return table[tuple(grids) + (idx,)]
