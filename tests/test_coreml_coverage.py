"""The CoreML reference interpreter covers every MIL op coremltools emits for Keras 3's built-in
layers: one small model per layer family is converted (fp32, so the comparison is strict), the
ops of each program are listed, and each program must run in coreml-reference and match Keras.

`python tests/test_coreml_coverage.py` prints the coverage table kept in docs/coreml.md; the
test fails when an emitted op is missing from the interpreter or from that table.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "coreml.md"


def families():
    """{family: (keras layer names, builder)} — builders return a functional model."""
    import keras
    from keras import layers as L

    def m1d():
        x = i = keras.Input((16, 3), name="x")
        x = L.Conv1D(4, 3, padding="same", dilation_rate=2)(x)
        x = L.SeparableConv1D(4, 3, padding="same")(x)
        x = L.DepthwiseConv1D(3, padding="valid")(x)
        x = L.Conv1DTranspose(4, 3, strides=2, padding="same")(x)
        x = L.ZeroPadding1D(2)(x)
        x = L.Cropping1D((1, 2))(x)
        x = L.UpSampling1D(2)(x)
        x = L.MaxPooling1D(2)(x)
        x = L.AveragePooling1D(2, padding="same")(x)
        a, b = L.GlobalMaxPooling1D()(x), L.GlobalAveragePooling1D()(x)
        return keras.Model(i, L.Concatenate(name="y")([a, b]))

    def m2d():
        x = i = keras.Input((12, 12, 3), name="x")
        x = L.Conv2D(4, 3, padding="same", dilation_rate=2)(x)
        x = L.SeparableConv2D(4, 3, padding="same")(x)
        x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x)
        x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
        x = L.Conv2DTranspose(4, 2, strides=2, padding="valid")(x)
        x = L.ZeroPadding2D(((1, 0), (2, 1)))(x)
        x = L.Cropping2D(((1, 1), (0, 2)))(x)
        x = L.MaxPooling2D(2)(x)
        x = L.AveragePooling2D(3, strides=2, padding="same")(x)
        u = L.UpSampling2D(2, interpolation="bilinear")(x)
        u = L.UpSampling2D(2, interpolation="nearest")(u)
        r = L.Resizing(10, 7)(u)
        r = L.Resizing(5, 9, interpolation="nearest")(r)
        c = L.CenterCrop(4, 6)(r)
        return keras.Model(i, L.Concatenate(name="y")([L.GlobalMaxPooling2D()(c), L.GlobalAveragePooling2D()(u)]))

    def m3d():
        x = i = keras.Input((4, 8, 8, 2), name="x")
        x = L.Conv3D(4, 3, padding="same")(x)
        x = L.Conv3DTranspose(3, 2, strides=(1, 2, 2), padding="same")(x)
        x = L.ZeroPadding3D(1)(x)
        x = L.Cropping3D(((1, 1), (1, 1), (0, 2)))(x)
        x = L.MaxPooling3D(2)(x)
        x = L.AveragePooling3D((1, 2, 2))(x)
        return keras.Model(i, L.GlobalAveragePooling3D(name="y")(x))

    def norm():
        x = i = keras.Input((6, 8), name="x")
        x = L.Normalization(mean=0.5, variance=0.1)(x)
        x = L.Rescaling(0.5, offset=0.1)(x)
        x = L.BatchNormalization(moving_mean_initializer="random_normal", moving_variance_initializer="ones")(x)
        x = L.LayerNormalization()(x)
        x = L.GroupNormalization(groups=2)(x)
        x = L.UnitNormalization()(x)
        return keras.Model(i, L.Flatten(name="y")(x))

    def acts():
        # parallel branches, not a chain: 20 squashing layers in a row flatten the output
        i = keras.Input((10,), name="x")
        x = L.Dense(10)(i)
        branches = [L.Dense(4, activation=a)(x) for a in (
            "relu", "relu6", "sigmoid", "tanh", "softplus", "softsign", "elu", "selu", "gelu", "swish",
            "hard_sigmoid", "hard_swish", "mish", "exponential", "leaky_relu", "log_softmax", "silu")]
        branches += [L.LeakyReLU(0.1)(x), L.PReLU(alpha_initializer=keras.initializers.Constant(0.2))(x), L.ELU()(x),
                     L.ReLU(max_value=4.0, threshold=0.1, negative_slope=0.05)(x), L.Softmax()(x)]
        return keras.Model(i, L.Concatenate(name="y")(branches))

    def recurrent():
        x = i = keras.Input((5, 4), name="x")
        a = L.LSTM(4, return_sequences=True)(x)
        b = L.GRU(4, return_sequences=True, reset_after=True)(a)
        c = L.SimpleRNN(4, return_sequences=True)(b)
        d = L.Bidirectional(L.LSTM(3))(c)
        return keras.Model(i, L.Dense(3, name="y")(d))

    def attention():
        q = i = keras.Input((6, 8), name="x")
        x = L.MultiHeadAttention(2, 4)(q, q)
        x = L.Attention()([x, q])
        x = L.AdditiveAttention()([x, q])
        x = L.EinsumDense("abc,cd->abd", output_shape=(None, 5), bias_axes="d")(x)
        return keras.Model(i, L.Flatten(name="y")(x))

    def merge():
        x = i = keras.Input((4, 6), name="x")
        a, b = L.Dense(6)(x), L.Dense(6)(x)
        m = [L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b]),
             L.Maximum()([a, b]), L.Minimum()([a, b])]
        y = L.Concatenate(axis=-1)(m)
        y = L.Permute((2, 1))(y)
        y = L.Reshape((4, 36))(y)
        y = L.TimeDistributed(L.Dense(3))(y)
        d = L.Dot(axes=(2, 2))([y, y])
        f = L.Flatten()(d)
        r = L.RepeatVector(2)(f)
        return keras.Model(i, L.Flatten(name="y")(r))

    def embedding():
        i = keras.Input((7,), dtype="int32", name="x")
        return keras.Model(i, L.Flatten(name="y")(L.Embedding(20, 4)(i)))

    def tokens():
        i = keras.Input((7,), dtype="int32", name="x")
        return keras.Model(i, L.CategoryEncoding(20, output_mode="multi_hot", name="y")(i))

    return {
        "Conv1D, SeparableConv1D, DepthwiseConv1D, Conv1DTranspose, ZeroPadding1D, Cropping1D, UpSampling1D, MaxPooling1D, AveragePooling1D, GlobalMax/AveragePooling1D": m1d,
        "Conv2D, SeparableConv2D, DepthwiseConv2D, Conv2DTranspose, ZeroPadding2D, Cropping2D, MaxPooling2D, AveragePooling2D, UpSampling2D (bilinear, nearest), Resizing (bilinear, nearest), CenterCrop, GlobalMax/AveragePooling2D": m2d,
        "Conv3D, Conv3DTranspose, ZeroPadding3D, Cropping3D, MaxPooling3D, AveragePooling3D, GlobalAveragePooling3D": m3d,
        "Normalization, Rescaling, BatchNormalization, LayerNormalization, GroupNormalization, UnitNormalization": norm,
        "Dense with every activation, LeakyReLU, PReLU, ELU, ReLU, Softmax": acts,
        "LSTM, GRU, SimpleRNN, Bidirectional": recurrent,
        "MultiHeadAttention, Attention, AdditiveAttention, EinsumDense": attention,
        "Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Permute, Reshape, TimeDistributed, Dot, Flatten, RepeatVector": merge,
        "Embedding": embedding,
        "CategoryEncoding": tokens,
    }


# Families coremltools itself cannot convert (no interpreter op could change that).
KNOWN_REFUSED = {"CategoryEncoding": "DenseBincount"}


def convert_family(name, build, tmp: Path):
    """(sorted MIL op types, parity row, None) for one family converted at fp32, or
    ([], None, reason) when coremltools cannot take it (a converter limit, not an interpreter gap)."""
    import keras

    from kexport.api import build_context
    from kexport.errors import KexportError
    from kexport.options import ExportOptions
    from kexport.parity import check_artifact
    from kexport.runtimes.coreml_reference import load_program
    from kexport.targets import get_target
    from kexport.targets.coreml import CoreMLOptions

    keras.utils.set_random_seed(0)
    path = tmp / f"family_{abs(hash(name)) % 10**8}.keras"
    build().save(path)
    ctx = build_context(path, ExportOptions(samples=4))
    target = get_target("coreml")
    options = CoreMLOptions(precision="float32")
    problems = target.preflight(ctx, options)
    if problems:
        return [], None, "; ".join(problems)
    try:
        art = target.export(ctx, tmp / path.stem, options, "fp32")
    except KexportError as e:
        return [], None, str(e)
    ops = sorted({s.op_type for s in load_program(str(art.path)).steps})
    row = check_artifact(art, ["coreml-reference"], ctx.inputs, ctx.outputs, target.tolerance_for("fp32", options))[0]
    return ops, row, None


@pytest.fixture(scope="module")
def coverage(tmp_path_factory):
    pytest.importorskip("coremltools")
    tmp = tmp_path_factory.mktemp("coreml-coverage")
    return {name: convert_family(name, build, tmp) for name, build in families().items()}


def test_every_emitted_op_is_interpreted_and_matches_keras(coverage):
    from kexport.runtimes.coreml_reference import OPS

    for name, (ops, row, refused) in coverage.items():
        if refused:  # coremltools' own limit, listed in the table with its reason
            assert name in KNOWN_REFUSED and KNOWN_REFUSED[name] in refused, (name, refused)
            continue
        assert set(ops) <= set(OPS), (name, sorted(set(ops) - set(OPS)))
        assert row.status == "passed", (name, row.status, row.reason)


def test_coverage_table_in_docs_lists_every_op(coverage):
    text = DOC.read_text()
    missing = sorted({op for ops, _, _ in coverage.values() for op in ops if f"`{op}`" not in text})
    assert not missing, f"docs/coreml.md coverage table lacks {missing}; regenerate: python {Path(__file__).name}"


def table(coverage) -> str:
    lines = ["| Keras layers | MIL ops coremltools emits (fp32, iOS15) | max abs err |", "| --- | --- | --- |"]
    for name, (ops, row, refused) in coverage.items():
        if refused:
            lines.append(f"| {name} | coremltools refuses it: {refused} | - |")
        else:
            lines.append(f"| {name} | {', '.join(f'`{o}`' for o in ops)} | {row.max_abs_err:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as d:
        print(table({n: convert_family(n, b, Path(d)) for n, b in families().items()}))
