"""OpenVINO Runtime on the CPU device: reads the IR (model.xml + model.bin), compiles it for CPU
and runs it, in a child process without TensorFlow (`isolate = True`, as an edge box runs it).

Precision: the CPU plugin executes in bfloat16 by default on CPUs with AVX512_BF16 or AMX
(`INFERENCE_PRECISION_HINT` = bf16), whatever the IR holds: measured on the digits model, 1.2e-2
max abs error on a softmax instead of 1e-7. The hint is a runtime setting, not part of the IR
(a `runtime_options` entry in the IR's rt_info is not honoured for it), so this session sets it
explicitly: `f32` unless told otherwise (`inference_precision` option). Deployments must do the
same: `core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})`.

Outputs come back keyed by the Keras names: the target gives every input and output port exactly
one tensor name, its Keras name.
"""

from __future__ import annotations

import numpy as np

from .base import Runtime, module_missing, register_runtime, run_in_batches

DEVICE = "CPU"
DEFAULT_PRECISION = "f32"


@register_runtime
class OpenVINOCPURuntime(Runtime):
    name = "openvino-cpu"
    isolate = True
    install_hint = "pip install openvino"

    def available(self):
        return module_missing("openvino", "openvino")

    @property
    def device(self) -> str | None:
        """Where it runs (`kexport doctor`): the CPU plugin, this host's CPU, the precision."""
        if self.available():
            return None
        info = device_info()
        return f"OpenVINO {info['openvino']} {info['device']} plugin on {info['device_name']}, " \
               f"inference precision {info['inference_precision']}"

    def load(self, path, **options):
        return OpenVINOSession(str(path), precision=options.get("inference_precision", DEFAULT_PRECISION),
                               num_threads=options.get("num_threads"))


def device_info(precision: str = DEFAULT_PRECISION) -> dict:
    """What the report records about the device: plugin name, CPU model, execution precision."""
    import openvino as ov

    core = ov.Core()
    return {"device": DEVICE, "device_name": str(core.get_property(DEVICE, "FULL_DEVICE_NAME")),
            "inference_precision": precision, "openvino": ov.get_version()}


class OpenVINOSession:
    def __init__(self, path: str, precision: str = DEFAULT_PRECISION, num_threads: int | None = None):
        import os

        import openvino as ov

        if os.path.isdir(path):  # a variant folder holding model.xml + model.bin
            path = os.path.join(path, "model.xml")
        core = ov.Core()
        try:
            model = core.read_model(path)
        except RuntimeError as e:
            raise RuntimeError(f"{path}: OpenVINO cannot read the IR: {_first(e)}") from e
        config = {"INFERENCE_PRECISION_HINT": precision}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:  # fail at load, not at the first call, for ops the CPU plugin lacks
            self.compiled = core.compile_model(model, DEVICE, config)
        except RuntimeError as e:
            raise RuntimeError(f"{path}: OpenVINO cannot compile the IR for {DEVICE}: {_first(e)}") from e
        got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "f32" and "32" not in got:
            raise RuntimeError(f"{path}: the {DEVICE} plugin runs in {got} although f32 was requested")
        self.request = self.compiled.create_infer_request()
        self.inputs = [(p.get_any_name(), _numpy_type(p.get_element_type())) for p in self.compiled.inputs]
        self.outputs = [p.get_any_name() for p in self.compiled.outputs]
        batches = set()
        for p in self.compiled.inputs:
            shape = p.get_partial_shape()
            batches.add(None if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[0].is_dynamic
                        else shape[0].get_length())
        self.batch = None if None in batches else min(batches)

    def _run(self, inputs):
        feed = {}
        for name, dt in self.inputs:
            x = np.asarray(inputs[name])
            feed[name] = np.ascontiguousarray(x if dt is None else x.astype(dt, copy=False))
        result = self.request.infer(feed)
        # copy: the request's output buffers are reused by the next call
        return {name: np.array(result[port]) for name, port in zip(self.outputs, self.compiled.outputs)}

    def predict(self, inputs):
        return run_in_batches(self._run, inputs, self.batch)

    def close(self):
        self.request = None
        self.compiled = None


def _numpy_type(element_type):
    try:
        return element_type.to_dtype()
    except (AttributeError, RuntimeError):  # dynamic/undefined element type: leave the array as given
        return None


def _first(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from src")]
    return (lines[0] if lines else type(e).__name__)[:400]
