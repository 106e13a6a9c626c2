"""`triton-config`: a Triton model repository checked and run the way Triton would, without the
server binary.

`load(repo)` parses NAME/config.pbtxt strictly with Triton's own `model_config` protobuf (shipped
in tritonclient; an unknown field or a bad enum is an error, as in Triton), then checks it against
the model file Triton would load (the latest version's model.onnx or model.savedmodel): the same
input/output names, data types and dims (the batch dimension as max_batch_size), the warmup
samples (files present, byte sizes exact, replayed through the model). `predict` feeds the model
*by the config's names and data types* in batches of at most max_batch_size and returns the
outputs under the config's names, checked against the config's dims; parity compares those with
Keras. The model runs in onnxruntime (platform onnxruntime_onnx) or TensorFlow
(tensorflow_savedmodel), the engines inside Triton's backends.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .base import Runtime, module_missing, register_runtime

MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorflow_savedmodel": "model.savedmodel"}
BACKENDS = {"onnxruntime": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel"}


@register_runtime
class TritonConfigRuntime(Runtime):
    name = "triton-config"
    install_hint = "pip install 'kexport[triton]' (tritonclient, onnxruntime)"

    def available(self):
        return module_missing("tritonclient", "tritonclient") or module_missing("onnxruntime", "onnxruntime")

    def load(self, path, **options):
        return TritonConfigSession(Path(path), options.get("model"))


def triton_dtype(type_name: str) -> np.dtype:
    """TYPE_FP32 -> float32 (TYPE_STRING -> object)."""
    t = type_name.removeprefix("TYPE_")
    table = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64, "STRING": np.object_}
    if t not in table:
        raise ValueError(f"data type {type_name} has no NumPy equivalent")
    return np.dtype(table[t])


def type_name(dtype: np.dtype) -> str:
    """For messages and comparisons: every string representation (object, bytes, unicode) is
    Triton's one STRING type."""
    return "STRING" if np.dtype(dtype).kind in "OSU" else np.dtype(dtype).name


def read_strings(raw: bytes, count: int, what: str) -> np.ndarray:
    """TYPE_STRING data as Triton serializes it: per element a 4-byte little-endian length, then
    the bytes; exactly `count` elements filling `raw`."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            break
        (length,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + length > len(raw):
            break
        out.append(raw[pos + 4:pos + 4 + length])
        pos += 4 + length
    if len(out) != count or pos != len(raw):
        raise ValueError(f"{what}: not {count} length-prefixed strings ({len(raw)} bytes)")
    arr = np.empty(count, dtype=object)
    arr[:] = [b.decode("utf-8", "replace") for b in out]
    return arr


def read_config(model_dir: Path):
    """ModelConfig parsed strictly (text_format refuses unknown fields and bad enum names)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text = (model_dir / "config.pbtxt").read_text()
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{model_dir.name}/config.pbtxt does not parse as Triton's ModelConfig: {e}") from e


def find_model_dir(repo: Path, model: str | None) -> Path:
    if model:
        return repo / model
    dirs = [d for d in sorted(repo.iterdir()) if (d / "config.pbtxt").is_file()]
    if len(dirs) != 1:
        raise ValueError(f"{repo}: expected one model directory with config.pbtxt, found {[d.name for d in dirs]}")
    return dirs[0]


class TritonConfigSession:
    def __init__(self, repo: Path, model: str | None = None):
        from tritonclient.grpc import model_config_pb2 as mc

        self.dir = find_model_dir(repo, model)
        cfg = self.cfg = read_config(self.dir)
        problems = []
        if cfg.name and cfg.name != self.dir.name:  # Triton refuses a name that is not the directory's
            problems.append(f"config name {cfg.name!r} != directory {self.dir.name!r}")
        platform = cfg.platform or BACKENDS.get(cfg.backend, "")
        if platform not in MODEL_FILES:
            raise ValueError(f"config.pbtxt: platform {cfg.platform!r} / backend {cfg.backend!r} is not one kexport writes")
        versions = sorted(int(d.name) for d in self.dir.iterdir() if d.is_dir() and d.name.isdigit())
        if not versions:
            raise ValueError(f"{self.dir}: no numeric version directory")
        filename = cfg.default_model_filename or MODEL_FILES[platform]
        model_path = self.dir / str(versions[-1]) / filename  # version_policy default: latest 1
        if not model_path.exists():
            raise ValueError(f"{model_path}: the file Triton loads for platform {platform} is missing")
        self.max_batch = cfg.max_batch_size
        self.inputs = {i.name: self._spec(i, mc) for i in cfg.input}
        self.outputs = {o.name: self._spec(o, mc) for o in cfg.output}
        self.engine = OnnxEngine(model_path) if platform == "onnxruntime_onnx" else SavedModelEngine(model_path)
        problems += self._check_io(self.inputs, self.engine.inputs, "input")
        problems += self._check_io(self.outputs, self.engine.outputs, "output")
        if self.max_batch == 0 and cfg.HasField("dynamic_batching"):
            problems.append("dynamic_batching needs max_batch_size > 0")
        if problems:
            raise ValueError("config.pbtxt does not match the model: " + "; ".join(problems))
        self._replay_warmup(mc)

    def _spec(self, io, mc):
        """(dtype, full model-side shape): the batch dimension in front when batching; a
        reshape gives the shape the model sees."""
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        return triton_dtype(mc.DataType.Name(io.data_type)), ([-1] if self.max_batch > 0 else []) + dims, list(io.dims)

    @staticmethod
    def _check_io(config: dict, model: dict, kind: str) -> list[str]:
        problems = []
        if set(config) != set(model):
            return [f"{kind}s {sorted(config)} != the model's {sorted(model)}"]
        for name, (dtype, shape, _) in config.items():
            mdtype, mshape = model[name]
            if type_name(dtype) != type_name(mdtype):
                problems.append(f"{kind} {name}: data type {type_name(dtype)} != the model's {type_name(mdtype)}")
            if list(shape) != list(mshape):
                problems.append(f"{kind} {name}: dims {shape} != the model's {mshape}")
        return problems

    def _replay_warmup(self, mc) -> None:
        for w in self.cfg.model_warmup:
            if w.batch_size < 1 or w.batch_size > max(1, self.max_batch):
                raise ValueError(f"warmup {w.name!r}: batch_size {w.batch_size} outside [1, {max(1, self.max_batch)}]")
            if set(w.inputs) != set(self.inputs):
                raise ValueError(f"warmup {w.name!r}: inputs {sorted(w.inputs)} != config inputs {sorted(self.inputs)}")
            feed = {}
            for name, inp in w.inputs.items():
                dtype, _, dims = self.inputs[name]
                if triton_dtype(mc.DataType.Name(inp.data_type)) != dtype:
                    raise ValueError(f"warmup {w.name!r} input {name}: data type differs from the config's")
                fits = len(inp.dims) == len(dims) and all(d == c or c == -1 for d, c in zip(inp.dims, dims))
                if not fits or min(inp.dims, default=1) < 1:
                    raise ValueError(f"warmup {w.name!r} input {name}: dims {list(inp.dims)} do not fit {dims}")
                f = self.dir / "warmup" / inp.input_data_file
                if (self.dir / "warmup").resolve() not in f.resolve().parents:  # Triton reads only warmup/
                    raise ValueError(f"warmup {w.name!r} input {name}: {inp.input_data_file!r} is outside warmup/")
                if not f.is_file():
                    raise ValueError(f"warmup {w.name!r} input {name}: {f} missing")
                raw = f.read_bytes()
                count = int(np.prod(inp.dims))
                if type_name(dtype) == "STRING":
                    sample = read_strings(raw, count, f"warmup {w.name!r} input {name}: {f.name}").reshape(list(inp.dims))
                else:
                    want = count * dtype.itemsize
                    if len(raw) != want:
                        raise ValueError(f"warmup {w.name!r} input {name}: {f.name} has {len(raw)} bytes, dims need {want}")
                    sample = np.frombuffer(raw, dtype=dtype).reshape(list(inp.dims))
                feed[name] = np.repeat(sample[None], w.batch_size, axis=0) if self.max_batch > 0 else sample
            self._run(feed)  # Triton fails the model load when a warmup request fails

    def _run(self, feed: dict) -> dict:
        got = self.engine.run({k: feed[k] for k in self.inputs}, list(self.outputs))
        for name, (dtype, shape, _) in self.outputs.items():
            arr = got[name]
            if arr.ndim != len(shape) or any(c != -1 and c != d for c, d in zip(shape, arr.shape)):
                raise ValueError(f"output {name}: shape {arr.shape} does not fit the config's {shape}")
        return got

    def predict(self, inputs):
        feed = {name: np.asarray(inputs[name]).astype(dtype) for name, (dtype, _, _) in self.inputs.items()}
        if self.max_batch == 0:
            return self._run(feed)
        n = len(next(iter(feed.values())))
        parts = [self._run({k: v[i : i + self.max_batch] for k, v in feed.items()}) for i in range(0, n, self.max_batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.outputs}

    def close(self):
        pass


class OnnxEngine:
    def __init__(self, path: Path):
        import onnxruntime as ort

        from .onnxruntime_runtime import _ORT_TYPES

        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def spec(v):
            return np.dtype(_ORT_TYPES[v.type]), [d if isinstance(d, int) else -1 for d in v.shape]

        self.inputs = {v.name: spec(v) for v in self.sess.get_inputs()}
        self.outputs = {v.name: spec(v) for v in self.sess.get_outputs()}

    def run(self, feed: dict, names: list[str]) -> dict:
        return dict(zip(names, self.sess.run(names, feed)))


class SavedModelEngine:
    """serving_default, keyed as Triton's TensorFlow backend keys it (signature def keys)."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(path))
        self.fn = self.loaded.signatures["serving_default"]

        def spec(s):
            return np.dtype(s.dtype.as_numpy_dtype), [-1 if d is None else d for d in s.shape.as_list()]

        self.inputs = {k: spec(s) for k, s in self.fn.structured_input_signature[1].items()}
        self.outputs = {k: spec(s) for k, s in self.fn.structured_outputs.items()}

    def run(self, feed: dict, names: list[str]) -> dict:
        import tensorflow as tf

        out = self.fn(**{k: tf.constant(v) for k, v in feed.items()})
        return {k: out[k].numpy() for k in names}
