"""`litert-arm64`: the TFLite artifact in LiteRT (ai_edge_litert 2.3.0, the official aarch64
wheel) on arm64 Debian bookworm, the userland of 64-bit Raspberry Pi OS, under qemu user-mode
emulation (runtimes/arm64: `make arm64-root` builds the root once).

The child is the same worker as the x86 `litert` isolation (runtimes/isolated.py), started with
the root's Python 3.11 under `qemu-aarch64-static`; inside it, the `litert` runtime maps the
inputs and outputs to the Keras names and (de)quantizes int8 inputs/outputs. So this row proves
the aarch64 build of the interpreter and its arm64 kernels (XNNPACK NEON, the int8 kernels)
compute what Keras computes; it does not measure a Pi's speed (see docs/raspberry_pi.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import arm64
from . import owned
from .base import Runtime, register_runtime
from .isolated import IsolatedSession


@register_runtime
class LiteRTArm64Runtime(Runtime):
    name = "litert-arm64"
    # load() itself starts the emulated child: the parity engine must not wrap it in another.
    isolate = False
    install_hint = arm64.INSTALL_HINT
    device = arm64.DEVICE

    def available(self):
        return arm64.unavailable()

    def load(self, path, **options):
        return EmulatedLiteRTSession(str(path), options)


def package_shim() -> Path:
    """A directory that makes this package importable in the guest under its own dotted name
    (e.g. `kexport.runtimes`) without the rest of kexport: the parent packages are empty
    namespace directories and the last part links here (the guest has no kexport, no TensorFlow)."""
    parts = __package__.split(".")
    shim = owned.temp_dir("kexport-arm64-shim-")
    parent = shim.joinpath(*parts[:-1])
    parent.mkdir(parents=True, exist_ok=True)
    os.symlink(Path(__file__).resolve().parent, parent / parts[-1], target_is_directory=True)
    return shim


class EmulatedLiteRTSession(IsolatedSession):
    """predict() goes to LiteRT in the emulated arm64 child; `device` says where it ran."""

    device = arm64.DEVICE

    def __init__(self, path: str, options: dict | None = None):
        self._shim = package_shim()
        try:
            super().__init__("litert", path, options, python=arm64.guest_python(),
                             env=arm64.guest_env({"PYTHONPATH": str(self._shim)}))
        except Exception:
            shutil.rmtree(self._shim, ignore_errors=True)
            raise
        if self.tensorflow_loaded:  # cannot happen in the root (no TensorFlow), but prove it
            self.close()
            raise RuntimeError("litert-arm64: TensorFlow was imported in the emulated child")

    def close(self):
        try:
            super().close()
        finally:
            shutil.rmtree(self._shim, ignore_errors=True)
