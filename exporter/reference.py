"""The reference: the Keras model itself, called with named inputs, answering named outputs.

Core, not a runtime adapter: it needs the loader, and runtimes/ must stay importable without the
core (generated servers copy them).
"""

from __future__ import annotations

import numpy as np


class KerasSession:
    def __init__(self, model_or_path, signature=None):
        from .loader import load_model, signature_of

        if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "__fspath__"):
            model_or_path = load_model(model_or_path)
        self.model = model_or_path
        self.signature = signature or signature_of(self.model)

    def predict(self, inputs):
        sig = self.signature
        if sig.dict_inputs:
            x = {n: inputs[n] for n in sig.input_names}
        else:
            x = [inputs[n] for n in sig.input_names]
            x = x[0] if len(x) == 1 else x
        if any(np.asarray(v).dtype.kind in "USO" for v in inputs.values()):
            # model.predict refuses every NumPy string dtype ("Invalid dtype: str160"): tf.string tensors
            import tensorflow as tf

            import keras

            y = keras.tree.map_structure(lambda v: np.asarray(v), self.model(keras.tree.map_structure(
                lambda v: tf.constant(v) if np.asarray(v).dtype.kind in "USO" else v, x), training=False))
        else:
            y = self.model.predict(x, verbose=0, batch_size=64)
        if isinstance(y, dict):
            return {n: np.asarray(y[n]) for n in sig.output_names}
        y = y if isinstance(y, (list, tuple)) else [y]
        return {n: np.asarray(v) for n, v in zip(sig.output_names, y)}

    def close(self):
        pass
