"""config.pbtxt for a Triton model, built as Triton's own `ModelConfig` protobuf (shipped in
tritonclient) and written with `text_format.MessageToString`: every name lands in the file as a
quoted, escaped protobuf string, never pasted into text.

The IO comes from the artifact (ONNX graph inputs/outputs, or the SavedModel's serving_default
signature), so the config describes what Triton will load; the target then checks it against the
Keras signature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# signature dtype name (numpy's, or Keras' "string") -> Triton DataType (model_config.proto); Triton
# serves TYPE_STRING as the v2 protocol's BYTES
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
                "string": "TYPE_STRING"}
PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorflow_savedmodel": "model.savedmodel"}
WARMUP_DIR = "warmup"  # Triton reads model_warmup input_data_file from NAME/warmup/
# Triton model names are directory names and URL path segments (/v2/models/NAME).
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def dtype_name(dtype) -> str:
    """A model file's NumPy dtype as the Keras signature names it: strings (ONNX's object
    arrays, TensorFlow's bytes) are "string", as Keras' `Input(dtype="string")`."""
    dtype = np.dtype(dtype)
    return "string" if dtype.kind in "OSU" else dtype.name


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str  # numpy dtype name, or "string"
    shape: tuple  # full shape, -1 for a free dimension (the batch one included)


def safe_model_name(name: str) -> str:
    """A default Triton model name from a file stem: unsupported characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".-")[:128]
    return cleaned or "model"


def check_model_name(name: str) -> str | None:
    """None when `name` is a valid Triton model name, else the reason."""
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        return (f"model name {name!r}: use 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-' "
                "(it is a directory name and part of the URL /v2/models/NAME)")
    return None


def onnx_io(path: Path) -> tuple[list[IOSpec], list[IOSpec]]:
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return IOSpec(v.name, dtype_name(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)

    inits = {i.name for i in model.graph.initializer}
    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def saved_model_io(path: Path) -> tuple[list[IOSpec], list[IOSpec]]:
    """serving_default of saved_model.pb (read as a protobuf, no graph loading)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((path / "saved_model.pb").read_bytes())
    sd = next(m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags).signature_def["serving_default"]

    def spec(key, info):
        dims = tuple(-1 if d.size < 0 else d.size for d in info.tensor_shape.dim)
        return IOSpec(key, dtype_name(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype), dims)

    return [spec(k, v) for k, v in sd.inputs.items()], [spec(k, v) for k, v in sd.outputs.items()]


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    platform: str
    max_batch_size: int
    instances: int
    max_queue_delay_us: int


def batched(inputs: list[IOSpec], outputs: list[IOSpec]) -> bool:
    """Triton batching needs a free first dimension on every input and output."""
    return all(s.shape and s.shape[0] == -1 for s in inputs + outputs)


def build_config(spec: ConfigSpec, inputs: list[IOSpec], outputs: list[IOSpec], warmup: list[dict]):
    """ModelConfig message. `warmup`: [{"name", "batch_size", "files": {input: (file, dims)}}]."""
    from tritonclient.grpc import model_config_pb2 as mc

    batch = batched(inputs, outputs)
    cfg = mc.ModelConfig(name=spec.name, platform=spec.platform, max_batch_size=spec.max_batch_size if batch else 0)

    def dims(s: IOSpec):
        return list(s.shape[1:] if batch else s.shape)

    for field, specs in ((cfg.input, inputs), (cfg.output, outputs)):
        for s in specs:
            io = field.add(name=s.name, data_type=mc.DataType.Value(TRITON_TYPES[s.dtype]), dims=dims(s) or [1])
            if not dims(s):  # a (batch,) tensor: Triton wants dims [1] reshaped to [] (its documented idiom)
                io.reshape.SetInParent()
    if batch:
        cfg.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    cfg.instance_group.add(count=spec.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    for w in warmup:
        sample = cfg.model_warmup.add(name=w["name"], batch_size=w["batch_size"] if batch else 1, count=1)
        for s in inputs:
            sample.inputs[s.name].data_type = mc.DataType.Value(TRITON_TYPES[s.dtype])
            fname, wdims = w["files"][s.name]
            sample.inputs[s.name].dims.extend(wdims)
            sample.inputs[s.name].input_data_file = fname
    return cfg


def write_warmup(model_dir: Path, inputs: list[IOSpec], reference: dict[str, np.ndarray],
                 batch: bool) -> dict[str, tuple[str, list[int]]]:
    """The first reference sample of each input as raw row-major bytes in NAME/warmup/ (a
    string input: each element a 4-byte little-endian length and its UTF-8 bytes, as Triton
    reads TYPE_STRING warmup data).

    Returns {input: (file, dims)}: files are named by position (input names may hold characters
    a file name cannot); dims are the sample's concrete shape (a free dimension takes the
    reference's size: warmup dims must be concrete), without the batch dimension when batching.
    """
    out = model_dir / WARMUP_DIR
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, s in enumerate(inputs):
        rows = s.shape[0] if not batch and s.shape and s.shape[0] > 0 else 1  # a fixed first dim is not a batch
        arr = np.asarray(reference[s.name][:rows])
        if s.dtype == "string":
            raw = string_bytes(arr)
        else:
            arr = np.ascontiguousarray(arr.astype(s.dtype))
            raw = arr.tobytes()
        fname = f"input_{i}.bin"
        (out / fname).write_bytes(raw)
        files[s.name] = (fname, list(arr.shape[1:] if batch else arr.shape) or [1])
    return files


def string_bytes(arr: np.ndarray) -> bytes:
    """Triton's serialization of a string tensor: per element (row-major) a 4-byte little-endian
    length, then the bytes (str elements as UTF-8)."""
    import struct

    items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in np.asarray(arr).reshape(-1)]
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def to_text(cfg) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)
