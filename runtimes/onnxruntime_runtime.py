"""onnxruntime on the CPU."""

from __future__ import annotations

import numpy as np

from .base import Runtime, module_missing, register_runtime

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_,
              "tensor(string)": np.str_}


@register_runtime
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    install_hint = "pip install onnxruntime"
    # What a generated server (target `flask`) takes from this runtime: the artifact of the
    # `onnx` target, this module (copied with base.py), its pip distributions; one session may
    # be called from several threads at once; the v2 protocol's platform name.
    server = {"artifact_target": "onnx", "files": ("onnxruntime_runtime.py",), "requirements": ("onnxruntime",),
              "thread_safe": True, "platform": "onnxruntime_onnx"}

    def available(self):
        return module_missing("onnxruntime", "onnxruntime")

    def load(self, path, **options):
        return OnnxSession(str(path), options.get("num_threads"))


class OnnxSession:
    def __init__(self, path: str, num_threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if num_threads:
            so.intra_op_num_threads = num_threads
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def predict(self, inputs):
        feed = {k: np.asarray(inputs[k]).astype(dt) for k, dt in self.inputs.items()}
        return dict(zip(self.outputs, self.sess.run(self.outputs, feed)))

    def close(self):
        pass
