"""Make random-weight models non-degenerate, so that parity on them proves something.

A `keras.applications` model built with `weights=None` keeps BatchNorm's initial moving
statistics (mean 0, variance 1): activations shrink towards zero through the network and the
softmax comes out exactly uniform, so *any* runtime "matches". Setting each BatchNorm's moving
mean/variance from a seeded calibration batch restores realistic activation scales.

Example:
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    calibrate_batchnorm(model, seed=0)
"""

from __future__ import annotations

import numpy as np


def calibrate_batchnorm(model, batch: np.ndarray | None = None, *, seed: int = 0, samples: int = 8):
    """Set every BatchNormalization's moving statistics from one forward pass on `batch`.

    With momentum 0, a training-mode call replaces each layer's moving mean/variance by the
    statistics of its own input, layer after layer, in a single pass.
    """
    import keras

    if batch is None:
        rng = np.random.default_rng(seed)
        shape = (samples,) + tuple(model.inputs[0].shape[1:])
        batch = rng.random(shape, dtype=np.float64).astype("float32") * 2.0 - 1.0
    bns = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
        model(batch, training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return len(bns)


def application(name: str, input_shape=(96, 96, 3), *, seed: int = 0, calibrate: bool = True, **kwargs):
    """A keras.applications model with random (seeded) weights, calibrated unless told not to."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=input_shape, **kwargs)
    if calibrate:
        calibrate_batchnorm(model, seed=seed)
    return model


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)
