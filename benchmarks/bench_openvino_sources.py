"""Which source converts more model families with `openvino.convert_model`: the SavedModel
serving signature kexport writes (rewritten or plain trace), the frozen GraphDef, or the verified
ONNX artifact (`kexport onnx`). The numbers in docs/openvino.md ("Which source").

    .venv/bin/python benchmarks/bench_openvino_sources.py [OUT_DIR] [MODEL ...]

Builds small models of the families in the generality issue (seeded, random weights) next to the
sample models, then, one child process per model: converts each source, compiles it for the CPU
at f32 precision, and checks Keras names, a free batch dimension, and the fp32 tolerance on the
reference inputs and again at batch 3 (free spatial dimensions at 19 x 23). Prints one JSON line
per model and a summary table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SAMPLES = ["digits_cnn.keras", "wine_mlp.keras", "token_lstm.keras", "two_in_two_out.keras", "iris_keras2.h5"]
SOURCES = ("savedmodel_rewritten", "savedmodel_plain", "frozen_graphdef", "onnx")


def build_families(out: Path) -> list[Path]:
    import keras
    from keras import layers as L

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)

    def save(m, name):
        m.save(out / f"{name}.keras")

    # conv
    i = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(8, 3, activation="tanh")(i); x = L.MaxPooling2D()(x); x = L.Conv2D(16, 3, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    save(keras.Model(i, L.Dense(10, activation="softmax", name="probs")(x)), "conv")
    # depthwise (MobileNetV2-style block after in-model preprocessing)
    i = keras.Input((32, 32, 3), name="pixels")
    x = L.Rescaling(1 / 127.5, offset=-1)(i)
    x = L.Conv2D(16, 3, strides=2, padding="same")(x); x = L.BatchNormalization()(x); x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same")(x); x = L.BatchNormalization()(x); x = L.ReLU(6.0)(x)
    x = L.Conv2D(24, 1)(x); x = L.GlobalAveragePooling2D()(x)
    m = keras.Model(i, L.Dense(5, activation="softmax")(x))
    from kexport.batchnorm_stats import calibrate_batchnorm
    calibrate_batchnorm(m, np.random.default_rng(0).random((8, 32, 32, 3)).astype("float32") * 255)
    save(m, "depthwise")
    # LSTM / GRU with masking
    i = keras.Input((12,), dtype="int32", name="tokens")
    x = L.Embedding(50, 16, mask_zero=True)(i)
    x = L.LSTM(16, return_sequences=True)(x); x = L.GRU(8)(x)
    save(keras.Model(i, L.Dense(3, activation="softmax")(x)), "rnn_masked")
    # attention
    i = keras.Input((10, 16), name="seq")
    a = L.MultiHeadAttention(num_heads=2, key_dim=8)(i, i)
    x = L.LayerNormalization()(L.Add()([i, a]))
    x = L.Dense(32, activation="gelu")(x)
    x = L.GlobalAveragePooling1D()(x)
    save(keras.Model(i, L.Dense(4, activation="softmax")(x)), "attention")
    # dict outputs
    i = keras.Input((6,), name="features")
    h = L.Dense(16, activation="relu")(i)
    save(keras.Model(i, {"risk": L.Dense(1, activation="sigmoid")(h), "cost": L.Dense(2)(h)}), "dict_out")
    # multi-IO siamese with a shared Sequential encoder
    enc = keras.Sequential([L.Dense(8, activation="relu"), L.Dense(4)], name="encoder")
    l, r = keras.Input((5,), name="left"), keras.Input((5,), name="right")
    el, er = enc(l), enc(r)
    d = L.Subtract()([el, er])
    save(keras.Model({"left": l, "right": r}, {"distance": L.Dense(1, name="distance")(d), "left_code": L.Identity(name="left_code")(el)}), "siamese")
    # free H x W fully convolutional
    i = keras.Input((None, None, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(i)
    x = L.Conv2D(2, 1, activation="softmax", name="mask")(x)
    save(keras.Model(i, x), "free_hw")
    # normalization (captured statistics) + tabular
    i = keras.Input((4,), name="x")
    n = L.Normalization(); n.adapt(np.random.default_rng(1).normal(3, 2, (64, 4)).astype("float32"))
    save(keras.Model(i, L.Dense(3, activation="softmax")(L.Dense(8, activation="relu")(n(i)))), "normalization")
    # conv3d
    i = keras.Input((8, 16, 16, 1), name="video")
    x = L.Conv3D(4, 3, activation="relu")(i); x = L.MaxPooling3D()(x); x = L.GlobalAveragePooling3D()(x)
    save(keras.Model(i, L.Dense(3, activation="softmax")(x)), "conv3d")
    # conv transpose + bilinear upsampling
    i = keras.Input((16, 16, 3), name="img")
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(i); x = L.UpSampling2D(interpolation="bilinear")(x)
    save(keras.Model(i, L.Conv2D(1, 1)(x)), "upsample")
    # ConvNeXt-style grouped conv + exact GELU + LayerNorm
    i = keras.Input((16, 16, 8), name="img")
    x = L.Conv2D(16, 3, padding="same", groups=4)(i)
    x = L.LayerNormalization()(x)
    x = L.Dense(16, activation=keras.activations.gelu)(x)  # exact gelu? keras gelu default approximate=False
    x = L.GlobalAveragePooling2D()(x)
    save(keras.Model(i, L.Dense(3, activation="softmax", name="cls")(x)), "grouped_gelu")
    # long GRU (sequence 40) no masking, return sequences
    i = keras.Input((40, 6), name="series")
    x = L.GRU(12, return_sequences=True)(i); x = L.LSTM(8)(x)
    save(keras.Model(i, L.Dense(1, name="forecast")(x)), "rnn_long")
    # mixed precision model
    keras.mixed_precision.set_global_policy("mixed_float16")
    i = keras.Input((12, 12, 3), name="img")
    x = L.Conv2D(8, 3, activation="relu")(i); x = L.GlobalAveragePooling2D()(x)
    save(keras.Model(i, L.Dense(4, activation="softmax", dtype="float32", name="p")(x)), "mixed16")
    keras.mixed_precision.set_global_policy("float32")

    return sorted(out.glob("*.keras"))


def _line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from") and "Check '" not in ln]
    return (lines[0] if lines else type(e).__name__)[:200]


def _run(ov_model, ctx) -> dict:
    import openvino as ov

    from kexport.reference import KerasSession

    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names_in = {n for p in compiled.inputs for n in p.get_names()}
    names_out = {n for p in compiled.outputs for n in p.get_names()}
    sig = ctx.signature
    rng = np.random.default_rng(5)
    second = {}
    for t in sig.inputs:  # batch 3, free dims at 19, 23, ...
        shape = (3,) + tuple((19 + 4 * i) if d is None else d for i, d in enumerate(t.shape[1:]))
        second[t.name] = (rng.integers(0, t.int_high or 10, size=shape).astype(t.dtype) if "int" in t.dtype
                          else rng.random(shape).astype(t.dtype))
    errs, problems = [], []
    for inputs, outputs in ((ctx.inputs, ctx.outputs), (second, KerasSession(ctx.model, sig).predict(second))):
        res = compiled(inputs)
        for name, ref in outputs.items():
            port = next((p for p in compiled.outputs if name in p.get_names()), None)
            if port is None:
                problems.append(f"no output named {name}")
                continue
            got = np.asarray(res[port])
            if got.shape != ref.shape:
                problems.append(f"{name}: shape {got.shape} != {ref.shape}")
                continue
            err = float(np.max(np.abs(got.astype(np.float64) - ref)))
            errs.append(err)
            if err > 1e-5 + 1e-4 * float(np.max(np.abs(ref))):
                problems.append(f"{name}: err {err:.2g}")
    if not set(sig.input_names) <= names_in:
        problems.append(f"inputs named {sorted(names_in)}")
    if not all(p.get_partial_shape()[0].is_dynamic for p in compiled.inputs):
        problems.append("batch dimension fixed")
    return {"ok": not problems, "max_abs_err": max(errs) if errs else None, "why": "; ".join(problems)}


def measure(model: Path, work: Path) -> dict:
    import openvino as ov

    from kexport.api import build_context
    from kexport.options import ExportOptions

    ctx = build_context(model, ExportOptions())

    def onnx():
        dest = work / "onnx" / model.stem
        proc = subprocess.run([sys.executable, "-m", "kexport", "onnx", str(model), "-o", str(dest)],
                              capture_output=True, text=True)
        if not (dest / "onnx" / "model.onnx").exists():
            raise RuntimeError("kexport onnx: " + ((proc.stdout + proc.stderr).strip().splitlines() or ["failed"])[-1])
        return ov.convert_model(str(dest / "onnx" / "model.onnx"))

    makers = {"savedmodel_rewritten": lambda: ov.convert_model(str(ctx.saved_model(rewrite=True)[0])),
              "savedmodel_plain": lambda: ov.convert_model(str(ctx.saved_model(rewrite=False)[0])),
              "frozen_graphdef": lambda: ov.convert_model(ctx.frozen_graph(rewrite=True)[0]),
              "onnx": onnx}
    row = {"model": model.stem}
    for source, make in makers.items():
        try:
            ov_model = make()
        except Exception as e:  # a converter refusing the model is a result here
            row[source] = {"ok": False, "why": "convert: " + _line(e)}
            continue
        try:
            row[source] = _run(ov_model, ctx)
        except Exception as e:
            row[source] = {"ok": False, "why": "run: " + _line(e)}
    return row


def main(out: Path, only: list[str]) -> None:
    models = [ROOT / "sample_models" / s for s in SAMPLES]
    proc = subprocess.run([sys.executable, __file__, "--build", str(out / "models")], check=True)
    models += sorted((out / "models").glob("*.keras"))
    if only:
        models = [m for m in models if m.stem in only]
    rows = []
    for m in models:
        proc = subprocess.run([sys.executable, __file__, "--measure", str(m), str(out)], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(line[-1]) if line else {"model": m.stem, "error": (proc.stderr.strip().splitlines() or ["died"])[-1]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("| source | passed | of |")
    print("|---|---|---|")
    for s in SOURCES:
        print(f"| {s} | {sum(1 for r in rows if r.get(s, {}).get('ok'))} | {len(rows)} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        build_families(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        args = sys.argv[1:]
        main(Path(args[0]) if args else Path("/tmp/kexport-bench-openvino-sources"), args[1:])
