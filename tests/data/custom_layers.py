"""A custom layer for the --custom-objects tests. Its op (Erfinv) has no TFLite builtin and no
tf2onnx handler, so it also exercises the TF-ops and preflight paths."""

import keras


@keras.saving.register_keras_serializable(package="kexport_tests")
class InvErf(keras.layers.Layer):
    def call(self, x):
        return keras.ops.erfinv(keras.ops.clip(x * 0.5, -0.9, 0.9))


@keras.saving.register_keras_serializable(package="kexport_tests")
class CumProd(keras.layers.Layer):
    """Cumprod has no TFLite builtin but is a Flex (SELECT_TF_OPS) op."""

    def call(self, x):
        return keras.ops.cumprod(keras.ops.sigmoid(x), axis=-1)
