"""Parity rows of an edited export directory, from the engine `kexport verify` uses. (verify
itself refuses an artifact whose sha256 changed before any runtime sees it; tests that break one
field on purpose need the runtimes' own verdict.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def recheck(out: Path, target_name: str) -> dict:
    """{runtime: ParityRow} of `target_name`'s artifact in `out`, as it is on disk now."""
    from kexport.parity import check_artifact
    from kexport.targets import Artifact, get_target

    row = next(r for r in json.loads((out / "report.json").read_text())["targets"] if r["target"] == target_name)
    with np.load(out / "reference" / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(out / "reference" / "outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    target = get_target(target_name)
    art = Artifact(out / row["artifact"], runtime_options=row.get("runtime_options", {}))
    return {p.runtime: p for p in check_artifact(art, target.runtimes, inputs, outputs, target.tolerance)}
