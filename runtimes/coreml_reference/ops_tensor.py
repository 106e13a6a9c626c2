"""Shape and data-movement MIL ops, reductions, and `classify`.

Negative axes count from the end everywhere, as in the MIL reference.
"""

from __future__ import annotations

import numpy as np

from .registry import axes_of, op


@op("reshape")
def reshape(x, shape):
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    # MIL: 0 copies the input dimension (only in the iOS15 opset), -1 is inferred
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("reshape_like")
def reshape_like(x, ref_tensors, begins, ends, end_masks):
    shape = []
    for r, b, e, m in zip(ref_tensors, begins, ends, end_masks):
        shape.extend(r.shape[int(b): None if m else int(e)])
    return x.reshape(shape)


@op("transpose")
def transpose(x, perm):
    return np.transpose(x, [int(p) for p in perm])


@op("squeeze")
def squeeze(x, axes=None):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=axes_of(axes, x.ndim))


@op("expand_dims")
def expand_dims(x, axes):
    rank = x.ndim + len(np.atleast_1d(axes))
    for a in sorted(int(a) % rank for a in np.atleast_1d(axes)):
        x = np.expand_dims(x, a)
    return x


@op("flatten2d")
def flatten2d(x, axis=1):
    axis = int(axis) % x.ndim if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@op("concat")
def concat(values, axis, interleave=False):
    axis = int(axis)
    if not interleave:
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis % values[0].ndim + 1)
    shape = list(values[0].shape)
    shape[axis] = -1
    return stacked.reshape(shape)


@op("stack")
def stack(values, axis=0):
    return np.stack(values, axis=int(axis))


@op("split")
def split(x, axis, num_splits=None, split_sizes=None):
    axis = int(axis)
    if split_sizes is not None:
        cuts = np.cumsum([int(s) for s in split_sizes])[:-1]
        return tuple(np.split(x, cuts, axis=axis))
    return tuple(np.split(x, int(num_splits), axis=axis))


@op("slice_by_index")
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    n = x.ndim
    stride = [1] * n if stride is None else [int(s) for s in stride]
    begin_mask = [False] * n if begin_mask is None else list(begin_mask)
    end_mask = [False] * n if end_mask is None else list(end_mask)
    squeeze_mask = [False] * n if squeeze_mask is None else list(squeeze_mask)
    idx = []
    for i in range(n):
        b = None if begin_mask[i] else int(begin[i])
        e = None if end_mask[i] else int(end[i])
        if squeeze_mask[i]:
            idx.append(int(begin[i]))
        else:
            idx.append(slice(b, e, stride[i]))
    return x[tuple(idx)]


@op("slice_by_size")
def slice_by_size(x, begin, size):
    idx = []
    for i, (b, s) in enumerate(zip(begin, size)):
        b, s = int(b) % x.shape[i] if x.shape[i] else 0, int(s)
        idx.append(slice(b, None if s == -1 else b + s))
    return x[tuple(idx)]


@op("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    axis, batch_dims = int(axis) % x.ndim, int(batch_dims)
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)  # MIL allows negative indices
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    # batched gather: leading batch_dims shared by x and indices
    out = [gather(x[i], indices[i], axis - 1, batch_dims - 1) for i in range(x.shape[0])]
    return np.stack(out)


@op("gather_along_axis")
def gather_along_axis(x, indices, axis=0, validate_indices=False):
    axis = int(axis) % x.ndim
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take_along_axis(x, indices, axis=axis)


@op("gather_nd")
def gather_nd(x, indices, batch_dims=0, validate_indices=False):
    indices = np.asarray(indices).astype(np.int64)
    if int(batch_dims):
        return np.stack([gather_nd(x[i], indices[i], int(batch_dims) - 1) for i in range(x.shape[0])])
    return x[tuple(np.moveaxis(indices, -1, 0))]


@op("tile")
def tile(x, reps):
    return np.tile(x, [int(r) for r in reps])


@op("pad")
def pad(x, pad, mode="constant", constant_val=0.0):
    p = [int(v) for v in np.asarray(pad).reshape(-1)]
    k = len(p) // 2  # the pairs cover the last k axes
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    if mode == "constant":
        return np.pad(x, widths, constant_values=constant_val)
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise ValueError(f"pad: unknown mode {mode!r}")


@op("shape")
def shape(x):
    return np.asarray(x.shape, np.int32)


@op("fill")
def fill(shape, value=0.0):
    return np.full([int(s) for s in shape], value)


@op("range_1d")
def range_1d(end, start, step):
    return np.arange(start, end, step)


@op("ones_like")
def ones_like(x):
    return np.ones_like(x)


@op("band_part")
def band_part(x, lower=-1, upper=-1):
    m, n = x.shape[-2:]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    keep = ((lower < 0) | (i - j <= lower)) & ((upper < 0) | (j - i <= upper))
    return np.where(keep, x, np.zeros_like(x))


@op("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False):
    axis = int(axis)
    if reverse:
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis)
    if exclusive:
        y = y - x
    return np.flip(y, axis) if reverse else y


@op("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1.0, off_value=0.0):
    n = int(one_hot_vector_size)
    hot = np.asarray(indices)[..., None] == np.arange(n)
    out = np.where(hot, on_value, off_value)
    return np.moveaxis(out, -1, int(axis)) if int(axis) != -1 else out


@op("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    return np.repeat(np.repeat(x, int(scale_factor_height), axis=-2), int(scale_factor_width), axis=-1)


@op("depth_to_space")
def depth_to_space(x, block_size):
    b = int(block_size)
    n, c, h, w = x.shape
    y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@op("space_to_depth")
def space_to_depth(x, block_size):
    b = int(block_size)
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


def _reduce(fn):
    def run(x, axes=None, keep_dims=False):
        return fn(x, axis=axes_of(axes, x.ndim), keepdims=bool(keep_dims))

    return run


REDUCTIONS = {
    "reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.abs(x).sum(axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt((x * x).sum(axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: (x * x).sum(axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(x.sum(axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: _logsumexp(x, axis, keepdims),
}
for _name, _fn in REDUCTIONS.items():
    op(_name)(_reduce(_fn))


def _logsumexp(x, axis, keepdims):
    m = x.max(axis=axis, keepdims=True)
    y = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axis)


def _arg(fn):
    def run(x, axis=-1, keep_dims=False, output_dtype="int32"):
        y = fn(x, axis=int(axis))
        return np.expand_dims(y, int(axis)) if keep_dims else y

    return run


op("reduce_argmax")(_arg(np.argmax))
op("reduce_argmin")(_arg(np.argmin))


@op("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"):
    axis, k = int(axis), int(k)
    order = np.argsort(x if ascending else -x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int32)


@op("classify")
def classify(probabilities, classes):
    """CoreML classifier head: (label of the top class, {label: probability})."""
    p = np.asarray(probabilities).reshape(-1)
    labels = list(classes)
    return labels[int(np.argmax(p))], dict(zip(labels, p.tolist()))
