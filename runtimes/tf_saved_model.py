"""TensorFlow's own SavedModel loader, through the `serving_default` signature (as TF-Serving)."""

from __future__ import annotations

import numpy as np

from .base import Runtime, module_missing, register_runtime


@register_runtime
class TFSavedModelRuntime(Runtime):
    name = "tf-saved-model"
    install_hint = "pip install tensorflow"

    def available(self):
        return module_missing("tensorflow", "tensorflow")

    def load(self, path, **options):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
        specs = fn.structured_input_signature[1]

        class _S:
            def predict(self, inputs):
                feed = {k: tf.constant(np.asarray(inputs[k]), dtype=s.dtype) for k, s in specs.items()}
                return {k: v.numpy() for k, v in fn(**feed).items()}

            def close(self):
                pass

        s = _S()
        s._keep = loaded  # the signature needs its object graph alive
        return s
