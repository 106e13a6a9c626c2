"""The files TF-Serving reads besides the SavedModel, written with its own protocol buffers:
`models.config` (ModelServerConfig), `batching_parameters.txt` (BatchingParameters) and the
warmup TFRecord of PredictionLog records. Also the rules for names, versions and policies.

Example:
    params = BatchingParameters(max_batch_size=64, allowed_batch_sizes=(16, 32, 64)).validated()
    (repo / "batching_parameters.txt").write_text(params.to_text())
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ...errors import UsageError

CONFIG_NAME = "models.config"
BATCHING_NAME = "batching_parameters.txt"
WARMUP_NAME = "tf_serving_warmup_requests"  # TF-Serving reads exactly this file from assets.extra/
MAX_WARMUP_RECORDS = 1000  # TF-Serving refuses a warmup file with more records

# TF-Serving routes REST calls with `/v1/models/([^/:]+)...`, so '/' and ':' can never be served;
# anything beyond [A-Za-z0-9_.-] would need URL-escaping in every client and is a directory name
# under base_path. A leading '.' would also be hidden (kexport's temporary directories use it).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SIGNATURE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_model_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise UsageError(
            f"tf-serving: model name {name!r} cannot be served: TF-Serving's REST path /v1/models/NAME:predict "
            "excludes '/' and ':'; use letters, digits, '_', '.', '-' (not leading '.' or '-', max 128), e.g. --name digits"
        )
    return name


def check_signature_name(name: str) -> str:
    if not _SIGNATURE.fullmatch(name or "") or name == "serving_default":
        raise UsageError(f"tf-serving: --signature {name!r} is not a usable extra signature name; use an identifier "
                         "other than serving_default, e.g. --signature classify")
    return name


def model_versions(model_dir: Path) -> list[int]:
    """Version directories TF-Serving would load: positive integer names holding a saved_model.pb."""
    if not model_dir.is_dir():
        return []
    out = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0 and (
                (child / "saved_model.pb").exists() or (child / "saved_model.pbtxt").exists()):
            out.append(int(child.name))
    return sorted(out)


def repository_models(repo: Path) -> dict[str, list[int]]:
    """{model name: versions} for every servable model directory in the repository."""
    found = {}
    for child in sorted(repo.iterdir()) if repo.is_dir() else []:
        if child.is_dir() and _NAME.fullmatch(child.name):
            versions = model_versions(child)
            if versions:
                found[child.name] = versions
    return found


# ----------------------------------------------------------------------------- version policy
def parse_version_policy(text: str) -> tuple[str, tuple[int, ...]]:
    """'latest', 'latest:N', 'all', 'specific' (every version on disk) or 'specific:1,3'."""
    kind, _, arg = (text or "").partition(":")
    try:
        nums = tuple(int(v) for v in arg.split(",")) if arg else ()
    except ValueError:
        nums = (-1,)
    ok = (kind == "latest" and len(nums) <= 1) or (kind == "all" and not nums) or kind == "specific"
    if not ok or any(n < 1 for n in nums):
        raise UsageError(f"tf-serving: --version-policy {text!r} is not one of latest, latest:N, all, specific, "
                         "specific:V1,V2 (N and versions are positive integers)")
    return kind, nums


def set_version_policy(config, kind: str, nums: tuple[int, ...], on_disk: list[int], name: str) -> None:
    policy = config.model_version_policy
    policy.Clear()
    if kind == "latest":
        policy.latest.num_versions = nums[0] if nums else 1
    elif kind == "all":
        policy.all.SetInParent()
    else:
        wanted = list(nums) or list(on_disk)
        missing = sorted(set(wanted) - set(on_disk))
        if missing:
            raise UsageError(f"tf-serving: --version-policy specific lists versions {missing} that {name}/ does not "
                             f"have (it has {on_disk})")
        policy.specific.versions.extend(sorted(wanted))


# ----------------------------------------------------------------------------- models.config
def read_config(path: Path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(), config)
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: not a ModelServerConfig text proto ({e}); fix it or delete it and re-run") from e
    return config


def build_config(repo: Path, old, base_path: str, name: str, policy: tuple[str, tuple] | None, extra_versions=()):
    """A model_config_list naming every model in `repo` (plus `name` at `extra_versions`, about to
    be moved in). Settings of models already listed (policies, labels) are kept. `name` gets
    `policy` when given; else a `specific` list it already has gains the new versions; else it
    keeps its policy. A model not listed yet gets `specific` with every version on disk, so
    versions published side by side are all served and all listed."""
    from tensorflow_serving.config import model_server_config_pb2

    models = repository_models(repo)
    models[name] = sorted(set(models.get(name, [])) | set(extra_versions))
    previous = {c.name: c for c in old.model_config_list.config} if old.HasField("model_config_list") else {}
    config = model_server_config_pb2.ModelServerConfig()
    for model in sorted(models):
        entry = config.model_config_list.config.add()
        if model in previous:
            entry.CopyFrom(previous[model])
        entry.name = model
        entry.base_path = f"{base_path.rstrip('/')}/{model}"
        entry.model_platform = "tensorflow"
        if model == name and policy is not None:
            set_version_policy(entry, *policy, models[model], model)
        elif model not in previous:
            entry.model_version_policy.specific.versions.extend(models[model])
        elif model == name and entry.model_version_policy.WhichOneof("policy_choice") == "specific":
            listed = set(entry.model_version_policy.specific.versions) | set(extra_versions)
            entry.model_version_policy.specific.ClearField("versions")
            entry.model_version_policy.specific.versions.extend(sorted(listed))
    return config


def config_text(config) -> str:
    from google.protobuf import text_format

    return "# Written by kexport tf-serving: one entry per model directory in this repository.\n" + \
        text_format.MessageToString(config)


def served_versions(entry, on_disk: list[int]) -> list[int]:
    """The versions TF-Serving serves for one config entry, given the versions on disk."""
    which = entry.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        return list(on_disk)
    if which == "specific":
        return [v for v in on_disk if v in set(entry.model_version_policy.specific.versions)]
    n = entry.model_version_policy.latest.num_versions or 1
    return sorted(on_disk)[-n:]


# ----------------------------------------------------------------------------- batching
@dataclass(frozen=True)
class BatchingParameters:
    """TF-Serving's BatchingParameters (session_bundle_config.proto), with kexport's defaults.

    Defaults are for a small CPU host: batches of up to 32 rows formed within 1 ms (a latency
    cost a request barely notices), one batch thread per core of a 4-core host, and padding only
    to 8/16/32 rows so each of the three batch shapes is compiled once and warmed up.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 4
    max_enqueued_batches: int = 100
    allowed_batch_sizes: tuple[int, ...] = (8, 16, 32)

    # (low, high) accepted for each scalar field; beyond these TF-Serving either refuses to start or
    # the setting is surely a typo (a 1-minute batching delay, a million threads).
    RANGES = {"max_batch_size": (1, 65536), "batch_timeout_micros": (0, 60_000_000),
              "num_batch_threads": (1, 1024), "max_enqueued_batches": (1, 1_000_000)}

    def validated(self) -> "BatchingParameters":
        for name, (low, high) in self.RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"tf-serving: --{name.replace('_', '-')} {value} is out of range [{low}, {high}]")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes:
            if any(b < 1 for b in sizes) or list(sizes) != sorted(set(sizes)):
                raise UsageError(f"tf-serving: --allowed-batch-sizes {','.join(map(str, sizes))} must be positive "
                                 "and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise UsageError(f"tf-serving: the last --allowed-batch-sizes entry ({sizes[-1]}) must equal "
                                 f"--max-batch-size ({self.max_batch_size}); TF-Serving refuses anything else")
        return self

    def to_proto(self):
        msg = _batching_class()()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "allowed_batch_sizes":
                msg.allowed_batch_sizes.extend(value)
            else:
                getattr(msg, f.name).value = value
        return msg

    def to_text(self) -> str:
        from google.protobuf import text_format

        return ("# TF-Serving BatchingParameters (kexport tf-serving); pass with --enable_batching "
                "--batching_parameters_file\n" + text_format.MessageToString(self.to_proto()))

    @classmethod
    def from_text(cls, text: str) -> "BatchingParameters":
        from google.protobuf import text_format

        msg = text_format.Parse(text, _batching_class()())
        return cls(**{f.name: (tuple(msg.allowed_batch_sizes) if f.name == "allowed_batch_sizes"
                               else getattr(msg, f.name).value) for f in fields(cls)})

    def to_json(self) -> dict:
        return asdict(self)


_BATCHING_CLASS = []


def _batching_class():
    """BatchingParameters as declared in tensorflow_serving/servables/tensorflow/
    session_bundle_config.proto (same package, names, numbers and wrapper types). The
    tensorflow-serving-api wheel does not ship that message, so it is built here in a private pool."""
    if not _BATCHING_CLASS:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
        f = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/servables/tensorflow/batching_parameters.proto",
                                               package="tensorflow.serving", syntax="proto3",
                                               dependency=["google/protobuf/wrappers.proto"])
        m = f.message_type.add(name="BatchingParameters")
        T = descriptor_pb2.FieldDescriptorProto
        for number, name, wrapper in ((1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                      (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                      (5, "thread_pool_name", "StringValue")):
            m.field.add(name=name, number=number, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                        type_name=f".google.protobuf.{wrapper}")
        m.field.add(name="allowed_batch_sizes", number=6, type=T.TYPE_INT64, label=T.LABEL_REPEATED)
        m.field.add(name="pad_variable_length_inputs", number=7, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL)
        pool.Add(f)
        _BATCHING_CLASS.append(message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")))
    return _BATCHING_CLASS[0]


# ----------------------------------------------------------------------------- warmup requests
def warmup_batches(inputs: dict[str, np.ndarray], max_rows: int) -> list[np.ndarray]:
    """Row indices of each warmup request: the reference batch in chunks of at most `max_rows`
    (with batching on, TF-Serving fails a larger request, and a failed warmup request fails the
    model load), then each row alone, so both batched and single calls are warm."""
    n = len(next(iter(inputs.values())))
    batches = [np.arange(i, min(i + max_rows, n)) for i in range(0, n, max_rows)] if n > 1 else []
    batches += [np.array([i]) for i in range(n)]
    return batches[: MAX_WARMUP_RECORDS - 1]


def predict_log(model_name: str, signature: str, inputs: dict[str, np.ndarray]):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup(path: Path, logs) -> int:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
            n += 1
    return n


def read_warmup(path: Path) -> list:
    """PredictionLog records of a warmup file, parsed with tensorflow-serving-api's protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
