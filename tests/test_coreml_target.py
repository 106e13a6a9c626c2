"""The CoreML target end to end, verified by coreml-reference: fp32 strict parity on every sample
model, the recurrent/attention layers and MobileNetV2/ResNet50; fp16 and compressed variants;
image inputs, classifiers, metadata, deployment targets, the legacy format, and bad input.

Conversions are the slow part (3..60 s each): each model is converted once per variant.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MODELS
from kexport.api import build_context
from kexport.errors import UsageError
from kexport.options import ExportOptions
from kexport.parity import check_artifact
from kexport.targets import get_target
from kexport.targets.coreml import FP32, CoreMLOptions

pytest.importorskip("coremltools")
TARGET = get_target("coreml")
REF = "coreml-reference"


def export_and_check(ctx, variant="fp32", tmp=None, **opts):
    options = CoreMLOptions(precision="float32" if variant == "fp32" else "float16", **opts)
    art = TARGET.export(ctx, Path(tmp or tempfile.mkdtemp(prefix="kexport-coreml-test-")), options, variant)
    noise, note = TARGET.conditioning(art)
    row = check_artifact(art, [REF], ctx.inputs, ctx.outputs, TARGET.tolerance_for(variant, options),
                         noise=noise, note=note)[0]
    return art, row


def spec_of(path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def save(model, tmp_path_factory, name):
    path = tmp_path_factory.mktemp("coreml-models") / f"{name}.keras"
    model.save(path)
    return path


# ---- fp32: strict parity ------------------------------------------------------------------------

def test_fp32_tolerance_is_the_issue_bound():
    assert (FP32.atol, FP32.rtol) == (1e-6, 1e-4)


@pytest.mark.parametrize("name", sorted(SAMPLE_MODELS))
def test_fp32_sample_models(name):
    ctx = build_context(SAMPLE_MODELS[name], ExportOptions())
    art, row = export_and_check(ctx, "fp32")
    assert row.status == "passed", row.reason
    assert row.max_rel_err <= 1e-4
    spec = spec_of(art.path)
    assert [i.name for i in spec.description.input] == ctx.signature.input_names
    assert sorted(o.name for o in spec.description.output) == sorted(ctx.signature.output_names)


@pytest.fixture(scope="module")
def sequence_ctx(tmp_path_factory):
    """Embedding, LayerNormalization, MultiHeadAttention, exact GELU, GRU and LSTM in one model."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((12,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(30, 16)(inp)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Add()([h, keras.layers.MultiHeadAttention(2, 8)(h, h)])
    h = keras.layers.Dense(16, activation="gelu")(h)  # exact GELU -> Erfc in TF
    h = keras.layers.GRU(8, return_sequences=True)(h)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.LSTM(8)(h))
    path = save(keras.Model(inp, out), tmp_path_factory, "sequence")
    return build_context(path, ExportOptions())


def test_recurrent_attention_model_fp32_and_rewrites(sequence_ctx):
    art, row = export_and_check(sequence_ctx, "fp32")
    assert row.status == "passed", row.reason
    notes = " | ".join(art.notes)
    for what in ("GRU", "LSTM", "exact GELU"):
        assert what in notes, notes


def test_standalone_batchnorms_stay_exact(tmp_path_factory, monkeypatch):
    """coremltools' fuse_elementwise_to_batchnorm adds epsilon to a unit variance (1/sqrt(1+1e-5)
    per layer); kexport removes the pass. If this starts passing without the workaround, the
    vendor fixed it and the workaround can go."""
    import coremltools as ct
    import keras

    from kexport.batchnorm_stats import calibrate_batchnorm

    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3), name="img")
    h = keras.layers.Conv2D(8, 3, padding="same")(inp)
    for _ in range(30):  # BatchNorms that cannot fold into a conv (DenseNet's pre-activation)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    model = keras.Model(inp, keras.layers.Dense(3, name="y")(keras.layers.GlobalAveragePooling2D()(h)))
    calibrate_batchnorm(model, seed=0)
    ctx = build_context(save(model, tmp_path_factory, "bn_stack"), ExportOptions())
    _, row = export_and_check(ctx, "fp32")
    assert row.status == "passed", row.reason
    monkeypatch.setattr(ct.PassPipeline, "remove_passes", lambda self, names: None)
    _, vendor = export_and_check(ctx, "fp32")
    assert vendor.status == "failed", "coremltools no longer needs the workaround"


# ---- keras.applications, random weights with calibrated BatchNorm ------------------------------

@pytest.fixture(scope="module")
def app_ctx(tmp_path_factory):
    from kexport.batchnorm_stats import application

    cache = {}

    def get(name, size):
        if name not in cache:
            path = save(application(name, (size, size, 3), seed=1), tmp_path_factory, name)
            cache[name] = build_context(path, ExportOptions(samples=2))
        return cache[name]

    return get


@pytest.mark.slow
def test_mobilenetv2_fp32_and_float16(app_ctx):
    ctx = app_ctx("MobileNetV2", 224)
    _, row = export_and_check(ctx, "fp32")
    assert row.status == "passed", row.reason  # not "uninformative": calibrated BatchNorm
    _, row16 = export_and_check(ctx, "float16")
    assert row16.status == "passed", row16.reason
    # top-1 is judged only where the reference's top-2 margin exceeds what the fp16 tolerance
    # allows; a random-weight model's flat softmax can leave no such sample (all near ties)
    assert row16.top1_agreement == 1.0 or (row16.top1_agreement is None and row16.ambiguous_top1 == row16.samples)
    assert row16.max_rel_err > 10 * row.max_rel_err  # the fp16 program really computes in fp16


@pytest.mark.slow
def test_resnet50_fp32(app_ctx):
    _, row = export_and_check(app_ctx("ResNet50", 128), "fp32")
    assert row.status == "passed", row.reason


# ---- variants -----------------------------------------------------------------------------------

def test_default_variant_is_float16_ios15(digits_ctx):
    opts = CoreMLOptions()
    assert TARGET.variants(opts) == ["float16"]
    assert TARGET.variants(CoreMLOptions(quantize="all")) == ["float16", "int8", "palettize"]
    assert TARGET.variants(CoreMLOptions(precision="float32", quantize="int8,float16")) == ["fp32", "float16", "int8"]
    art, row = export_and_check(digits_ctx, "float16")
    assert row.status == "passed" and row.top1_agreement >= 0.99, row.reason
    assert art.path.suffix == ".mlpackage"
    assert spec_of(art.path).specificationVersion == 6  # iOS15


@pytest.mark.parametrize("variant", ["int8", "palettize"])
def test_compressed_variants(digits_ctx, variant, tmp_path):
    art, row = export_and_check(digits_ctx, variant, tmp_path / variant)
    assert row.status == "passed", row.reason
    assert row.max_rel_err > 0
    assert "deployment target raised to iOS16" in " ".join(art.notes)
    weights = sum(f.stat().st_size for f in art.path.rglob("*.bin"))
    fp32, _ = export_and_check(digits_ctx, "fp32", tmp_path / "fp32")
    assert weights < 0.5 * sum(f.stat().st_size for f in fp32.path.rglob("*.bin"))


def test_deprecated_variant_names_are_aliases():
    """CoreML's variants were `fp16` / `palettized`; every other target says float16 / palettize."""
    from kexport.targets.coreml import FP16, PALETTIZED

    assert TARGET.variants(CoreMLOptions(quantize="palettized,fp16", precision="float32")) == ["fp32", "float16", "palettize"]
    assert TARGET.tolerance_for("fp16", CoreMLOptions()) == FP16  # rows of existing export directories
    assert TARGET.tolerance_for("palettized", CoreMLOptions()) == PALETTIZED
    assert set(TARGET.QUANTIZE_ALIASES.values()) <= set(TARGET.QUANTIZE)


def test_rows_with_the_old_variant_names_still_verify(tmp_path):
    """An export directory written before the rename (variant "fp16") re-verifies as it was."""
    import json

    import kexport

    out = tmp_path / "old"
    assert kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["coreml"], out).exit_code == 0
    report = json.loads((out / "report.json").read_text())
    (row,) = [r for r in report["targets"] if r["target"] == "coreml"]
    assert row["variant"] == "float16"
    row["variant"] = "fp16"
    (out / "report.json").write_text(json.dumps(report))
    (again,) = kexport.verify(out).targets
    assert again.variant == "fp16" and again.status == "ok", again.error
    assert {p.runtime: p.status for p in again.parity}["coreml-reference"] == "passed"


def test_float16_overflow_is_refused_naming_the_layer(tmp_path_factory, tmp_path):
    """A layer whose activations exceed 65504 cannot run in float16: one line naming it and the fix,
    not an artifact whose outputs are inf."""
    import keras
    import numpy as np

    from kexport.errors import ConversionError

    inp = keras.Input((4,), name="x")
    big = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(3e4), name="boom")(inp)
    out = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(1e-4), name="y")(big)
    ctx = build_context(save(keras.Model(inp, out), tmp_path_factory, "overflow"), ExportOptions())
    assert np.all(np.isfinite(ctx.outputs["y"]))  # fine in float32
    with pytest.raises(ConversionError, match=r"float16 overflows at layer 'boom'.*--precision float32"):
        TARGET.export(ctx, tmp_path, CoreMLOptions(), "float16")
    _, row = export_and_check(ctx, "fp32")
    assert row.status == "passed", row.reason


def test_float16_floor_is_stored_per_sample_and_never_raises_the_tolerance(digits_ctx, tmp_path):
    from kexport.parity import _judge
    from kexport.targets.coreml import FP16, stored_floor
    from kexport.targets.coreml.floor import FACTOR, Floor, conditioning

    art, row = export_and_check(digits_ctx, "float16", tmp_path)
    floor = stored_floor(art.path)
    n = len(digits_ctx.outputs["digit"])
    assert floor.runs == 4 and floor.floor["digit"] > 0  # Keras in float16 really moved
    assert len(floor.samples) == 1 and len(floor.samples[0]["digit"]) == n
    assert max(floor.samples[0]["digit"]) == pytest.approx(floor.floor["digit"])
    assert row.status == "passed" and (row.atol, row.rtol) == (FP16.atol, FP16.rtol)  # the documented bound
    assert row.ill_conditioned == 0 and "float16" in row.tolerance_note  # digits is well-conditioned in fp16
    # a sample beyond the bound on which Keras in float16 moves beyond 1/FACTOR of it is left out, counted
    ref = {"p": np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])}
    got = {"p": ref["p"] + np.array([[0.3, -0.3], [0, 0], [1e-4, -1e-4]])}  # sample 0 off by 0.3
    wide = Floor({"p": 0.1}, {"p": 1.0}, runs=4, samples=[{"p": [0.1 / FACTOR * 40, 0.0, 1e-5]}])
    noise, _ = conditioning(wide)
    judged = _judge("coreml-reference", [({"x": np.zeros((3, 1))}, ref)], [got], FP16, noise)
    assert judged.status == "passed" and judged.ill_conditioned == 1 and judged.samples == 2, judged
    assert (judged.atol, judged.rtol) == (FP16.atol, FP16.rtol)
    # ...and a program wrong on a well-conditioned sample still fails
    got["p"][1] += [0.2, -0.2]
    assert _judge("coreml-reference", [({"x": np.zeros((3, 1))}, ref)], [got], FP16, noise).status == "failed"
    # a sample within the bound always counts, however far Keras in float16 moves (wine: 0.998)
    everything = Floor({"p": 1.0}, {"p": 1.0}, runs=4, samples=[{"p": [1.0, 1.0, 1.0]}])
    judged = _judge("coreml-reference", [({"x": np.zeros((3, 1))}, ref)], [got], FP16, conditioning(everything)[0])
    assert judged.status == "passed" and (judged.samples, judged.ill_conditioned) == (1, 2), judged
    got["p"][2] += [0.3, -0.3]
    assert _judge("coreml-reference", [({"x": np.zeros((3, 1))}, ref)], [got], FP16,
                  conditioning(everything)[0]).status == "uninformative"


# ---- image inputs, classifier, metadata, deployment target -------------------------------------

@pytest.fixture(scope="module")
def rgb_ctx(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((10, 10, 3), name="photo")
    h = keras.layers.Conv2D(6, 3, activation="relu")(inp)
    out = keras.layers.Dense(4, activation="softmax", name="kind")(keras.layers.GlobalAveragePooling2D()(h))
    return build_context(save(keras.Model(inp, out), tmp_path_factory, "rgb"), ExportOptions())


def test_image_input_bgr_with_per_channel_bias(rgb_ctx):
    opts = dict(image_input="photo", scale=1 / 255, bias=(0.1, -0.2, 0.3), color_layout="BGR")
    art, row = export_and_check(rgb_ctx, "fp32", **opts)
    assert row.status == "passed", row.reason
    image = spec_of(art.path).description.input[0].type.imageType
    assert (image.width, image.height, image.colorSpace) == (10, 10, 30)  # 30 = BGR
    # the check can fail: feeding pixels made with the bias in the wrong order breaks parity
    art.runtime_options["image_inputs"]["photo"]["bias"] = [0.3, -0.2, 0.1]
    bad = check_artifact(art, [REF], rgb_ctx.inputs, rgb_ctx.outputs, FP32)[0]
    assert bad.status == "failed"


def test_grayscale_image_classifier_with_metadata(digits_ctx, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    art, row = export_and_check(digits_ctx, "fp32", image_input="pixels", scale=1 / 16, color_layout="GRAYSCALE",
                                class_labels=str(labels), author="Ada", license="MIT",
                                short_description="8x8 digits", model_version="1.2", deployment_target="iOS17")
    assert row.status == "passed", row.reason  # the session also checks classLabel == argmax
    spec = spec_of(art.path)
    assert spec.specificationVersion == 8  # iOS17
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.input[0].type.imageType.colorSpace == 10  # GRAYSCALE
    md = spec.description.metadata
    assert (md.author, md.license, md.shortDescription, md.versionString) == ("Ada", "MIT", "8x8 digits", "1.2")
    assert md.userDefined["kexport.keras_inputs"] == "pixels"
    assert md.userDefined["kexport.keras_outputs"] == "digit"


def test_cli_flags_reach_the_artifact(tmp_path, capsys):
    import json

    from kexport.cli import main

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join("abcdefghij") + "\n")
    out = tmp_path / "out"
    code = main(["coreml", str(SAMPLE_MODELS["digits_cnn"]), "-o", str(out), "--precision", "float32",
                 "--class-labels", str(labels), "--author", "Bob", "--deployment-target", "macOS14", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    row = report["targets"][0]
    assert row["variant"] == "fp32" and row["deployment_target"] == "macOS14" and row["seconds"] > 0
    assert {p["runtime"]: p["status"] for p in row["parity"]}[REF] == "passed"
    spec = spec_of(out / row["artifact"])
    assert spec.description.metadata.author == "Bob" and spec.description.predictedFeatureName == "classLabel"
    from kexport.api import verify  # re-check from report.json + reference data only

    again = verify(out).targets[0]
    assert {p.runtime: p.status for p in again.parity}[REF] == "passed", [p.reason for p in again.parity]


def test_flags_parse_into_options():
    from kexport.cli import build_parser, target_namespace

    flags = ["--format", "neuralnetwork", "--deployment-target", "iOS14", "--precision", "float32", "--image-input",
             "img", "--scale", "0.5", "--bias", "1,2,3", "--color-layout", "BGR", "--license", "MIT",
             "--short-description", "d", "--model-version", "3"]
    for command in ("coreml", "all"):  # under `all` every coreml flag is --coreml-<flag>
        given = flags if command == "coreml" else [f"--coreml-{f[2:]}" if f.startswith("--") else f for f in flags]
        args = build_parser().parse_args([command, "m.keras", *given])
        opts = TARGET.options_from_args(target_namespace(args, TARGET))
        assert (opts.format, opts.deployment_target, opts.precision) == ("neuralnetwork", "iOS14", "float32")
        assert (opts.image_input, opts.scale, opts.bias, opts.color_layout) == ("img", 0.5, (1.0, 2.0, 3.0), "BGR")
        assert (opts.license, opts.short_description, opts.model_version) == ("MIT", "d", "3")
    with pytest.raises(UsageError, match="--bias"):
        TARGET.options_from_args(target_namespace(build_parser().parse_args(["coreml", "m.keras", "--bias", "1,x"]), TARGET))


def test_neuralnetwork_format_is_converted_and_reported_skipped(digits_ctx):
    art, row = export_and_check(digits_ctx, "fp32", format="neuralnetwork")
    assert art.path.suffix == ".mlmodel"
    assert spec_of(art.path).WhichOneof("Type") == "neuralNetwork"
    assert row.status == "skipped" and "ML Programs only" in row.reason


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("opts,needles", [
    (dict(image_input="nope"), ["'nope' names no model input", "pixels"]),
    (dict(image_input="pixels", color_layout="RGB"), ["no axis of 3 channels", "RGB"]),
    (dict(deployment_target="iOS14"), ["too old for an ML Program", "--format neuralnetwork"]),
    (dict(format="neuralnetwork", deployment_target="iOS17"), ["neuralnetwork is for"]),
])
def test_bad_options_are_one_clear_error(digits_ctx, opts, needles):
    with pytest.raises(UsageError) as e:
        TARGET.preflight(digits_ctx, CoreMLOptions(**opts))
    msg = str(e.value)
    assert "\n" not in msg and "coreml" in msg
    for n in needles:
        assert n in msg, msg


def test_image_input_on_a_non_image_model(tmp_path):
    ctx = build_context(SAMPLE_MODELS["wine_mlp"], ExportOptions())
    with pytest.raises(UsageError, match="not an image"):
        TARGET.preflight(ctx, CoreMLOptions(image_input=ctx.signature.input_names[0]))


def test_labels_file_with_wrong_line_count_leaves_nothing_behind(tmp_path):
    import kexport

    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    out = tmp_path / "out"
    opts = ExportOptions(target_options={"coreml": CoreMLOptions(class_labels=str(labels))})
    with pytest.raises(UsageError, match="labels.txt: 2 labels but output 'digit' has 10 classes"):
        kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["coreml"], out, options=opts)  # the user's file: exit 2
    assert not (out / "coreml").exists() and not list(out.glob(".kexport-coreml-*"))


def test_preflight_lists_every_unsupported_op_at_once(tmp_path):
    import keras
    import tensorflow as tf

    from kexport.context import ExportContext
    from kexport.loader import signature_of

    class Odd(keras.layers.Layer):
        def call(self, x):
            return tf.math.erfinv(tf.tanh(x)) + tf.math.lgamma(x * x + 1.0)

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, name="y")(Odd()(inp)))
    ctx = ExportContext(model, tmp_path / "odd.keras", "0" * 64, signature_of(model), {}, {})
    problems = TARGET.preflight(ctx, CoreMLOptions())
    assert problems == ["TF op Erfinv", "TF op Lgamma"]


def test_free_length_rnn_is_reported_with_the_reason(tmp_path):
    import keras

    from kexport.context import ExportContext
    from kexport.loader import signature_of

    inp = keras.Input((None, 3), name="seq")
    model = keras.Model(inp, keras.layers.Dense(1, name="y")(keras.layers.GRU(4)(inp)))
    ctx = ExportContext(model, tmp_path / "rnn.keras", "0" * 64, signature_of(model), {}, {})
    problems = TARGET.preflight(ctx, CoreMLOptions())
    assert any("While" in p and "fixed length" in p for p in problems), problems


def test_unknown_op_gives_a_skipped_row_naming_it(digits_ctx, monkeypatch):
    from kexport.runtimes.coreml_reference import OPS

    art, _ = export_and_check(digits_ctx, "fp32")
    monkeypatch.delitem(OPS, "softmax")
    row = check_artifact(art, [REF], digits_ctx.inputs, digits_ctx.outputs, FP32)[0]
    assert row.status == "skipped" and "softmax" in row.reason, row


def test_native_runtime_is_skipped_off_macos_with_its_reason(digits_ctx):
    import platform

    art, _ = export_and_check(digits_ctx, "fp32")
    row = check_artifact(art, ["coreml"], digits_ctx.inputs, digits_ctx.outputs, FP32)[0]
    if platform.system() != "Darwin":
        assert row.status == "skipped" and "only on macOS" in row.reason
    else:
        assert row.status == "passed", row.reason
