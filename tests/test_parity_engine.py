"""The parity engine on its own: names, shapes, values, top-1, uninformative references."""

from __future__ import annotations

import numpy as np
import pytest

from kexport.parity import compare, reference_inputs, uninformative
from kexport.signature import ModelSignature, TensorSpec
from kexport.targets.base import FP32, Tolerance

RNG = np.random.default_rng(0)
REF = {"probs": RNG.dirichlet(np.ones(5), size=8).astype(np.float32), "score": RNG.normal(size=(8, 1)).astype(np.float32)}


def test_identical_outputs_pass_regardless_of_order():
    got = {"score": REF["score"].copy(), "probs": REF["probs"].copy()}
    row = compare("x", REF, got, FP32)
    assert row.status == "passed" and row.max_abs_err == 0 and row.top1_agreement == 1.0


def test_swapped_names_are_caught():
    got = {"probs": REF["score"], "score": REF["probs"]}
    row = compare("x", REF, got, FP32)
    assert row.status == "failed" and "shape" in row.reason


def test_missing_and_extra_outputs_are_all_reported():
    row = compare("x", REF, {"probs": REF["probs"], "Identity_1": REF["score"]}, FP32)
    assert row.status == "failed"
    assert "missing outputs ['score']" in row.reason and "unexpected outputs ['Identity_1']" in row.reason


def test_error_bound_is_relative_to_output_scale():
    tol = Tolerance(atol=1e-6, rtol=1e-4)
    big = {"y": np.full((4, 3), 1000.0, np.float32) * np.arange(1, 4)}
    ok = compare("x", big, {"y": big["y"] + 0.2}, tol)  # 0.2 <= 1e-6 + 1e-4 * 3000
    bad = compare("x", big, {"y": big["y"] + 0.4}, tol)
    assert ok.status == "passed" and bad.status == "failed"
    assert bad.max_rel_err == pytest.approx(0.4 / 3000, rel=1e-3)


def test_top1_threshold_applies_when_set():
    flipped = REF["probs"][:, ::-1].copy()
    # top-1 counts where the reference's top-2 margin exceeds 2 x the bound (0.02 here); an atol
    # of 1.0 would make every sample an ambiguous near tie (tests/test_generality.py)
    loose = Tolerance(atol=0.01, rtol=0.0, min_top1=0.99)
    row = compare("x", {"probs": REF["probs"]}, {"probs": flipped}, loose)
    assert row.status == "failed" and "top-1" in row.reason


def test_non_finite_outputs_fail():
    got = {"probs": REF["probs"].copy(), "score": REF["score"].copy()}
    got["score"][0, 0] = np.nan
    assert compare("x", REF, got, FP32).status == "failed"


def test_uninformative_reference_is_flagged():
    flat = {"probs": np.full((8, 1000), 1e-3, np.float32)}
    assert uninformative(flat) is not None
    assert uninformative(REF) is None


def test_reference_inputs_respect_dtype_and_range():
    sig = ModelSignature(
        (TensorSpec("tok", (None, 7), "int32", int_high=13), TensorSpec("img", (None, 4, 4, 3), "float32")),
        (TensorSpec("y", (None, 2), "float32"),),
    )
    a = reference_inputs(sig, 16, seed=1)
    b = reference_inputs(sig, 16, seed=1)
    assert a["tok"].dtype == np.int32 and a["tok"].min() >= 0 and a["tok"].max() < 13
    assert a["img"].shape == (16, 4, 4, 3) and 0 <= a["img"].min() and a["img"].max() < 1
    np.testing.assert_array_equal(a["img"], b["img"])
