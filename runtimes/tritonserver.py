"""`tritonserver`: the real NVIDIA Triton Inference Server, started on the model repository and
asked over HTTP with the official `tritonclient.http` client.

Triton (with its onnxruntime and tensorflow backends) ships as NGC container images and source
builds; neither can be installed on this machine, so here the row is `skipped` with that reason.
Where `tritonserver` is on PATH (e.g. inside nvcr.io/nvidia/tritonserver) the row runs for real.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .base import Runtime, module_missing, register_runtime

NOT_HERE = ("the Triton Inference Server cannot be installed here: NVIDIA ships tritonserver with its onnxruntime/"
            "tensorflow backends only as the NGC container nvcr.io/nvidia/tritonserver or a source build, and this "
            "machine reaches only PyPI, Debian, npm and Maven (nvidia-pytriton's bundled binary has the python backend "
            "only); triton-config checks config.pbtxt instead")
READY_TIMEOUT_S = 120.0


@register_runtime
class TritonServerRuntime(Runtime):
    name = "tritonserver"
    install_hint = "docker run nvcr.io/nvidia/tritonserver:<yy.mm>-py3 (see docs/deploy.md)"

    def available(self):
        if shutil.which("tritonserver") is None:
            return NOT_HERE
        return module_missing("tritonclient.http", "tritonclient[http]")

    def load(self, path, **options):
        return TritonServerSession(Path(path), options["model"])


class TritonServerSession:
    def __init__(self, repo: Path, model: str):
        import tritonclient.http as httpclient

        from .flask_http import free_port

        self.model = model
        port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="kexport-triton-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            ["tritonserver", f"--model-repository={repo}", f"--http-port={port}", "--allow-grpc=false",
             "--allow-metrics=false", "--model-control-mode=none", "--strict-readiness=true"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode}: {self._tail()}")
            try:
                if self.client.is_model_ready(model):
                    break
            except Exception:  # connection refused while it starts  # noqa: BLE001
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"model {model!r} not ready within {READY_TIMEOUT_S:.0f}s: {self._tail()}")
            time.sleep(0.2)
        meta = self.client.get_model_metadata(model)
        self.inputs = {i["name"]: i["datatype"] for i in meta["inputs"]}
        self.outputs = [o["name"] for o in meta["outputs"]]

    def _tail(self) -> str:
        return " | ".join(Path(self.log.name).read_text(errors="replace").strip().splitlines()[-5:])

    def predict(self, inputs):
        import tritonclient.http as httpclient
        from tritonclient.utils import triton_to_np_dtype

        reqs = []
        for name, datatype in self.inputs.items():
            arr = np.asarray(inputs[name]).astype(triton_to_np_dtype(datatype))
            r = httpclient.InferInput(name, list(arr.shape), datatype)
            r.set_data_from_numpy(arr, binary_data=True)
            reqs.append(r)
        res = self.client.infer(self.model, reqs, outputs=[httpclient.InferRequestedOutput(o) for o in self.outputs])
        return {o: res.as_numpy(o) for o in self.outputs}

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
