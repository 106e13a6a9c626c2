"""DL4J: a Keras 2 HDF5 file (`OUT/dl4j/model.h5`) that DL4J's `KerasModelImport` accepts,
verified in DL4J itself (runtime `dl4j`: the JVM runner in runtimes/jvm).

DL4J 1.0.0-M2.1 (the newest release on Maven Central) reads the Keras 2 HDF5 layout only, so the
Keras 3 config goes through the same Keras 3 -> Keras 2 translation as the TF.js layers format
(a tf_keras twin, checked against Keras 3 on the reference inputs), adjusted for DL4J's import
(dl4j/twin.py). The preflight lists every layer, activation and argument DL4J cannot import
(dl4j/support.py). Usage from Java: docs/jvm.md.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConversionError, first_line
from ..base import Artifact, Target, register_target


@register_target
class Dl4jTarget(Target):
    name = "dl4j"
    description = "Keras 2 HDF5 for DL4J's KerasModelImport (the JVM)"
    runtimes = ("dl4j",)
    pip_extra = "keras"
    requires = ("tf_keras", "h5py")

    def preflight(self, ctx, options) -> list[str]:
        from .support import dl4j_problems

        problems = [f"input '{t.name}' is a string tensor (DL4J takes numeric arrays only)"
                    for t in ctx.signature.inputs if t.dtype == "string"]
        problems += dl4j_problems(ctx.model)
        if problems:
            return problems
        from ..tfjs import keras2_config

        return keras2_config(ctx.model)[1]

    def export(self, ctx, dest: Path, options, variant: str) -> Artifact:
        from .support import DL4J_VERSION
        from .twin import build_twin

        twin, renames, rewrites = build_twin(ctx, self.name)
        path = dest / "model.h5"
        try:
            twin.save(str(path), save_format="h5", include_optimizer=False)
        except Exception as e:  # h5py/tf_keras raise OSError/ValueError
            raise ConversionError(f"target '{self.name}': writing the Keras 2 HDF5 failed: {first_line(e)}") from e
        names = dict(zip(twin.input_names, ctx.signature.input_names))
        names.update(zip(twin.output_names, ctx.signature.output_names))
        notes = [f"Keras 3 config translated to Keras 2 HDF5 for DL4J {DL4J_VERSION} KerasModelImport "
                 "(tf_keras twin checked on the reference inputs)"]
        notes += rewrites
        if any(type(layer).__name__ == "Normalization" for layer in ctx.model.layers):
            notes.append("Normalization -> BatchNormalization(gamma=1, beta=0, epsilon=1e-12): same affine map")
        if renames:
            notes.append("layers renamed for DL4J's weight import (a layer name inside its weight names breaks it): "
                         + ", ".join(f"{a} -> {b}" for a, b in renames.items()))
        # {name in the HDF5 (DL4J's vertex names): Keras name}; differs only for renamed layers
        return Artifact(path, variant, notes=notes, runtime_options={"names": names})
