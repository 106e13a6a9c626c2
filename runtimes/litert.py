"""LiteRT (ai_edge_litert), the TFLite interpreter a phone or a Raspberry Pi runs.

Verified in a child process without TensorFlow (`isolate = True`): when TensorFlow is imported
in the same process, LiteRT silently gains its Flex delegate and runs TF ops a device cannot.
"""

from __future__ import annotations

import numpy as np

from .base import Runtime, module_missing, register_runtime, run_in_batches


@register_runtime
class LiteRTRuntime(Runtime):
    name = "litert"
    isolate = True
    install_hint = "pip install ai-edge-litert"
    # What a generated server (target `flask`) takes from this runtime (see onnxruntime_runtime.py);
    # the interpreter is not thread-safe, so the server serialises calls to one session.
    server = {"artifact_target": "tflite", "files": ("litert.py",), "requirements": ("ai-edge-litert",),
              "thread_safe": False, "platform": "tensorflow_lite"}

    def available(self):
        return module_missing("ai_edge_litert", "ai-edge-litert")

    def load(self, path, **options):
        return LiteRTSession(str(path), num_threads=options.get("num_threads"))


class LiteRTSession:
    def __init__(self, path: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_path=path, num_threads=num_threads)
        except (RuntimeError, ValueError) as e:
            raise RuntimeError(f"{path}: LiteRT cannot load the model: {str(e).splitlines()[0]}") from e
        # Fail at load, not at the first call, for ops this interpreter lacks (Flex). A model with
        # free dimensions besides the batch (sizes -1) is prepared at each call instead, at the
        # caller's sizes: at the placeholder size 1 a strided valid conv has no output.
        free = any(-1 in list(d["shape_signature"])[1:] for d in self.interp.get_input_details())
        try:
            if not free:
                self.interp.allocate_tensors()
        except RuntimeError as e:
            raise RuntimeError(f"{path}: LiteRT cannot prepare the model: {' '.join(str(e).split())[:400]}") from e
        sigs = self.interp.get_signature_list()
        if "serving_default" not in sigs:
            raise RuntimeError(f"{path}: no 'serving_default' signature (found {list(sigs)})")
        self.runner = self.interp.get_signature_runner("serving_default")
        details = self.runner.get_input_details()
        self.in_dtypes = {k: d["dtype"] for k, d in details.items()}
        self.in_quant = {k: d.get("quantization", (0.0, 0)) for k, d in details.items()}
        self.out_quant = {k: d.get("quantization", (0.0, 0)) for k, d in self.runner.get_output_details().items()}
        # A fixed batch dimension (e.g. 1) is served row by row.
        sig_batch = {d["shape_signature"][0] if len(d["shape_signature"]) else -1 for d in details.values()}
        self.batch = None if -1 in sig_batch else min(sig_batch)

    def _run(self, inputs):
        feed = {}
        for k, dt in self.in_dtypes.items():
            x = np.asarray(inputs[k])
            scale, zero = self.in_quant[k]
            if np.issubdtype(dt, np.integer) and scale:  # quantized input
                x = np.clip(np.round(x / scale + zero), np.iinfo(dt).min, np.iinfo(dt).max)
            feed[k] = _utf8(x) if x.dtype.kind in "UO" and not np.issubdtype(dt, np.number) else x.astype(dt)
        out = self.runner(**feed)
        res = {}
        for k, v in out.items():
            scale, zero = self.out_quant.get(k, (0.0, 0))
            res[k] = (v.astype(np.float32) - zero) * scale if (scale and np.issubdtype(v.dtype, np.integer)) else v
        return res

    def predict(self, inputs):
        return run_in_batches(self._run, inputs, self.batch)

    def close(self):
        pass


def _utf8(x: np.ndarray) -> np.ndarray:
    """A string tensor as LiteRT takes it: UTF-8 bytes (numpy's astype(bytes_) is ASCII only)."""
    flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in x.reshape(-1)]
    return np.array(flat, dtype=object).reshape(x.shape)
