"""Make random-weight models non-degenerate, so that parity on them proves something.

A `keras.applications` model built with `weights=None` keeps BatchNorm's initial moving
statistics (mean 0, variance 1): activations shrink towards zero through the network and the
softmax comes out exactly uniform, so *any* runtime "matches". Setting each BatchNorm's moving
mean/variance from a seeded calibration batch restores realistic activation scales.

The calibration batch is drawn in the range the model's own preprocessing implies, exactly as
the reference inputs are (exporter/reference_data.py): raw 0..255 pixels behind a
`Rescaling(1/255)` first layer (EfficientNet, MobileNetV3), around a Normalization's mean/std
(ConvNeXt). Statistics taken on any other range are those of a different network: EfficientNetB0
calibrated on [-1, 1] and then fed 0..255 pixels grew its activations 250-fold per block, past
float16's 65504 (non-finite outputs in an fp16 Core ML program and in Keras under a float16
policy alike). An input the model says nothing about is drawn in [-1, 1], the range of
keras.applications' "tf" preprocessing done outside the model.

Example:
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    calibrate_batchnorm(model, seed=0)
"""

from __future__ import annotations

import dataclasses

import numpy as np

# an input without in-model preprocessing: [-1, 1], keras.applications' "tf" mode
UNSCALED = (-1.0, 1.0)


def calibration_inputs(model, *, seed: int = 0, samples: int = 8) -> dict:
    """{input name: seeded batch} in the range the model's first preprocessing layers imply."""
    from .loader import signature_of
    from .reference_data import reference_inputs

    sig = signature_of(model)
    specs = tuple(_with_range(t) for t in sig.inputs)
    return reference_inputs(dataclasses.replace(sig, inputs=specs), samples, seed, model=model)


def _with_range(spec):
    preprocessed = spec.low is not None or spec.mean is not None
    if preprocessed or "float" not in spec.dtype:
        return spec
    return dataclasses.replace(spec, low=UNSCALED[0], high=UNSCALED[1])


def calibrate_batchnorm(model, batch=None, *, seed: int = 0, samples: int = 8):
    """Set every BatchNormalization's moving statistics from one forward pass on `batch` (an
    array, or a dict by input name); by default `calibration_inputs(model)`.

    With momentum 0, a training-mode call replaces each layer's moving mean/variance by the
    statistics of its own input, layer after layer, in a single pass.
    """
    import keras

    if batch is None:
        batch = calibration_inputs(model, seed=seed, samples=samples)
        batch = next(iter(batch.values())) if len(batch) == 1 else batch
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
