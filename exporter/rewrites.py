"""Graph rewrites applied while tracing, for ops that converters mishandle on Keras 3.

Each rewrite keeps the math and only changes how TensorFlow expresses it:

- exact GELU: Keras 3 lowers it to `Erfc`, which tf2onnx, coremltools and TF.js reject; written
  as 0.5 * x * (1 + erf(x / sqrt(2))) instead (identical in exact arithmetic).
- grouped Conv2D (ConvNeXt, ResNeXt): Keras wraps it in a nested XLA-compiled function that
  tf2onnx and coremltools cannot take; lowered to split -> conv per group -> concat.
- recurrent layers with a known sequence length are unrolled, so no `While` loop reaches
  TFLite (which needs TF ops for it), coremltools (crashes on StatelessWhile) or TF.js.

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

    applied: list[str] = []
    orig_gelu, orig_conv, orig_depthwise = tfnn.gelu, tfnn.conv, tfnn.depthwise_conv

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
    tfnn.gelu, tfnn.conv = gelu, conv
    try:
        yield applied
    finally:
        tfnn.gelu, tfnn.conv = orig_gelu, orig_conv
        for layer, unroll in rnn_saved:
            layer.unroll = unroll


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
