"""The parity matrix, generated from the registries: sample models x targets x runtimes.

A known gap is listed in KNOWN_GAPS with its reason; it is a strict xfail, so it turns red the
day it is fixed and must then be removed from the list.
"""

from __future__ import annotations

import pytest

from conftest import SAMPLE_MODELS, TEST_TARGETS
from kexport.runtimes import get_runtime
from kexport.targets import all_targets

# (model, target, runtime) -> reason
KNOWN_GAPS: dict[tuple[str, str, str], str] = {}


def _matrix():
    for model in SAMPLE_MODELS:
        for tname, target in all_targets().items():
            if "all" not in TEST_TARGETS and tname not in TEST_TARGETS:
                continue
            for runtime in target.runtimes:
                marks = []
                gap = KNOWN_GAPS.get((model, tname, runtime))
                if gap:
                    marks.append(pytest.mark.xfail(reason=gap, strict=True))
                yield pytest.param(model, tname, runtime, id=f"{model}-{tname}-{runtime}", marks=marks)


@pytest.mark.parametrize("model,target,runtime", list(_matrix()))
def test_parity(sample_export, model, target, runtime):
    result, out = sample_export(model)
    rows = [r for r in result.targets if r.target == target]
    assert rows, f"{target} missing from the report of {model}"
    skipped = []
    for row in rows:  # every variant is checked; a skipped runtime skips only its own row
        prow = [p for p in row.parity if p.runtime == runtime]
        assert len(prow) == 1, f"no parity row for {runtime}"
        p = prow[0]
        assert row.status in ("ok", "unverified"), f"{model} -> {target}/{row.variant}: {row.status}: {row.error}"
        assert (out / row.artifact).exists()
        if p.status == "skipped":
            skipped.append(f"{row.variant}: {p.reason}")
            continue
        assert row.status == "ok", f"{model} -> {target}/{row.variant}: {row.status} though {runtime} passed"
        assert p.status == "passed", f"{model} -> {target}/{row.variant} on {runtime}: {p.status}: {p.reason}"
        if getattr(get_runtime(runtime), "validates", False):  # a manifest validator: no outputs to measure
            continue
        assert p.max_abs_err is not None and p.max_abs_err <= p.atol + p.rtol * max(
            o["scale"] for o in p.outputs.values()
        )
    if len(skipped) == len(rows):
        pytest.skip(f"{runtime} skipped: " + "; ".join(skipped))


def test_every_registered_target_has_runtimes():
    for name, target in all_targets().items():
        assert target.runtimes, f"target {name} declares no runtime to verify it"
