"""Checks that run on a model file *before* anything in it is read whole or executed.

A model is a program: a `.keras`/`.h5` file carries configs that name classes and arrays that get
allocated, a SavedModel carries graphs that run. The loader calls one function per format at the
top of its load path:

- `check_model_file(path, safe_mode=)` for `.keras` / `.h5`: archive members and HDF5 attributes
  and datasets are sized from their headers (never by reading them) against the caps below, so a
  decompression or shape bomb is refused in one line before it costs memory; in safe mode HDF5
  external links, external and virtual datasets (they read other files) are refused too.
- `check_saved_model(path, safe_mode=)`: `saved_model.pb` is parsed as a protobuf (nothing loaded,
  nothing run) and every op of every graph and function is checked against an allowlist of pure ops;
  file/system IO, Python callbacks and the like are refused unless `--unsafe`.

Caps (environment overrides for a genuine file that exceeds them, see docs/security.md):
KEXPORT_MAX_CONFIG_MIB (64), KEXPORT_MAX_RATIO (100), KEXPORT_MAX_UNPACKED_GIB (64),
KEXPORT_MAX_GRAPH_MIB (1024).
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import struct
import zipfile
from pathlib import Path

from .errors import ModelLoadError

MIB, GIB = 1 << 20, 1 << 30
RATIO_FLOOR = 1 * MIB  # members/datasets smaller than this may compress arbitrarily well (harmless)
MAX_MEMBERS = 100_000
CHUNK = 1 * MIB
JSON_MEMBERS = ("config.json", "metadata.json")
WEIGHTS_MEMBER = "model.weights.h5"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ModelLoadError(f"{name}={raw!r}: expected a number (see docs/security.md)") from None
    if value <= 0:
        raise ModelLoadError(f"{name}={raw!r}: expected a positive number (see docs/security.md)")
    return value


def limits() -> dict:
    """The caps in force (bytes / ratio), environment overrides applied."""
    return {
        "config_bytes": int(_env_number("KEXPORT_MAX_CONFIG_MIB", 64) * MIB),
        "ratio": _env_number("KEXPORT_MAX_RATIO", 100),
        "unpacked_bytes": int(_env_number("KEXPORT_MAX_UNPACKED_GIB", 64) * GIB),
        "graph_bytes": int(_env_number("KEXPORT_MAX_GRAPH_MIB", 1024) * MIB),
    }


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _refuse(path, what: str, problem: str, env: str | None = None) -> ModelLoadError:
    fix = f"if this file is genuine and trusted, raise the cap with {env}=... (docs/security.md)" if env else \
        "re-save the model with model.save('model.keras')"
    return ModelLoadError(f"{path}: {what} {problem}; refused before reading it (possible decompression bomb); {fix}")


# --------------------------------------------------------------------------- .keras / .h5

def check_model_file(path, *, safe_mode: bool = True) -> None:
    """Size every member of a `.keras` archive / every attribute and dataset of an `.h5` file
    from its headers; raise ModelLoadError (exit 2) on anything over the caps."""
    path = Path(path)
    lim = limits()
    if path.suffix == ".keras":
        _check_archive(path, lim, safe_mode)
    elif path.suffix in (".h5", ".hdf5"):
        _check_h5_path(path, lim, safe_mode)


def _check_archive(path: Path, lim: dict, safe_mode: bool) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # the loader reports a corrupt archive in its own words
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _refuse(path, f"archive holds {len(infos)} members", f"(cap {MAX_MEMBERS})")
        total = 0
        for info in infos:
            total += info.file_size
            name = info.filename
            if name in JSON_MEMBERS and info.file_size > lim["config_bytes"]:
                raise _refuse(path, f"member '{name}' inflates to {_size(info.file_size)}",
                              f"(cap {_size(lim['config_bytes'])})", "KEXPORT_MAX_CONFIG_MIB")
            if info.file_size > RATIO_FLOOR and info.file_size > lim["ratio"] * max(info.compress_size, 1):
                ratio = info.file_size / max(info.compress_size, 1)
                raise _refuse(path, f"member '{name}' inflates {ratio:.0f}:1 ({_size(info.compress_size)} -> "
                              f"{_size(info.file_size)})", f"(cap {lim['ratio']:g}:1; Keras stores members "
                              "uncompressed)", "KEXPORT_MAX_RATIO")
        if total > lim["unpacked_bytes"]:
            raise _refuse(path, f"archive inflates to {_size(total)} in total",
                          f"(cap {_size(lim['unpacked_bytes'])})", "KEXPORT_MAX_UNPACKED_GIB")
        for name in JSON_MEMBERS:
            if name in zf.NameToInfo:
                _stream_member(path, zf, name, lim["config_bytes"])
        if WEIGHTS_MEMBER in zf.NameToInfo:
            info = zf.getinfo(WEIGHTS_MEMBER)
            with _member_file(path, zf, info) as fh:
                _check_h5_file(fh, f"{path}: member '{WEIGHTS_MEMBER}'", lim, safe_mode)


def _stream_member(path: Path, zf: zipfile.ZipFile, name: str, limit: int) -> int:
    """Inflate a member in fixed chunks, keeping none of it: a header that lies about the size is
    caught at `limit` bytes, with constant memory. Returns the inflated size."""
    n = 0
    try:
        with zf.open(name) as fh:
            while chunk := fh.read(CHUNK):
                n += len(chunk)
                if n > limit:
                    raise _refuse(path, f"member '{name}' inflates past {_size(limit)}", "(cap)",
                                  "KEXPORT_MAX_CONFIG_MIB")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(f"{path}: member '{name}' is corrupt ({type(e).__name__}: {e}); the file may be "
                             "truncated or tampered with - re-save it with model.save('model.keras')") from e
    return n


class _Slice(io.RawIOBase):
    """A read-only window [start, start+size) of a file: a stored (uncompressed) zip member,
    opened in place so HDF5 can seek in it without inflating or copying anything."""

    def __init__(self, path: Path, start: int, size: int):
        super().__init__()
        self._fh = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf):
        n = max(0, min(len(buf), self._size - self._pos))
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self):
        self._fh.close()
        super().close()


def _member_file(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            header = fh.read(30)
        if len(header) == 30 and header[:4] == b"PK\x03\x04":
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            return _Slice(path, info.header_offset + 30 + name_len + extra_len, info.file_size)
    return zf.open(info)  # compressed: seekable (ZipExtFile), only headers are read


def _check_h5_path(path: Path, lim: dict, safe_mode: bool) -> None:
    try:
        fh = open(path, "rb")
    except OSError:
        return  # the loader reports it
    with fh:
        _check_h5_file(fh, str(path), lim, safe_mode)


def _check_h5_file(fileobj, label: str, lim: dict, safe_mode: bool) -> None:
    """Attributes (the model config lives in one) and datasets sized from their headers."""
    import h5py

    try:
        f = h5py.File(fileobj, "r")
    except (OSError, ValueError):
        return  # not HDF5: the loader (or Keras) reports it in its own words
    problems: list[tuple[str, str, str | None]] = []

    def attrs_of(name: str, obj) -> None:
        for key in obj.attrs:
            try:
                size = obj.attrs.get_id(key).get_storage_size()
            except (KeyError, OSError, RuntimeError):
                continue
            if size > lim["config_bytes"]:
                problems.append((f"attribute '{name}@{key}' holds {_size(size)}",
                                 f"(cap {_size(lim['config_bytes'])})", "KEXPORT_MAX_CONFIG_MIB"))

    total = 0

    def visit(name: str, link) -> None:
        nonlocal total
        if isinstance(link, h5py.ExternalLink):
            if safe_mode:
                problems.append((f"external link '{name}' -> {link.filename}", "reads another file", None))
            return
        if isinstance(link, h5py.SoftLink):
            return
        obj = f.get(name)
        if obj is None:
            return
        attrs_of(name, obj)
        if not isinstance(obj, h5py.Dataset):
            return
        if safe_mode and (obj.external or obj.is_virtual):
            problems.append((f"dataset '{name}' is {'external' if obj.external else 'virtual'}",
                             "(its data is read from another file)", None))
            return
        declared = math.prod(obj.shape or ()) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        total += declared
        if declared > RATIO_FLOOR and declared > lim["ratio"] * max(stored, 1):
            problems.append((f"dataset '{name}' declares {_size(declared)} but stores {_size(stored)}",
                             f"(cap {lim['ratio']:g}:1)", "KEXPORT_MAX_RATIO"))

    try:
        with f:
            attrs_of("/", f)
            f.visititems_links(visit)
    except (OSError, RuntimeError, ValueError, KeyError):
        pass  # a damaged file: the loader reports it
    if not problems and total > lim["unpacked_bytes"]:
        problems.append((f"datasets declare {_size(total)} in total", f"(cap {_size(lim['unpacked_bytes'])})",
                         "KEXPORT_MAX_UNPACKED_GIB"))
    if problems:
        what, problem, env = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        if env is None:
            raise ModelLoadError(f"{label}: {what} {problem}{more}; refused in safe mode; re-run with --unsafe "
                                 "only if you trust this file")
        raise _refuse(label, what, problem + more, env)


# --------------------------------------------------------------------------- SavedModel

# Stateful ops that touch only the model's own state (variables, tables, RNG, control flow), and
# pure ops the name patterns below would catch.
ALSO_ALLOWED = frozenset("""
XlaOptimizationBarrier VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp VarIsInitializedOp
DestroyResourceOp ResourceGather ResourceGatherNd ResourceScatterAdd ResourceScatterUpdate
VariableV2 Variable Assign AssignAdd AssignSub IsVariableInitialized TemporaryVariable DestroyTemporaryVariable
StatefulPartitionedCall While If Case For Assert NoOp
RandomUniform RandomUniformInt RandomStandardNormal TruncatedNormal Multinomial RandomShuffle RandomGamma
RandomPoisson RandomPoissonV2 ParameterizedTruncatedNormal RngSkip RngReadAndSkip StatefulUniform
StatefulUniformInt StatefulUniformFullInt StatefulStandardNormalV2 StatefulTruncatedNormal
NonDeterministicInts
HashTable HashTableV2 MutableHashTable MutableHashTableV2 MutableHashTableOfTensors MutableHashTableOfTensorsV2
MutableDenseHashTable MutableDenseHashTableV2 AnonymousHashTable AnonymousMutableHashTable
AnonymousMutableHashTableOfTensors AnonymousMutableDenseHashTable LookupTableFind LookupTableFindV2
LookupTableImport LookupTableImportV2 LookupTableInsert LookupTableInsertV2 LookupTableSize LookupTableSizeV2
LookupTableExport LookupTableExportV2 LookupTableRemoveV2 InitializeTable InitializeTableV2
TensorArrayV3 TensorArrayReadV3 TensorArrayWriteV3 TensorArrayGatherV3 TensorArrayScatterV3
TensorArrayConcatV3 TensorArraySplitV3 TensorArraySizeV3 TensorArrayCloseV3 TensorArrayGradV3
StackV2 StackPushV2 StackPopV2 StackCloseV2
""".split())
# Only inside the functions that save/restore variables (saver_def, saveable objects).
CHECKPOINT_OPS = frozenset("""
SaveV2 RestoreV2 MergeV2Checkpoints ShardedFilename ShardedFilespec DisableCopyOnRead StringJoin
StaticRegexFullMatch Save SaveSlices Restore RestoreSlice
""".split())
# Never pure even when the registry does not mark them stateful: files, processes, network,
# Python callbacks, debug sinks, input pipelines (datasets/readers/queues/iterators), process abort,
# foreign code (XLA custom calls, MLIR passthrough).
DENIED = frozenset("""
ReadFile WriteFile MatchingFiles ImmutableConst PyFunc PyFuncStateless EagerPyFunc Print PrintV2
InitializeTableFromTextFile InitializeTableFromTextFileV2 DecodeProtoV2 EncodeProto
LoadAndRemapMatrix Rpc TryRpc WriteSummary WriteAudioSummary WriteImageSummary WriteScalarSummary
WriteHistogramSummary WriteRawProtoSummary WriteGraphSummary CreateSummaryFileWriter
CreateSummaryDbWriter TfLiteSubgraphExecute BatchFunction Abort XlaCustomCall XlaCustomCallV2 XlaLaunch
XlaLaunchV2 MlirPassthroughOp
""".split())
_DENIED_PATTERN = re.compile(r"File|Dataset|Reader|Queue|Iterator|Debug|Snapshot|TPU|Tpu|Py|Rpc|Collective"
                             r"|Summary|Barrier|^DTensor|^_")


def _registry_pure() -> set[str]:
    """Registered ops TensorFlow does not mark stateful, minus everything that reads, writes or
    calls out. Unregistered (custom) ops are never pure."""
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    buf = pywrap_tf_session.TF_GetAllOpList()
    try:
        ops = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(buf))
    finally:
        pywrap_tf_session.TF_DeleteBuffer(buf)
    return {o.name for o in ops.op if not o.is_stateful and not _DENIED_PATTERN.search(o.name)}


@functools.lru_cache(maxsize=1)
def allowed_ops() -> frozenset[str]:
    return frozenset((_registry_pure() | ALSO_ALLOWED) - DENIED)


def _called_functions(node) -> set[str]:
    out = set()
    for attr in node.attr.values():
        if attr.HasField("func"):
            out.add(attr.func.name)
        if attr.HasField("list"):
            out.update(f.name for f in attr.list.func)
    return out


def _input_nodes(node) -> list[str]:
    return [i.lstrip("^").split(":")[0] for i in node.input]


def _reach(roots: set[str], nodes: dict, functions: dict) -> set[str]:
    """Function names reachable from graph nodes `roots` (walking inputs and called functions)."""
    seen_nodes, seen_fns = set(), set()
    todo = [r for r in roots if r in nodes]
    fn_todo: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen_nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        todo.extend(i for i in _input_nodes(node) if i in nodes)
        fn_todo.extend(_called_functions(node))
    while fn_todo:
        fn = fn_todo.pop()
        if fn in seen_fns or fn not in functions:
            continue
        seen_fns.add(fn)
        for n in functions[fn].node_def:
            fn_todo.extend(_called_functions(n))
    return seen_fns | {f"node:{n}" for n in seen_nodes}


def _checkpoint_functions(mg) -> set[str]:
    """Concrete function names of saveable objects' save/restore functions (object graph)."""
    names = set()
    nodes = mg.object_graph_def.nodes
    for obj in nodes:
        for saveable in obj.saveable_objects.values():
            for node_id in (saveable.save_function, saveable.restore_function):
                if 0 <= node_id < len(nodes):
                    target = nodes[node_id]
                    names.update(target.function.concrete_functions)
                    if target.bare_concrete_function.concrete_function_name:
                        names.add(target.bare_concrete_function.concrete_function_name)
    return names


def saved_model_violations(path) -> list[tuple[str, str]]:
    """[(op, where)] for every op not on the allowlist, in every graph and function of the
    SavedModel, read from saved_model.pb without loading it. Checkpoint IO ops are tolerated
    only in the save/restore functions that no signature reaches."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = _check_graph_size(path)
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except Exception as e:  # protobuf raises DecodeError (a Message error), not a ValueError
        raise ModelLoadError(f"{pb}: not a readable SavedModel protobuf ({type(e).__name__}); re-export it with "
                             "tf.saved_model.save or model.export()") from e
    allowed = allowed_ops()
    with_checkpoint_io = allowed | CHECKPOINT_OPS
    found: list[tuple[str, str]] = []
    for mg in sm.meta_graphs:
        nodes = {n.name: n for n in mg.graph_def.node}
        functions = {f.signature.name: f for f in mg.graph_def.library.function}
        sig_roots = {t.name.split(":")[0] for sd in mg.signature_def.values()
                     for t in list(sd.outputs.values()) + list(sd.inputs.values())}
        served = _reach(sig_roots, nodes, functions)
        ckpt_roots = {mg.saver_def.save_tensor_name.split(":")[0], mg.saver_def.restore_op_name.split(":")[0]}
        ckpt = _reach(ckpt_roots - {""}, nodes, functions)
        ckpt |= {f for name in _checkpoint_functions(mg) for f in _reach_fn(name, functions)}
        ckpt -= served  # a function the signatures reach is held to the strict list
        for node in mg.graph_def.node:
            if node.op not in (with_checkpoint_io if f"node:{node.name}" in ckpt else allowed):
                found.append((node.op, f"graph node '{node.name}'"))
        for name, fn in functions.items():
            ok = with_checkpoint_io if name in ckpt else allowed
            for n in fn.node_def:
                if n.op not in ok:
                    found.append((n.op, f"function '{name}'"))
    return found


def _check_graph_size(path) -> Path:
    pb = Path(path) / "saved_model.pb"
    lim = limits()
    size = pb.stat().st_size
    if size > lim["graph_bytes"]:
        raise _refuse(path, f"saved_model.pb holds {_size(size)}", f"(cap {_size(lim['graph_bytes'])})",
                      "KEXPORT_MAX_GRAPH_MIB")
    return pb


def _reach_fn(name: str, functions: dict) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        fn = todo.pop()
        if fn in seen or fn not in functions:
            continue
        seen.add(fn)
        for n in functions[fn].node_def:
            todo.extend(_called_functions(n))
    return seen


def check_saved_model(path, *, safe_mode: bool = True) -> None:
    """Refuse (exit 2) a SavedModel whose graphs hold ops with side effects, unless not safe_mode.
    Runs before `tf.saved_model.load`, which would run resource initializers, and before the
    reference outputs, which run the serving signature."""
    _check_graph_size(path)  # a memory cap: in both modes
    if not safe_mode:
        return
    found = saved_model_violations(path)
    if not found:
        return
    by_op: dict[str, str] = {}
    for op, where in found:
        by_op.setdefault(op, where)
    listed = ", ".join(f"{op} (in {where})" for op, where in sorted(by_op.items()))
    raise ModelLoadError(
        f"{path}: SavedModel op(s) {listed} are not on kexport's allowlist of pure ops (file/system IO, Python "
        "callbacks, input pipelines or custom ops would run while loading or computing reference outputs); "
        "refused in safe mode; re-run with --unsafe only if you trust this model"
    )
