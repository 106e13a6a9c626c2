"""The model's interface, derived once from the loaded model and used by every target.

Kept free of TensorFlow so that runtimes and generated servers can read it from report.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # None for the free batch dimension (and any other free dimension)
    dtype: str  # numpy dtype name, e.g. "float32", "int32"
    # For integer inputs: values must lie in [0, int_high) (e.g. an Embedding's input_dim).
    int_high: int | None = None
    # For float inputs that feed a Normalization layer: its per-feature mean and std, so that
    # reference data lands where the model works (not saturated far outside the training range).
    mean: tuple | None = None
    std: tuple | None = None
    # For float inputs behind a Rescaling layer: the raw range it maps onto [0, 1] or [-1, 1]
    # (0..255 pixels for Rescaling(1/255) or Rescaling(1/127.5, offset=-1)).
    low: float | None = None
    high: float | None = None
    # For string inputs feeding a StringLookup: its vocabulary (reference strings come from it).
    vocabulary: tuple | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for k in ("int_high", "mean", "std", "low", "high", "vocabulary"):
            if d[k] is None:
                d.pop(k)
            elif k in ("mean", "std", "vocabulary"):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        opt = lambda k: tuple(d[k]) if d.get(k) is not None else None  # noqa: E731
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d.get("int_high"), opt("mean"), opt("std"),
                   d.get("low"), d.get("high"), opt("vocabulary"))


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # True when the Keras model takes a dict of inputs (keys = input names), else a list.
    dict_inputs: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, d: dict) -> "ModelSignature":
        return cls(
            tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            tuple(TensorSpec.from_json(t) for t in d["outputs"]),
        )
