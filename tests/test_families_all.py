"""Every model family of issue 10 through every registered target (`kexport all`), each cell
checked in its real runtimes.

A cell is either verified (converted, every runtime that runs here passed, at least one ran) or
refused in one line with the precise reason listed below; anything else fails: a failed or
uninformative runtime, a conversion error, an `unverified` row, a refusal nobody expected, or an
expected refusal that now converts (then take it off the list). Runtime rows may be skipped only
for the reasons runtimes give off macOS / without tritonserver.

The families are built by tests/test_generality.py::_build (small models, a few seconds each).
"""

from __future__ import annotations

import pytest

import kexport
from kexport.targets import all_targets
from test_generality import family  # noqa: F401  (the session fixture that builds the families)

FAMILIES = ["free_hw", "pixels", "dict_heads", "siamese", "strings", "mha", "video3d", "mixed16", "mobilenet_block"]

# (family, target) -> words the one-line refusal must contain: what the runtime truly cannot do.
REFUSED = {
    ("free_hw", "spark"): "free dimension",
    ("pixels", "dl4j"): "Rescaling",
    ("mobilenet_block", "dl4j"): "Rescaling",
    ("mha", "dl4j"): "MultiHeadAttention",
    ("video3d", "dl4j"): "(MaxPooling3D): DL4J infers a wrong output shape",
    ("strings", "coreml"): "string tensor",
    ("strings", "tfjs"): "string tensor",
    ("strings", "dl4j"): "string tensor",
    ("strings", "openvino"): "HashTableV2",
}
# runtimes that cannot run on this machine at all, with the words of their reason
SKIPS_ALLOWED = {"coreml": "only on macOS", "tritonserver": "cannot be installed here"}


@pytest.fixture(scope="module")
def exported(family, tmp_path_factory):  # noqa: F811
    done = {}

    def get(name):
        if name not in done:
            out = tmp_path_factory.mktemp(f"all_{name}")
            done[name] = kexport.export(str(family(name)), list(all_targets()), out)
        return done[name]

    return get


@pytest.mark.parametrize("name", FAMILIES)
def test_family_through_every_target(exported, name):
    result = exported(name)
    assert {t.target for t in result.targets} == set(all_targets()), result.targets
    problems = []
    for t in result.targets:
        want = REFUSED.get((name, t.target))
        if want:
            if t.status != "unsupported" or want not in (t.error or ""):
                problems.append(f"{t.target}: expected a refusal naming {want!r}, got {t.status}: {t.error}")
            elif "\n" in t.error or "internal error" in t.error:
                problems.append(f"{t.target}: refusal is not one clear line: {t.error!r}")
            continue
        if t.status != "ok":
            problems.append(f"{t.target}/{t.variant}: {t.status}: {t.error}")
            continue
        ran = [p for p in t.parity if p.status != "skipped"]
        if not ran:
            problems.append(f"{t.target}/{t.variant}: no runtime ran")
        for p in t.parity:
            if p.status == "skipped":
                if SKIPS_ALLOWED.get(p.runtime, "\0") not in (p.reason or ""):
                    problems.append(f"{t.target}/{t.variant} on {p.runtime}: skipped: {p.reason}")
            elif p.status != "passed":
                problems.append(f"{t.target}/{t.variant} on {p.runtime}: {p.status}: {p.reason}")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)
