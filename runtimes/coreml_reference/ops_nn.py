"""Neural-network MIL ops: conv, pooling, normalization, linear/matmul/einsum, softmax.

Layouts follow the MIL op reference: images are (N, C, *spatial), conv weights are
(C_out, C_in / groups, *kernel), linear weights are (D_out, D_in). Convolutions are vectorized:
1x1 as one matmul, depthwise as one multiply-add per kernel tap, the rest as im2col
(`sliding_window_view`) contracted with one `tensordot` - never a loop over pixels or channels.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .registry import axes_of, op, spatial_pads


def _tuple(v, n, default=1):
    return tuple(int(a) for a in np.atleast_1d(v)) if v is not None else (default,) * n


def _windows(x, kernel, strides, dilations, pads, fill):
    """(N, C, *out, *kernel) strided view of x padded with `fill`; out sizes follow MIL."""
    n = len(kernel)
    if any(p != (0, 0) for p in pads):
        x = np.pad(x, [(0, 0), (0, 0)] + list(pads), constant_values=fill)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    w = sliding_window_view(x, eff, axis=tuple(range(2, 2 + n)))
    idx = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
        + tuple(slice(None, None, d) for d in dilations)
    return w[idx]


@op("conv")
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    n = x.ndim - 2
    kernel = weight.shape[2:]
    strides, dilations = _tuple(strides, n), _tuple(dilations, n)
    groups = int(groups)
    pads = spatial_pads(pad_type, pad, x.shape[2:], kernel, strides, dilations)
    c_out, c_in_g = weight.shape[:2]
    if all(k == 1 for k in kernel) and groups == 1:
        if any(p != (0, 0) for p in pads):
            x = np.pad(x, [(0, 0), (0, 0)] + list(pads))
        xs = x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
        out = np.tensordot(weight.reshape(c_out, c_in_g), xs, axes=([1], [1]))  # (C_out, N, *out)
        out = np.moveaxis(out, 0, 1)
    elif c_in_g == 1 and groups == x.shape[1]:
        out = _depthwise(x, weight, strides, dilations, pads, groups)
    else:
        win = _windows(x, kernel, strides, dilations, pads, 0.0)  # (N, C, *out, *k)
        if groups == 1:
            axes_w = (1,) + tuple(range(2 + n, 2 + 2 * n))
            out = np.tensordot(win, weight, axes=(axes_w, (1,) + tuple(range(2, 2 + n))))  # (N, *out, C_out)
            out = np.moveaxis(out, -1, 1)
        else:
            N = x.shape[0]
            win = win.reshape((N, groups, c_in_g) + win.shape[2:])
            w = weight.reshape((groups, c_out // groups, c_in_g) + tuple(kernel))
            sp = "hwd"[:n]
            ks = "ijk"[:n]
            out = np.einsum(f"ngc{sp}{ks},goc{ks}->ngo{sp}", win, w, optimize=True)
            out = out.reshape((N, c_out) + out.shape[3:])
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * n)
    return np.ascontiguousarray(out, dtype=np.float32)


def _depthwise(x, weight, strides, dilations, pads, groups):
    """One channel per group: out[c*m + j] = sum over taps of x[c] * w[c*m + j]."""
    mult = weight.shape[0] // groups
    if mult > 1:
        x = np.repeat(x, mult, axis=1)
    if any(p != (0, 0) for p in pads):
        x = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    kernel = weight.shape[2:]
    n = len(kernel)
    out_sizes = [(x.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(n)]
    acc = np.zeros((x.shape[0], weight.shape[0], *out_sizes), np.float32)
    w = weight.reshape(weight.shape[0], -1)
    for t, tap in enumerate(np.ndindex(*kernel)):  # loop over kernel taps (9, 25, 49), not pixels
        sl = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + strides[i] * (out_sizes[i] - 1) + 1, strides[i])
                   for i in range(n))
        acc += x[(slice(None), slice(None)) + sl] * w[:, t].reshape((1, -1) + (1,) * n)
    return acc


def _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode):
    n = x.ndim - 2
    kernel = _tuple(kernel_sizes, n)
    strides = _tuple(strides, n)
    pads = spatial_pads(pad_type, pad, x.shape[2:], kernel, strides, (1,) * n)
    if ceil_mode:  # extra padding at the end so a partial last window is kept
        new = []
        for i, (b, a) in enumerate(pads):
            size = x.shape[2 + i] + b + a
            out = -(-(size - kernel[i]) // strides[i]) + 1
            new.append((b, a + max((out - 1) * strides[i] + kernel[i] - size, 0)))
        pads = new
    return kernel, strides, pads


@op("max_pool")
def max_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    kernel, strides, pads = _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    win = _windows(x, kernel, strides, (1,) * len(kernel), pads, -np.inf)
    return win.max(axis=tuple(range(-len(kernel), 0)))


@op("avg_pool")
def avg_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, exclude_padding_from_average=False,
             ceil_mode=False):
    kernel, strides, pads = _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    ones = (1,) * len(kernel)
    red = tuple(range(-len(kernel), 0))
    total = _windows(x, kernel, strides, ones, pads, 0.0).sum(axis=red)
    if exclude_padding_from_average:
        count = _windows(np.ones((1, 1) + x.shape[2:], np.float32), kernel, strides, ones, pads, 0.0).sum(axis=red)
    else:
        count = float(np.prod(kernel))
    return total / count


@op("l2_pool")
def l2_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    kernel, strides, pads = _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    win = _windows(x, kernel, strides, (1,) * len(kernel), pads, 0.0)
    return np.sqrt((win * win).sum(axis=tuple(range(-len(kernel), 0))))


@op("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = 1.0 / np.sqrt(variance.reshape(shape) + np.float32(epsilon))
    y = (x - mean.reshape(shape)) * inv
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@op("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    red = tuple(range(2, x.ndim))
    mu = x.mean(axis=red, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=red, keepdims=True)
    y = (x - mu) / np.sqrt(var + np.float32(epsilon))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@op("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    red = axes_of(axes, x.ndim)
    mu = x.mean(axis=red, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=red, keepdims=True)
    y = (x - mu) / np.sqrt(var + np.float32(epsilon))
    # gamma/beta have the shape of the normalized axes (trailing ones in practice)
    shape = [x.shape[i] if i in red else 1 for i in range(x.ndim)]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@op("l2_norm")
def l2_norm(x, axes=None, epsilon=1e-6):
    red = axes_of(axes, x.ndim) if axes is not None else tuple(range(max(x.ndim - 3, 0), x.ndim))
    norm = np.sqrt(np.maximum((x * x).sum(axis=red, keepdims=True), np.float32(epsilon)))
    return x / norm


@op("local_response_norm")
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    size = int(size)
    sq = np.pad(x * x, [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    acc = sliding_window_view(sq, size, axis=1).sum(axis=-1)
    return x / (np.float32(k) + np.float32(alpha) / size * acc) ** np.float32(beta)


@op("linear")
def linear(x, weight, bias=None):
    y = x @ weight.T
    return y + bias if bias is not None else y


@op("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x and x.ndim > 1:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and y.ndim > 1:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("einsum")
def einsum(values, equation):
    return np.einsum(equation.replace(" ", ""), *values, optimize=True)


@op("softmax")
def softmax(x, axis=-1):
    z = x - x.max(axis=int(axis), keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=int(axis), keepdims=True)
