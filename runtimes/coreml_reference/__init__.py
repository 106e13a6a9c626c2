"""Runtime `coreml-reference`: executes a CoreML ML Program with NumPy, on any OS.

Core ML prediction exists only on macOS, so on Linux nothing checks what a converted model
computes. This interpreter loads the program with coremltools' milproto loader and runs every
op with the semantics of the MIL op reference, rounding each tensor to the precision the program
declares (fp16 programs show their fp16 error). An op it does not know raises
`runtimes.base.UnsupportedOp`, which parity reports as `skipped`, naming the op.

Only NumPy is imported here; coremltools is imported when a model is loaded.
"""

from __future__ import annotations

import numpy as np

from ..base import Runtime, module_missing, register_runtime, run_in_batches
from . import ops_constexpr, ops_elementwise, ops_nn, ops_resize, ops_tensor  # noqa: F401  (each registers its ops)
from .program import NotMLProgram, Program, load_program  # noqa: F401
from .registry import OPS  # noqa: F401


@register_runtime
class CoreMLReferenceRuntime(Runtime):
    name = "coreml-reference"
    install_hint = "pip install coremltools (only its model loader is used)"

    def available(self):
        return module_missing("coremltools", "coremltools")

    def load(self, path, **options):
        return ReferenceSession(str(path), **options)


class ReferenceSession:
    """Named Keras-domain arrays in, named arrays out.

    Options (from the artifact): `batch` (the program's fixed batch; larger inputs are served
    in chunks) and `image_inputs` ({name: {"scale", "bias"}}): an image input receives pixel
    values, so the Keras tensor x is mapped to the pixels an app would pass, (x - bias) / scale,
    in the program's channel-first layout; the program itself applies scale and bias.
    """

    def __init__(self, path: str, batch: int | None = 1, image_inputs: dict | None = None):
        try:
            self.program = load_program(path)
        except NotMLProgram as e:
            raise RuntimeError(f"{e}; coreml-reference executes ML Programs only") from e
        self.batch = batch
        self.image_inputs = image_inputs or {}
        self.predicted = self.program.description.get("predicted_feature")

    def _feed(self, name, x):
        shape, _ = self.program.inputs[name]
        if name not in self.image_inputs:
            return x
        opts = self.image_inputs[name]
        x = np.asarray(x, np.float32)
        if x.shape[1:] != tuple(shape[1:]):  # Keras channels-last -> CoreML image (N, C, H, W)
            x = np.transpose(x, (0, 3, 1, 2))
        bias = np.asarray(opts.get("bias", [0.0]), np.float32).reshape(1, -1, 1, 1)
        return (x - bias) / np.float32(opts.get("scale", 1.0))

    def _run(self, inputs):
        feeds = {n: self._feed(n, inputs[n]) for n in self.program.inputs}
        out = self.program.run(feeds)
        res = {}
        for name, val in out.items():
            if name == self.predicted:
                continue  # the class label: checked against the probabilities below
            if isinstance(val, dict):  # classifier probabilities {label: p}, in label order
                arr = np.asarray([list(val.values())], np.float32)
                label = out.get(self.predicted)
                if label is not None and label != list(val)[int(arr.argmax())]:
                    raise RuntimeError(f"classLabel {label!r} is not the most probable class")
                val = arr
            res[name] = np.asarray(val)
        return res

    def predict(self, inputs):
        return run_in_batches(self._run, inputs, self.batch)

    def close(self):
        pass
