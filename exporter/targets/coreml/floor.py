"""The model's own float16 floor: how far Keras itself moves when it computes in float16.

An fp16 Core ML program stores every tensor in half precision (11-bit mantissa): its error
against the float32 model is set by the model as much as by the conversion. Where a softmax
decides between two classes with large logits the model cannot do better in float16: a
random-weight ResNet50 has logits of magnitude ~500, where float16 numbers are 0.25 apart, and a
logit error e moves a probability p by p(1-p)e, up to e/4 near p = 0.5. Measured on it (224x224,
docs/coreml.md): CoreML fp16 logits off by 0.25-0.40, Keras' own under mixed_float16 by 0.42-0.54
and under float16 by 0.77-1.04 — the same error, the program is not wrong.

So the fp16 program is held to the documented fp16 bound on every sample, and a sample it gets
wrong is excused only where the model itself explains it (exporter/parity.py): Keras is run
REALIZATIONS times in float16 on the reference inputs (the mixed_float16 and float16 dtype
policies, on the inputs as given and moved by one float16 ulp with seeded random signs); a sample
beyond the bound on which Keras itself, computing in float16, moves an output by more than
1/FACTOR of that bound is ill-conditioned *for this program*: left out of the verdict and counted
(`ill_conditioned`), `uninformative` when none is left. The tolerance is never raised, and a
sample within the bound always counts (Keras' float16 policies can be far worse than a Core ML
program: on the wine model, whose inputs reach ~1700, they move the softmax by up to 0.998 while
the program stays within 0.0024).

Why FACTOR 4 with 4 runs: near a tie the output error is essentially one Gaussian variable (the
difference of two logit errors); the program's draw exceeds FACTOR times the largest of R Keras
draws with probability about (0.8 / FACTOR) ** R (0.8 ~ the half-normal density near 0 times
its scale): 0.16 % for 4 and 4. With the two policies alone (R = 2) a ResNet50 sample measured a
ratio of 5.7 (CoreML 0.026 against Keras 0.0046), which a factor fitted to two runs misses.

A run whose outputs are not finite means float16 overflows (max 65504) somewhere in the model:
`first_overflow` finds the op of the fp16 program that overflows first, named after its layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

POLICIES = ("mixed_float16", "float16")
NUDGES = (False, True)  # the inputs as given, and moved by one float16 ulp
REALIZATIONS = len(POLICIES) * len(NUDGES)
FACTOR = 4.0
SEED = 16
FP16_MAX = float(np.finfo(np.float16).max)
METADATA_KEY = "kexport.float16_floor"


@dataclass
class Floor:
    """Per output: `floor` (largest |Keras in float16 - Keras in float32|), `scale` (max|Keras|);
    `overflow`: (reference set index, sample index) of a run with non-finite outputs, or None."""

    floor: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)
    overflow: tuple | None = None
    # per reference set (the main one, then each alternate size): {output: [per-sample deviation]}
    samples: list = field(default_factory=list)
    runs: int = 0
    reason: str | None = None  # why the floor could not be measured (a model Keras cannot clone)

    def to_metadata(self) -> str:
        return json.dumps({"floor": self.floor, "scale": self.scale, "runs": self.runs, "factor": FACTOR,
                           "samples": self.samples})

    @classmethod
    def from_metadata(cls, text: str | None) -> "Floor | None":
        if not text:
            return None
        d = json.loads(text)
        return cls({k: float(v) for k, v in d["floor"].items()}, {k: float(v) for k, v in d["scale"].items()},
                   runs=int(d.get("runs", 0)), samples=d.get("samples") or [])


def measure(ctx) -> Floor:
    """The float16 floor of ctx.model on the reference data (and its second input size)."""
    from ...errors import first_line
    from ...reference import KerasSession

    sets = [(ctx.inputs, ctx.outputs)] + list(getattr(ctx.outputs, "alternates", ()) or ())
    out = Floor()
    for name, ref in ctx.outputs.items():
        if np.asarray(ref).dtype.kind == "f":
            out.scale[name] = float(np.max(np.abs(np.asarray(ref, np.float64))))
            out.floor[name] = 0.0
    if not out.floor:
        return out
    out.samples = [{name: [0.0] * len(np.asarray(ref[name])) for name in out.floor} for _, ref in sets]
    rng = np.random.default_rng(SEED)
    for policy in POLICIES:
        try:
            session = KerasSession(in_policy(ctx.model, policy), ctx.signature)
            runs = [[session.predict(_nudged(x, rng) if nudge else x) for x, _ in sets] for nudge in NUDGES]
        except Exception as e:  # a layer Keras cannot rebuild or run in float16: the documented bound
            return Floor(reason=f"Keras could not run the model under the {policy} policy: {first_line(e)}")
        for got in runs:
            for s, (y, (_, ref)) in enumerate(zip(got, sets)):
                _one_run(y, ref, s, out)
            out.runs += 1
    return out


def _one_run(got: dict, ref: dict, s: int, out: Floor) -> None:
    for name in out.floor:
        y = np.asarray(got[name], np.float64)
        r = np.asarray(ref[name], np.float64)
        bad = ~np.isfinite(y).reshape(len(y), -1).all(axis=1)
        if bad.any() and out.overflow is None:
            out.overflow = (s, int(np.argmax(bad)))
        dev = np.where(bad, np.inf, np.nan_to_num(np.abs(y - r)).reshape(len(y), -1).max(axis=1))
        out.samples[s][name] = np.maximum(out.samples[s][name], dev).tolist()
        if (~bad).any():
            out.floor[name] = max(out.floor[name], float(np.max(dev[~bad])))


def _nudged(inputs: dict, rng) -> dict:
    """Float inputs moved by one float16 ulp, random signs: another rounding of the same data."""
    moved = {}
    for k, v in inputs.items():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            step = np.abs(np.spacing(v.astype(np.float16))).astype(v.dtype)
            v = v + step * rng.choice(np.array([-1, 1], v.dtype), size=v.shape)
        moved[k] = v
    return moved


def in_policy(model, policy: str):
    """A copy of `model` whose layers compute under `policy`, with the same weights."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def conditioning(floor: Floor | None):
    """(per reference set {output: FACTOR x per-sample floor}, note) for exporter/parity.py: a
    sample the program gets wrong is excused where its entry exceeds the documented bound too."""
    if floor is None or not floor.samples:
        return None, None
    noise = [{k: FACTOR * np.asarray(v, np.float64) for k, v in per.items()} for per in floor.samples]
    return noise, (f"fp16: a sample beyond the bound is excused (ill-conditioned) only where Keras itself computing "
                   f"in float16 ({floor.runs} runs: {' and '.join(POLICIES)} policies, inputs as given and moved by one "
                   f"float16 ulp) moves beyond 1/{FACTOR:g} of the bound (docs/coreml.md)")


def first_overflow(program_path: str, sample: dict, layer_names) -> str | None:
    """'layer (op): |x| reaches V' for the first op of the fp16 program whose result is not
    finite or beyond the float16 maximum on `sample` (one row per input), else None."""
    from kexport.runtimes.coreml_reference import load_program

    program = load_program(program_path)
    with np.errstate(all="ignore"):
        for step, results in program.trace(sample):
            for val in results.values():
                val = np.asarray(val)
                if val.dtype.kind != "f" or not val.size:
                    continue
                peak = float(np.max(np.abs(np.where(np.isnan(val), 0, val))))
                if not np.all(np.isfinite(val)) or peak > FP16_MAX:
                    layer = max((n for n in layer_names if n in step.name), key=len, default=None)
                    where = f"layer '{layer}' (op {step.op_type} {step.name})" if layer else f"op {step.op_type} {step.name}"
                    return f"{where}: its result exceeds {FP16_MAX:.0f}" if np.isinf(peak) or peak > FP16_MAX \
                        else f"{where}: its result is not a number"
    return None
