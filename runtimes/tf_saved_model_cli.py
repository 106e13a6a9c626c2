"""TensorFlow's own command-line tool: `saved_model_cli run` in a subprocess, the way an operator
checks a SavedModel before handing it to TF-Serving.

Inputs go in through an .npz file (`--inputs key=file.npz[key]`), outputs come back as the
`<output key>.npy` files `--outdir` writes, so they are matched by signature key, never by order.
Each predict() starts a fresh process that imports TensorFlow (~8 s): use it once per artifact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .base import Runtime, register_runtime


def saved_model_cli() -> str | None:
    """The console script of the TensorFlow installed next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "saved_model_cli"
    if beside.exists():
        return str(beside)
    return shutil.which("saved_model_cli")


@register_runtime
class SavedModelCLIRuntime(Runtime):
    name = "tf-saved-model-cli"
    install_hint = "pip install tensorflow (it installs the saved_model_cli command)"

    def available(self):
        if saved_model_cli() is None:
            return "the saved_model_cli command is not installed (it comes with the tensorflow package)"
        return None

    def load(self, path, signature: str = "serving_default", timeout: float = 600, **options):
        return SavedModelCLISession(str(path), signature, timeout)


class SavedModelCLISession:
    def __init__(self, path: str, signature: str = "serving_default", timeout: float = 600):
        if not Path(path, "saved_model.pb").exists():
            raise RuntimeError(f"{path}: no saved_model.pb, not a SavedModel directory")
        self.path, self.signature, self.timeout = path, signature, timeout

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="kexport-smcli-") as tmp:
            data = Path(tmp) / "inputs.npz"
            np.savez(data, **{k: np.asarray(v) for k, v in inputs.items()})
            outdir = Path(tmp) / "out"
            # `;`, `=` and `[` separate the --inputs syntax; Keras names and mkdtemp paths have none.
            spec = ";".join(f"{k}={data}[{k}]" for k in inputs)
            cmd = [saved_model_cli(), "run", "--dir", self.path, "--tag_set", "serve",
                   "--signature_def", self.signature, "--inputs", spec, "--outdir", str(outdir), "--overwrite"]
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, env=env)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"saved_model_cli run did not finish within {self.timeout:.0f}s") from e
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                raise RuntimeError(f"saved_model_cli run exited {proc.returncode}: {lines[-1] if lines else 'no message'}")
            if not outdir.is_dir():
                raise RuntimeError("saved_model_cli run wrote no outputs")
            return {f.stem: np.load(f, allow_pickle=False) for f in sorted(outdir.glob("*.npy"))}

    def close(self):
        pass
