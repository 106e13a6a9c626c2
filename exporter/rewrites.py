"""Graph rewrites applied while tracing, for ops that converters mishandle on Keras 3.

Each rewrite keeps the math and only changes how TensorFlow expresses it:

- exact GELU: Keras 3 lowers it to `Erfc`, which tf2onnx, coremltools and TF.js reject; written
  as 0.5 * x * (1 + erf(x / sqrt(2))) instead (identical in exact arithmetic).
- grouped Conv2D (ConvNeXt, ResNeXt): Keras wraps it in a nested XLA-compiled function that
  tf2onnx and coremltools cannot take; lowered to split -> conv per group -> concat.
- recurrent layers with a known sequence length are unrolled, so no `While` loop reaches
  TFLite (which needs TF ops for it), coremltools (crashes on StatelessWhile) or TF.js.
- 3D pooling (MaxPooling3D, AveragePooling3D): TFLite has no builtin for MaxPool3D/AvgPool3D;
  a 3D window is separable, so it is a 2D pool over (H, W) of every frame, then a (D, 1) pool
  over the frames (padding per axis as TF's; the average divides by the per-axis counts, whose
  product is the 3D count), with reshapes between: builtins only.
- Einsum (MultiHeadAttention, EinsumDense): TF.js' wasm backend has no Einsum kernel; a
  two-operand einsum is transposes + reshapes + one batched MatMul.
- mixed precision (`mixed_float16`): float16 compute ops (Conv2D, MatMul, BiasAdd on half) have
  no TFLite builtin; layers are traced with a float32 policy (weights are float32 already), the
  usual deployment path. Parity then allows the model's float16 compute error (exporter/parity.py).

Rewrites are only applied during tracing (context manager); the model object is restored after.
"""

from __future__ import annotations

import contextlib
import math

MAX_UNROLL_STEPS = 512


@contextlib.contextmanager
def keras3_rewrites(model, *, unroll_rnn: bool = True):
    """Patch Keras' TF backend while tracing. Yields the list of rewrites that actually fired."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn as tfnn

    from keras.src.backend.tensorflow import numpy as tfnp

    applied: list[str] = []
    orig_gelu, orig_conv, orig_depthwise = tfnn.gelu, tfnn.conv, tfnn.depthwise_conv
    orig_max_pool, orig_avg_pool, orig_einsum = tfnn.max_pool, tfnn.average_pool, tfnp.einsum

    def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
        if len(inputs.shape) != 5 or (data_format or "channels_last") != "channels_last":
            return orig_max_pool(inputs, pool_size, strides, padding, data_format)
        _note(applied, "MaxPool3D -> MaxPool2D over (H, W) + MaxPool2D over frames (TFLite builtins)")
        return _pool3d(tf, inputs, pool_size, strides, padding, tf.nn.max_pool2d)

    def average_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
        if len(inputs.shape) != 5 or (data_format or "channels_last") != "channels_last":
            return orig_avg_pool(inputs, pool_size, strides, padding, data_format)
        _note(applied, "AvgPool3D -> AvgPool2D over (H, W) + AvgPool2D over frames (TFLite builtins)")
        return _pool3d(tf, inputs, pool_size, strides, padding, tf.nn.avg_pool2d)

    orig_tf_einsum = tf.einsum

    def lowered(fallback):
        def einsum(subscripts, *operands, **kwargs):
            out = _einsum_matmul(tf, subscripts, operands)
            if out is None:
                return fallback(subscripts, *operands, **kwargs)
            _note(applied, "Einsum -> Transpose/Reshape/BatchMatMul (TF.js wasm has no Einsum kernel)")
            return out
        return einsum

    # Keras' ops.einsum (EinsumDense) and its TF backend's attention (tf.einsum "BTNH,BSNH->BNTS")
    einsum, tf_einsum = lowered(orig_einsum), lowered(orig_tf_einsum)

    def gelu(x, approximate=True):
        if approximate:
            return orig_gelu(x, approximate=True)
        _note(applied, "exact GELU (Erfc) -> 0.5*x*(1+erf(x/sqrt(2)))")
        x = tf.convert_to_tensor(x)
        return 0.5 * x * (1.0 + tf.math.erf(x / tf.cast(math.sqrt(2.0), x.dtype)))

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        in_ch_axis = -1 if (data_format or "channels_last") == "channels_last" else 1
        in_ch = inputs.shape[in_ch_axis]
        k_in = kernel.shape[-2]
        if in_ch is None or k_in is None or in_ch == k_in:
            return orig_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        groups = in_ch // k_in
        if k_in == 1 and len(kernel.shape) == 4:
            # One input channel per group (ConvNeXt's 7x7 convs): a depthwise conv with multiplier
            # out/groups computes the same, in one op instead of `groups` (up to 768) convs.
            _note(applied, f"grouped Conv (groups={groups}, one channel each) -> DepthwiseConv2D")
            kh, kw, _, out_ch = kernel.shape
            dw = tf.reshape(kernel, (kh, kw, groups, out_ch // groups))
            as_tuple = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731  (Conv2D passes lists)
            return orig_depthwise(inputs, dw, as_tuple(strides), padding, data_format, as_tuple(dilation_rate))
        _note(applied, f"grouped Conv (groups={groups}) -> split/conv/concat")
        xs = tf.split(inputs, groups, axis=in_ch_axis)
        ks = tf.split(kernel, groups, axis=-1)
        ys = [orig_conv(x, k, strides, padding, data_format, dilation_rate) for x, k in zip(xs, ks)]
        return tf.concat(ys, axis=in_ch_axis)

    rnn_saved = []
    if unroll_rnn:
        rnn_saved = _unroll_rnns(model, applied)
    policies = _float32_compute(model, applied)
    tfnn.gelu, tfnn.conv = gelu, conv
    tfnn.max_pool, tfnn.average_pool, tfnp.einsum, tf.einsum = max_pool, average_pool, einsum, tf_einsum
    try:
        yield applied
    finally:
        tfnn.gelu, tfnn.conv = orig_gelu, orig_conv
        tfnn.max_pool, tfnn.average_pool, tfnp.einsum = orig_max_pool, orig_avg_pool, orig_einsum
        tf.einsum = orig_tf_einsum
        for layer, unroll in rnn_saved:
            layer.unroll = unroll
        for layer, policy in policies:
            layer.dtype_policy = policy


def _float32_compute(model, applied):
    """Layers whose policy computes in float16/bfloat16 get a float32 policy while tracing."""
    import keras

    saved = []
    for layer in [model, *_layers(model)]:
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and policy.compute_dtype in ("float16", "bfloat16"):
            saved.append((layer, policy))
            layer.dtype_policy = keras.DTypePolicy("float32")
    if saved:
        names = sorted({p.name for _, p in saved})
        _note(applied, f"{len(saved)} layers with policy {', '.join(names)} traced in float32 "
                       "(half-precision compute ops have no TFLite builtin); parity allows float16 compute error")
    return saved


def _dim(tf, x, i):
    d = x.shape[i]
    return d if d is not None else tf.shape(x)[i]


def _pool3d(tf, x, pool_size, strides, padding, pool2d):
    """(N, D, H, W, C) pooled as a 2D pool per frame, then a (D, 1) pool across frames."""
    pool = tuple(pool_size) if not isinstance(pool_size, int) else (pool_size,) * 3
    strides = pool if strides is None else (tuple(strides) if not isinstance(strides, int) else (strides,) * 3)
    padding = padding.upper()
    n, d, h, w, c = (_dim(tf, x, i) for i in range(5))
    y = tf.reshape(x, [-1, h, w, c])
    y = pool2d(y, pool[1:], strides[1:], padding)
    h2, w2 = _dim(tf, y, 1), _dim(tf, y, 2)
    y = tf.reshape(y, [-1, d, h2 * w2, c])
    y = pool2d(y, (pool[0], 1), (strides[0], 1), padding)
    return tf.reshape(y, [-1, _dim(tf, y, 1), h2, w2, c])


def _einsum_matmul(tf, subscripts, operands):
    """A two-operand einsum without ellipsis or repeated labels as one batched MatMul; None when
    the equation is outside that form (the original einsum is used)."""
    eq = subscripts.replace(" ", "")
    if len(operands) != 2 or "." in eq or "->" not in eq:
        return None
    ins, out = eq.split("->")
    parts = ins.split(",")
    if len(parts) != 2:
        return None
    a_l, b_l = parts
    x, y = (tf.convert_to_tensor(o) for o in operands)
    if len(set(a_l)) != len(a_l) or len(set(b_l)) != len(b_l) or len(set(out)) != len(out) \
            or len(a_l) != len(x.shape) or len(b_l) != len(y.shape) or x.dtype != y.dtype:
        return None
    # labels of one operand absent from the other and from the output are summed first
    only_a = [c for c in a_l if c not in b_l and c not in out]
    only_b = [c for c in b_l if c not in a_l and c not in out]
    if only_a:
        x = tf.reduce_sum(x, axis=[a_l.index(c) for c in only_a])
        a_l = "".join(c for c in a_l if c not in only_a)
    if only_b:
        y = tf.reduce_sum(y, axis=[b_l.index(c) for c in only_b])
        b_l = "".join(c for c in b_l if c not in only_b)
    batch = [c for c in out if c in a_l and c in b_l]
    left = [c for c in out if c in a_l and c not in b_l]
    right = [c for c in out if c in b_l and c not in a_l]
    contract = [c for c in a_l if c in b_l and c not in out]
    if set(out) - set(batch + left + right):
        return None

    def size(t, labels, ls):
        dims = [_dim(tf, t, labels.index(c)) for c in ls]
        total = 1
        for dd in dims:
            total = total * dd
        return dims, total

    xt = tf.transpose(x, [a_l.index(c) for c in batch + left + contract])
    yt = tf.transpose(y, [b_l.index(c) for c in batch + contract + right])
    bdims, _ = size(x, a_l, batch)
    _, ln = size(x, a_l, left)
    ldims, _ = size(x, a_l, left)
    _, kn = size(x, a_l, contract)
    rdims, rn = size(y, b_l, right)
    xm = tf.reshape(xt, [-1, ln, kn])
    ym = tf.reshape(yt, [-1, kn, rn])
    z = tf.matmul(xm, ym)
    z = tf.reshape(z, list(bdims) + list(ldims) + list(rdims))
    order = batch + left + right
    perm = [order.index(c) for c in out]
    return z if perm == list(range(len(perm))) else tf.transpose(z, perm)


def _note(applied, text):
    if text not in applied:
        applied.append(text)


def _unroll_rnns(model, applied):
    import keras

    saved = []
    for layer in _layers(model):
        if isinstance(layer, keras.layers.RNN) and not layer.unroll:
            steps = None
            try:
                steps = layer.input.shape[1] if not isinstance(layer.input, list) else layer.input[0].shape[1]
            except (AttributeError, ValueError):
                steps = None
            if steps is not None and steps <= MAX_UNROLL_STEPS:
                saved.append((layer, layer.unroll))
                layer.unroll = True
                _note(applied, f"{type(layer).__name__} '{layer.name}' unrolled over {steps} steps")
        elif isinstance(layer, keras.layers.Bidirectional):
            for sub in (layer.forward_layer, layer.backward_layer):
                if not sub.unroll:
                    saved.append((sub, sub.unroll))
                    sub.unroll = True
            _note(applied, f"Bidirectional '{layer.name}' unrolled")
    return saved


def _layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)
