"""Resizing and transposed-convolution MIL ops: conv_transpose, upsample_bilinear,
resize_bilinear, resize_nearest_neighbor, resize (iOS17), crop.

Sampling grids follow the MIL op reference (coremltools `image_resizing.py` docstrings): for an
axis of Xin samples resized to Xout, grid point i is
    align corners        i * (Xin - 1) / (Xout - 1)
    unaligned corners    (i + 0.5) * Xin / Xout - 0.5    (TF half_pixel_centers, Keras' default)
    default              i * Xin / Xout                  (TF asymmetric)
    offset corners       0.5 * delta + i * delta, delta = max(1, Xin - 1) / Xout
clamped to [0, Xin - 1]; bilinear interpolates between the two neighbours of each grid point.
"""

from __future__ import annotations

import numpy as np

from .registry import op


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.full(1, (n_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "UNALIGN_CORNERS":
        g = (i + 0.5) * n_in / n_out - 0.5
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "DEFAULT":
        g = i * n_in / n_out
    else:
        raise ValueError(f"unknown sampling_mode {mode!r}")
    return np.clip(g, 0, n_in - 1)


def _linear(x, axis: int, n_out: int, mode: str):
    n_in = x.shape[axis]
    g = _grid(n_in, n_out, mode)
    lo = np.floor(g).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (g - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def _nearest(x, axis: int, n_out: int, mode: str):
    n_in = x.shape[axis]
    if mode == "DEFAULT":
        # floor((i + 0.5) * Xin / Xout): coremltools emits resize_nearest_neighbor / resize for TF's
        # ResizeNearestNeighbor(half_pixel_centers=True) (what Keras' Resizing and tf.image use)
        idx = np.floor((np.arange(n_out) + 0.5) * n_in / n_out)
    else:
        idx = np.round(_grid(n_in, n_out, mode) + 1e-9)
    return np.take(x, np.clip(idx.astype(np.int64), 0, n_in - 1), axis=axis)


def _resize2d(x, h: int, w: int, mode: str, interp: str):
    f = _linear if interp == "LINEAR" else _nearest
    return np.ascontiguousarray(f(f(x, -2, int(h), mode), -1, int(w), mode), dtype=np.float32)


@op("upsample_bilinear")
def upsample_bilinear(x, scale_factor_height=1, scale_factor_width=1, align_corners=True, half_pixel_centers=None):
    h = int(np.floor(x.shape[-2] * float(scale_factor_height)))
    w = int(np.floor(x.shape[-1] * float(scale_factor_width)))
    if bool(align_corners):
        mode = "STRICT_ALIGN_CORNERS"
    else:
        half = (not bool(align_corners)) if half_pixel_centers is None else bool(half_pixel_centers)
        mode = "UNALIGN_CORNERS" if half else "DEFAULT"
    return _resize2d(x, h, w, mode, "LINEAR")


@op("resize_bilinear")
def resize_bilinear(x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT"):
    return _resize2d(x, target_size_height, target_size_width, str(sampling_mode), "LINEAR")


@op("resize_nearest_neighbor")
def resize_nearest_neighbor(x, target_size_height, target_size_width):
    return _resize2d(x, target_size_height, target_size_width, "DEFAULT", "NEAREST_NEIGHBOR")


@op("resize")
def resize(x, shape, resized_dims, interpolation_mode="LINEAR", sampling_mode="DEFAULT"):
    shape = [int(v) for v in np.asarray(shape).reshape(-1)]
    k = int(resized_dims)
    dims = shape[len(shape) - k:]
    out = x
    for j, size in enumerate(dims):
        axis = x.ndim - k + j
        if size == 0:
            continue
        f = _linear if str(interpolation_mode) == "LINEAR" else _nearest
        out = f(out, axis, size, str(sampling_mode))
    return np.ascontiguousarray(out, dtype=x.dtype)


@op("crop")
def crop(x, crop_height, crop_width):
    (t, b), (l, r) = [int(v) for v in np.asarray(crop_height).reshape(2)], [int(v) for v in np.asarray(crop_width).reshape(2)]
    return x[..., t : x.shape[-2] - b, l : x.shape[-1] - r]


@op("conv_transpose")
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=None,
                   dilations=None, groups=1):
    """Scatter form: every input pixel adds weight * value at stride-spaced offsets, one
    tensordot per kernel tap; then the padding is cropped. weight is (C_in, C_out/groups, *K)."""
    n = x.ndim - 2
    kernel = weight.shape[2:]
    strides = tuple(int(s) for s in np.atleast_1d(strides)) if strides is not None else (1,) * n
    dilations = tuple(int(d) for d in np.atleast_1d(dilations)) if dilations is not None else (1,) * n
    groups = int(groups)
    N, c_in = x.shape[:2]
    c_out = weight.shape[1] * groups
    full = [(x.shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    acc = np.zeros((N, c_out, *full), np.float32)
    cig, cog = c_in // groups, c_out // groups
    for tap in np.ndindex(*kernel):
        sl = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + strides[i] * (x.shape[2 + i] - 1) + 1, strides[i])
                   for i in range(n))
        for g in range(groups):
            w = weight[(slice(g * cig, (g + 1) * cig), slice(None)) + tap]  # (cig, cog)
            contrib = np.tensordot(x[:, g * cig : (g + 1) * cig], w, axes=([1], [0]))  # (N, *in, cog)
            acc[(slice(None), slice(g * cog, (g + 1) * cog)) + sl] += np.moveaxis(contrib, -1, 1)
    # output sizes and the crop at the start of each axis
    if output_shape is not None:
        want = [int(v) for v in np.asarray(output_shape).reshape(-1)][-n:]
    elif pad_type == "same":
        want = [x.shape[2 + i] * strides[i] for i in range(n)]
    elif pad_type == "custom" and pad is not None:
        p = [int(v) for v in np.asarray(pad).reshape(-1)]
        want = [full[i] - p[2 * i] - p[2 * i + 1] for i in range(n)]
    else:
        want = full
    if pad_type == "custom" and pad is not None:
        p = [int(v) for v in np.asarray(pad).reshape(-1)]
        before = [p[2 * i] for i in range(n)]
    else:
        before = [max(full[i] - want[i], 0) // 2 for i in range(n)]
    out = np.zeros((N, c_out, *want), np.float32)
    src = tuple(slice(before[i], min(before[i] + want[i], full[i])) for i in range(n))
    dst = tuple(slice(0, min(want[i], full[i] - before[i])) for i in range(n))
    out[(slice(None), slice(None)) + dst] = acc[(slice(None), slice(None)) + src]
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * n)
    return out
