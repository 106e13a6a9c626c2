"""The parity matrix, generated from the registries: sample models x targets x runtimes.

A known gap is listed in KNOWN_GAPS with its reason; it is a strict xfail, so it turns red the
day it is fixed and must then be removed from the list.
"""

from __future__ import annotations

import pytest

from conftest import SAMPLE_MODELS
from kexport.targets import all_targets

# (model, target, runtime) -> reason
KNOWN_GAPS: dict[tuple[str, str, str], str] = {}


def _matrix():
    for model in SAMPLE_MODELS:
        for tname, target in all_targets().items():
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
    for row in rows:
        assert row.status == "ok", f"{model} -> {target}/{row.variant}: {row.status}: {row.error}"
        prow = [p for p in row.parity if p.runtime == runtime]
        assert len(prow) == 1, f"no parity row for {runtime}"
        p = prow[0]
        if p.status == "skipped":
            pytest.skip(f"{runtime} skipped: {p.reason}")
        assert p.status == "passed", f"{model} -> {target}/{row.variant} on {runtime}: {p.status}: {p.reason}"
        assert p.max_abs_err is not None and p.max_abs_err <= p.atol + p.rtol * max(
            o["scale"] for o in p.outputs.values()
        )
        assert (out / row.artifact).exists()


def test_every_registered_target_has_runtimes():
    for name, target in all_targets().items():
        assert target.runtimes, f"target {name} declares no runtime to verify it"
