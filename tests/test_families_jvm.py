"""Model families of issue 10 on the JVM runtimes, in the real runtimes (the JVM runner):

- string inputs (`Input(dtype="string")` + StringLookup) through ONNX Runtime for Java;
- nested and shared submodels through DL4J: the Keras 2 HDF5 holds them inlined, a shared
  encoder as copies with the same weights (DL4J merges a shared layer's calls);
- 3D video models on DL4J: GlobalAveragePooling3D rewritten (Flatten + Dense), the 3D poolings
  DL4J gets wrong refused in the preflight, naming each layer; layers DL4J fails on as the first
  layer after the input refused too.

Before these fixes: strings failed in onnxruntime-java ("data type 'string' not understood"),
dict_heads and siamese were `unsupported` ("nested model ... flatten it"), video3d converted and
failed in DL4J ("Unsupported Keras pooling layer GlobalAveragePooling3D").
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import kexport
from kexport.options import ExportOptions
from kexport.runtimes import get_runtime
from test_generality import _build


def _need(runtime: str):
    reason = get_runtime(runtime).available()
    if reason:
        pytest.skip(f"{runtime}: {reason}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("families_jvm")
    done = {}

    def run(name, targets, build=None, **opts):
        key = (name, tuple(targets))
        if key not in done:
            path = root / f"{name}.keras"
            (build or _build)(name).save(path)
            out = root / f"out_{name}_{'_'.join(targets)}"
            done[key] = (kexport.export(str(path), targets, str(out), options=ExportOptions(**opts)), out)
        return done[key]

    return run


def _row(result, target, runtime=None):
    (t,) = [t for t in result.targets if t.target == target and t.variant == "fp32"]
    if runtime is None:
        return t, None
    (p,) = [p for p in t.parity if p.runtime == runtime]
    return t, p


# ---- strings on ONNX Runtime for Java ----------------------------------------------------------

def test_strings_pass_on_onnxruntime_java(exported):
    _need("onnxruntime-java")
    result, _ = exported("strings", ["onnx"])
    t, p = _row(result, "onnx", "onnxruntime-java")
    assert t.status == "ok", t.error
    assert p.status == "passed", p.reason
    assert p.max_abs_err is not None and p.max_abs_err <= 1e-6


def test_onnxruntime_java_reads_any_string_like_python(exported):
    """Out-of-vocabulary, empty, non-ASCII and bytes inputs: Java and Python ONNX Runtime agree."""
    _need("onnxruntime-java")
    _need("onnxruntime")
    result, out = exported("strings", ["onnx"])
    t, _ = _row(result, "onnx")
    city = np.array([["rome"], [""], ["zürich"], ["oslo"], ["东京"]], dtype=object)
    as_bytes = np.array([[s.encode()] for s in city[:, 0]], dtype=object)
    got = {}
    for name, feed in (("onnxruntime", city), ("onnxruntime-java", city), ("java-bytes", as_bytes)):
        session = get_runtime(name if name != "java-bytes" else "onnxruntime-java").load(str(out / t.artifact))
        try:
            got[name] = session.predict({"city": feed})["probs"]
        finally:
            session.close()
    np.testing.assert_allclose(got["onnxruntime-java"], got["onnxruntime"], atol=1e-6)
    np.testing.assert_array_equal(got["java-bytes"], got["onnxruntime-java"])
    assert got["onnxruntime"][0].tolist() != got["onnxruntime"][1].tolist()  # the string mattered


# ---- nested and shared submodels on DL4J -------------------------------------------------------

@pytest.mark.parametrize("name", ["dict_heads", "siamese"])
def test_nested_and_shared_submodels_pass_on_dl4j(exported, name):
    result, out = exported(name, ["dl4j"])
    t, _ = _row(result, "dl4j")
    assert t.status == "ok", t.error
    _need("dl4j")
    (p,) = [p for p in t.parity if p.runtime == "dl4j"]
    assert p.status == "passed", p.reason
    assert p.max_abs_err <= 1e-5
    names = t.extra["runtime_options"]["names"]
    with np.load(out / "reference" / "outputs.npz") as z, np.load(out / "reference" / "inputs.npz") as x:
        assert sorted(names.values()) == sorted(z.files + x.files)
    if name == "siamese":  # the shared encoder's layers are copies: one call each
        assert any("shared layers duplicated" in n for n in t.notes), t.notes


def test_tfjs_layers_format_takes_a_nested_model(exported):
    """The same inlining serves TF.js layers models (which take shared layers as they are)."""
    from kexport.targets.tfjs import TfjsOptions

    _need("tfjs-node-cpu")
    result, _ = exported("dict_heads", ["tfjs"], target_options={"tfjs": TfjsOptions(format="layers")})
    t, p = _row(result, "tfjs", "tfjs-node-cpu")
    assert t.status == "ok", t.error
    assert p.status == "passed", p.reason


def _name_clash(_name):
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="head")], name="inner")
    i = keras.Input((4,), name="x")
    h = L.Dense(4, name="head")(i)  # the outer model has a layer named like the inner one
    return keras.Model(i, L.Dense(2, name="out")(inner(h)))


def test_a_nested_layer_named_like_an_outer_one_is_refused_in_one_line(exported):
    result, _ = exported("name_clash", ["dl4j"], build=_name_clash)
    t, _ = _row(result, "dl4j")
    assert t.status == "unsupported"
    assert "layer name 'head' is used inside a nested model and outside it" in t.error


# ---- 3D video models on DL4J ------------------------------------------------------------------

def test_video3d_is_refused_on_dl4j_naming_each_layer(exported):
    """Conv3D -> MaxPooling3D -> AveragePooling3D -> GlobalAveragePooling3D: the 3D poolings DL4J
    gets wrong are named with the reason before anything is written; never a failed runtime row."""
    result, _ = exported("video3d", ["dl4j"])
    t, _ = _row(result, "dl4j")
    assert t.status == "unsupported", (t.status, t.error, [(p.runtime, p.status) for p in t.parity])
    for layer in (r"'max_pooling3d(_\d+)?' \(MaxPooling3D\)", r"'average_pooling3d(_\d+)?' \(AveragePooling3D\)"):
        assert re.search(f"layer {layer}: DL4J infers a wrong output shape", t.error), t.error
    assert "global_average_pooling3d" not in t.error and "\n" not in t.error  # that one is rewritten
    assert not t.parity


def _conv3d_gap(_name):
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    i = keras.Input((4, 8, 8, 1), name="clip")
    x = L.Conv3D(4, 3, padding="same", activation="relu")(i)
    return keras.Model(i, L.Dense(3, activation="softmax", name="probs")(L.GlobalAveragePooling3D()(x)))


def test_global_average_pooling3d_is_rewritten_and_passes_on_dl4j(exported):
    """DL4J refuses GlobalAveragePooling3D ("Unsupported Keras pooling layer"); written as Flatten +
    Dense(1/N per channel) it computes the same mean in DL4J."""
    result, _ = exported("conv3d_gap", ["dl4j"], build=_conv3d_gap)
    t, _ = _row(result, "dl4j")
    assert t.status == "ok", t.error
    assert any("GlobalAveragePooling3D -> Flatten + Dense(4, kernel 1/256 per channel)" in n for n in t.notes)
    _need("dl4j")
    (p,) = [p for p in t.parity if p.runtime == "dl4j"]
    assert p.status == "passed", p.reason
    assert p.max_abs_err <= 1e-6


def _first_layer(cls_name):
    def build(_name):
        import keras
        from keras import layers as L

        keras.utils.set_random_seed(0)
        i = keras.Input((6, 6, 2), name="image")
        first = {"UpSampling2D": lambda: L.UpSampling2D(2), "DepthwiseConv2D": lambda: L.DepthwiseConv2D(2)}[cls_name]
        y = L.Conv2D(2, 1, name="conv")(first()(i))
        return keras.Model(i, L.Dense(2, name="out")(L.Flatten()(y)))

    return build


@pytest.mark.parametrize("cls", ["UpSampling2D", "DepthwiseConv2D"])
def test_dl4j_preflight_refuses_a_layer_it_fails_on_right_after_the_input(exported, cls):
    """Measured: DL4J runs these after a convolution, not on the model input (it guesses the
    input's layout from the first layer)."""
    result, _ = exported(f"first_{cls}", ["dl4j"], build=_first_layer(cls))
    t, _ = _row(result, "dl4j")
    assert t.status == "unsupported", (t.status, [(p.runtime, p.status, p.reason) for p in t.parity])
    assert f"({cls}) reads the model input directly" in t.error and "\n" not in t.error


def _deep(_name):
    """A Functional with two inputs and two outputs, holding a Sequential, called twice inside an
    outer model that also nests a Sequential: inlining must follow nodes and tensor indices."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a_in"), keras.Input((4,), name="b_in")
    proj = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="tanh", name="proj")], name="proj_seq")
    pa, pb = proj(a), proj(b)
    block = keras.Model([a, b], [L.Add(name="sum")([pa, pb]), L.Multiply(name="prod")([pa, pb])], name="block")
    x, y = keras.Input((4,), name="x"), keras.Input((4,), name="y")
    s1, p1 = block([x, y])
    s2, p2 = block([p1, s1])  # the outputs of call 1, crossed, into call 2
    head = keras.Sequential([keras.Input((4,)), L.Dense(3, name="head")], name="head_seq")
    return keras.Model({"x": x, "y": y}, {"score": head(s2), "mix": L.Subtract(name="mix_")([p2, s1])})


def test_deeply_nested_and_shared_submodels_pass_on_dl4j(exported):
    result, _ = exported("deep", ["dl4j"], build=_deep)
    t, _ = _row(result, "dl4j")
    assert t.status == "ok", t.error
    _need("dl4j")
    (p,) = [p for p in t.parity if p.runtime == "dl4j"]
    assert p.status == "passed", p.reason
    assert sorted(t.extra["runtime_options"]["names"].values()) == ["mix", "score", "x", "y"]


# ---- the preflight's list of layers DL4J gets wrong stays true ---------------------------------

def _broken_model(cls_name):
    def build(_name):
        import keras
        from keras import layers as L

        keras.utils.set_random_seed(0)
        make = {
            "AveragePooling1D": ((6, 3), lambda: L.AveragePooling1D(2)),
            "UpSampling1D": ((6, 3), lambda: L.UpSampling1D(2)),
            "Cropping1D": ((6, 3), lambda: L.Cropping1D(1)),
            "Conv3DTranspose": ((4, 6, 6, 2), lambda: L.Conv3DTranspose(3, 2)),
            "Cropping3D": ((4, 6, 6, 2), lambda: L.Cropping3D(1)),
            "ZeroPadding3D": ((4, 6, 6, 2), lambda: L.ZeroPadding3D(1)),
            "UpSampling3D": ((4, 6, 6, 2), lambda: L.UpSampling3D(2)),
            "MaxPooling3D": ((4, 8, 8, 1), lambda: L.MaxPooling3D(2)),
            "AveragePooling3D": ((4, 8, 8, 1), lambda: L.AveragePooling3D(2)),
            "GlobalMaxPooling3D": ((4, 6, 6, 2), lambda: L.GlobalMaxPooling3D()),
        }
        shape, layer = make[cls_name]
        i = keras.Input(shape, name="x")
        conv = L.Conv1D if len(shape) == 2 else L.Conv3D
        y = layer()(conv(3, 1 if len(shape) == 2 else 3, padding="same", name="pre")(i))
        y = L.Flatten()(y) if len(y.shape) > 2 else y
        return keras.Model(i, L.Dense(2, name="out")(y))

    return build


def test_every_layer_the_preflight_calls_broken_really_fails_in_dl4j(exported, monkeypatch):
    """Past the preflight, each BROKEN layer converts and then fails in DL4J (an error or wrong
    values): the day a DL4J release runs one right, this test says which to take off the list."""
    from kexport.targets.dl4j import support

    _need("dl4j")
    broken = dict(support.BROKEN)
    monkeypatch.setattr(support, "BROKEN", {})
    fixed = []
    for cls in sorted(broken):
        result, _ = exported(f"broken_{cls}", ["dl4j"], build=_broken_model(cls))
        t, _ = _row(result, "dl4j")
        assert t.status == "ok", (cls, t.status, t.error)
        (p,) = [p for p in t.parity if p.runtime == "dl4j"]
        if p.status == "passed":
            fixed.append(cls)
    assert not fixed, f"DL4J now runs {fixed} right: take them off support.BROKEN"
