"""Runtime `coreml`: native Core ML prediction through coremltools, which exists only on macOS
(coremltools ships its `libcoremlpython` prediction bridge for macOS alone). Elsewhere it is
reported unavailable with that reason and `coreml-reference` verifies the artifact.
"""

from __future__ import annotations

import platform

import numpy as np

from .base import Runtime, module_missing, register_runtime, run_in_batches


@register_runtime
class CoreMLRuntime(Runtime):
    name = "coreml"
    install_hint = "run on macOS 12+ with pip install coremltools"

    def available(self):
        if platform.system() != "Darwin":
            return (f"Core ML prediction runs only on macOS (this is {platform.system()}); "
                    "coreml-reference verifies the program here")
        return module_missing("coremltools", "coremltools")

    def load(self, path, **options):
        return CoreMLSession(str(path), **options)


class CoreMLSession:
    """Core ML on macOS. Image inputs get a PIL image made from the pixels (x - bias) / scale, in
    the model's color layout; classifier outputs ({label: p}) become arrays in label order."""

    def __init__(self, path: str, batch: int | None = 1, image_inputs: dict | None = None):
        import coremltools as ct

        try:
            self.model = ct.models.MLModel(path, compute_units=ct.ComputeUnit.CPU_ONLY)
        except Exception as e:  # coremltools raises RuntimeError / Exception on compile failures
            raise RuntimeError(f"{path}: Core ML cannot load the model: {str(e).splitlines()[0]}") from e
        spec = self.model.get_spec()
        self.image_inputs = image_inputs or {}
        self.layouts = {}
        for f in spec.description.input:
            if f.type.WhichOneof("Type") == "imageType":
                self.layouts[f.name] = f.type.imageType.colorSpace  # 10 gray, 20 RGB, 30 BGR
        self.predicted = spec.description.predictedFeatureName or None
        self.batch = batch

    def _image(self, name, x):
        from PIL import Image

        opts = self.image_inputs.get(name, {})
        bias = np.asarray(opts.get("bias", [0.0]), np.float32)
        x = np.asarray(x, np.float32)[0]
        channels = 1 if self.layouts[name] == 10 else 3
        if x.shape[0] == channels and x.shape[-1] != channels:  # a channels-first Keras input
            x = np.transpose(x, (1, 2, 0))
        pix = (x - bias) / np.float32(opts.get("scale", 1.0))  # (H, W, C)
        pix = np.clip(np.round(pix), 0, 255).astype(np.uint8)
        if self.layouts[name] == 10:
            return Image.fromarray(pix[..., 0], "L")
        if self.layouts[name] == 30:  # the model's channels are B, G, R: build the RGB image they come from
            pix = pix[..., ::-1]
        return Image.fromarray(np.ascontiguousarray(pix), "RGB")

    def _run(self, inputs):
        feed = {k: (self._image(k, v) if k in self.layouts else np.asarray(v)) for k, v in inputs.items()}
        out = self.model.predict(feed)
        res = {}
        for k, v in out.items():
            if k == self.predicted:
                continue
            res[k] = np.asarray([list(v.values())], np.float32) if isinstance(v, dict) else np.asarray(v)
        return res

    def predict(self, inputs):
        return run_in_batches(self._run, inputs, self.batch)

    def close(self):
        pass
