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

    def for_target(self, target):
        return self.target_options.get(target.name) or target.Options()
