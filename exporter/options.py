"""Run options as a small frozen dataclass; per-target options are the targets' own dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExportOptions:
    """Options shared by every target.

    Example:
        ExportOptions(samples=16, target_options={"onnx": OnnxOptions(opset=18)})
    """

    safe_mode: bool = True
    custom_objects: str | None = None  # path to a .py file that defines custom layers
    inputs: str | None = None  # .npz with arrays named after the model inputs
    samples: int = 8  # reference samples when no --inputs
    verify: bool = True
    atol: float | None = None  # override every target's default tolerance
    rtol: float | None = None
    target_options: dict = field(default_factory=dict)  # target name -> its Options dataclass
    # input name -> full shape (batch first) for inputs with free dimensions: the size the
    # reference inputs are drawn at (`--input-shape image=1x224x224x3`)
    input_shapes: dict = field(default_factory=dict)
    # a target row that no runtime could check is `unverified` and fails the run unless allowed
    allow_unverified: bool = False
    # latency and throughput of every verified artifact in each runtime (docs/benchmarks.md)
    benchmark: bool = False
    # Quantized variants (docs/quantization.md): "int8", "int8,float16" or "all" (every variant of
    # each target); the data they are calibrated/measured on, and the gate's thresholds.
    quantize: str | None = None
    calibration: str | None = None  # .npz named after the inputs, or an image folder
    eval: str | None = None  # .npz with the inputs and `y` labels, or a folder of class folders
    min_agreement: float = 0.98  # top-1 agreement with Keras a variant needs
    max_accuracy_drop: float = 1.0  # accuracy points a variant may lose against Keras

    def for_target(self, target):
        opts = self.target_options.get(target.name) or target.Options()
        # API callers set `quantize` once; a target whose options carry it and leave it unset takes it.
        if self.quantize and not getattr(opts, "quantize", "absent"):
            import dataclasses

            opts = dataclasses.replace(opts, quantize=self.quantize)
        return opts
