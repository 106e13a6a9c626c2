"""Issue 11 items 3 and 4: nothing in a model file is read whole or run before it is checked.

- zip/HDF5 bombs are refused from their headers, in one line, with low peak memory (measured with
  resource.getrusage in a child process);
- a SavedModel whose graph holds an op with side effects (tf.io.write_file, tf.py_function) is
  refused before anything of it runs; --unsafe loads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
PEAK_RSS_LIMIT_MB = 600  # kexport's own imports cost ~250 MB; the bombs below cost >= 1 GiB when read

# Runs the CLI in-process in a fresh interpreter and reports its own peak RSS on the last line.
# VmHWM of this process's memory map, not getrusage's ru_maxrss: Linux carries ru_maxrss over
# execve from the forking parent (a multi-GB pytest would be measured instead of the run).
_MEASURED_RUN = textwrap.dedent("""
    import json, sys
    from kexport.cli import main
    rc = main(sys.argv[1:])
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"rc": rc, "peak_mb": hwm / 1024}))
""")


def run_measured(*args, cwd=None):
    p = subprocess.run([sys.executable, "-c", _MEASURED_RUN, *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=600)
    stats = json.loads(p.stdout.strip().splitlines()[-1])
    return stats["rc"], stats["peak_mb"], p.stderr


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("kexport:") or "Traceback" in ln]


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """A ~1 MiB .keras whose config.json inflates to 1 GiB (the archive from issue 11)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.keras"
    with zipfile.ZipFile(SAMPLES / "digits_cnn.keras") as src, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("metadata.json", src.read("metadata.json"))
        with zf.open("config.json", "w", force_zip64=True) as fh:
            fh.write(b'{"class_name": "Functional", "config": {"name": "')
            block = b" " * (1 << 20)
            for _ in range(1024):
                fh.write(block)
            fh.write(b'"}}')
        zf.writestr("model.weights.h5", src.read("model.weights.h5"), compress_type=zipfile.ZIP_STORED)
    assert path.stat().st_size < 2 << 20
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("config.json").file_size >= 1 << 30
    return path


def test_zip_bomb_refused_in_one_line_with_low_memory(zip_bomb, tmp_path):
    out = tmp_path / "out"
    rc, peak_mb, stderr = run_measured("tflite", zip_bomb, "-o", out)
    lines = error_lines(stderr)
    assert rc == 2, stderr
    assert len(lines) == 1, stderr
    assert str(zip_bomb) in lines[0] and "config.json" in lines[0] and "KEXPORT_MAX_CONFIG_MIB" in lines[0], lines
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB while refusing a zip bomb"


def test_zip_ratio_cap_on_any_member(tmp_path):
    """A weights member that inflates 1000:1 is refused from its header (Keras stores members)."""
    path = tmp_path / "ratio.keras"
    with zipfile.ZipFile(SAMPLES / "wine_mlp.keras") as src, zipfile.ZipFile(path, "w") as zf:
        for name in src.namelist():
            if name != "model.weights.h5":
                zf.writestr(name, src.read(name))
        zf.writestr("model.weights.h5", b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    from kexport.errors import ModelLoadError
    from kexport.safety import check_model_file

    with pytest.raises(ModelLoadError, match=r"member 'model.weights.h5' inflates \d+:1.*KEXPORT_MAX_RATIO"):
        check_model_file(path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_weights_bomb_inside_a_keras_archive(tmp_path, compression):
    """model.weights.h5 inside the archive: a gzip dataset declaring 1 GiB (Keras' own guard starts
    at 4 GiB) is refused from its header, read in place (stored) or through the zip (deflated)."""
    import h5py

    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("layers/dense/vars/0", shape=(1 << 28,), dtype="float32", chunks=(1 << 20,),
                         compression="gzip")
    path = tmp_path / "inner.keras"
    with zipfile.ZipFile(SAMPLES / "wine_mlp.keras") as src, zipfile.ZipFile(path, "w", compression) as zf:
        for name in src.namelist():
            if name != "model.weights.h5":
                zf.writestr(name, src.read(name))
        zf.write(weights, "model.weights.h5")
    from kexport.errors import ModelLoadError
    from kexport.safety import check_model_file

    with pytest.raises(ModelLoadError, match=r"member 'model.weights.h5': dataset 'layers/dense/vars/0' declares"):
        check_model_file(path)


def test_lying_zip_header_is_bounded(tmp_path):
    """config.json whose central directory claims 100 bytes but whose data inflates to 256 MiB:
    reading stops at the declared size and the member is reported corrupt."""
    path = tmp_path / "liar.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b"{" + b" " * (256 << 20) + b"}")
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # central directory entry of config.json: patch its sizes
    data[cd + 24:cd + 28] = (100).to_bytes(4, "little")
    lh = data.find(b"PK\x03\x04")
    data[lh + 22:lh + 26] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    from kexport.errors import ModelLoadError
    from kexport.safety import check_model_file

    with pytest.raises(ModelLoadError, match="member 'config.json' is corrupt"):
        check_model_file(path)


@pytest.fixture(scope="module")
def h5_bomb(tmp_path_factory) -> tuple[Path, str]:
    """digits_cnn.h5 with one weight replaced by a gzip dataset declaring 1 GiB and storing ~0."""
    import h5py

    path = tmp_path_factory.mktemp("h5bomb") / "digits_bomb.h5"
    shutil.copy(SAMPLES / "digits_cnn.h5", path)
    with h5py.File(path, "a") as f:
        names = []
        f["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        victim = "model_weights/" + sorted(names)[0]
        del f[victim]
        f.create_dataset(victim, shape=(1 << 28,), dtype="float32", chunks=(1 << 20,), compression="gzip")
    assert path.stat().st_size < 2 << 20
    return path, victim


def test_h5_dataset_bomb_refused_with_low_memory(h5_bomb, tmp_path):
    path, victim = h5_bomb
    rc, peak_mb, stderr = run_measured("tflite", path, "-o", tmp_path / "out")
    lines = error_lines(stderr)
    assert rc == 2, stderr
    assert len(lines) == 1 and victim in lines[0] and "KEXPORT_MAX_RATIO" in lines[0], stderr
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB while refusing an HDF5 bomb"


def test_caps_can_be_raised_for_a_genuine_file(monkeypatch, tmp_path):
    from kexport.safety import check_model_file, limits

    monkeypatch.setenv("KEXPORT_MAX_CONFIG_MIB", "0.001")  # 1 KiB: every real config is over it
    assert limits()["config_bytes"] == 1048
    from kexport.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="config.json"):
        check_model_file(SAMPLES / "digits_cnn.keras")
    monkeypatch.setenv("KEXPORT_MAX_CONFIG_MIB", "64")
    for sample in ("digits_cnn.keras", "token_lstm.keras", "two_in_two_out.keras", "digits_cnn.h5", "iris_keras2.h5"):
        check_model_file(SAMPLES / sample)  # every sample model passes the default caps


def test_h5_external_link_refused_in_safe_mode(tmp_path):
    import h5py

    from kexport.errors import ModelLoadError
    from kexport.safety import check_model_file

    path = tmp_path / "ext.h5"
    shutil.copy(SAMPLES / "iris_keras2.h5", path)
    with h5py.File(path, "a") as f:
        f["model_weights/leak"] = h5py.ExternalLink("/etc/hostname", "/")
    with pytest.raises(ModelLoadError, match="external link 'model_weights/leak'.*--unsafe"):
        check_model_file(path)
    check_model_file(path, safe_mode=False)


# ----------------------------------------------------------------------------- SavedModel

_BUILD_SAVED_MODELS = textwrap.dedent("""
    import os, sys
    import tensorflow as tf
    out, marker = sys.argv[1], sys.argv[2]

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            tf.io.write_file(marker, "written by the model")
            return {"y": x * 2.0}

    class PyCallback(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.py_function(lambda t: t, [x], tf.float32)}

    class Table(tf.Module):  # variables + a lookup table: stateful but pure, must pass
        def __init__(self):
            self.v = tf.Variable(3.0)
            self.t = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer([0, 1], [1.0, 2.0]), 0.0)
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * self.v + self.t.lookup(tf.constant(1))}

    for name, cls in (("writer", Writer), ("pyfunc", PyCallback), ("table", Table)):
        m = cls()
        tf.saved_model.save(m, os.path.join(out, name), signatures={"serving_default": m.serve})
    import keras
    keras.saving.load_model(sys.argv[3]).export(os.path.join(out, "keras_export"), verbose=False)
""")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sm")
    marker = root / "PWNED"
    subprocess.run([sys.executable, "-c", _BUILD_SAVED_MODELS, root, marker, SAMPLES / "digits_cnn.keras"],
                   check=True, capture_output=True, timeout=600)
    marker.unlink(missing_ok=True)  # tracing does not run it, but be sure
    return root, marker


def test_saved_model_with_write_file_refused_before_anything_runs(saved_models, tmp_path):
    root, marker = saved_models
    p = subprocess.run([sys.executable, "-m", "kexport", "saved-model", str(root / "writer"), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    lines = error_lines(p.stderr)
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1, p.stderr
    assert "WriteFile" in lines[0] and "--unsafe" in lines[0] and str(root / "writer") in lines[0]
    assert not marker.exists(), "the model's WriteFile ran"


def test_saved_model_with_write_file_loads_with_unsafe(saved_models):
    root, _ = saved_models
    p = subprocess.run([sys.executable, "-m", "kexport", "inspect", str(root / "writer"), "--unsafe"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "input  x:" in p.stdout


def test_saved_model_allowlist(saved_models):
    from kexport.safety import CHECKPOINT_OPS, DENIED, allowed_ops, saved_model_violations

    root, _ = saved_models
    allowed = allowed_ops()
    assert not allowed & DENIED
    assert not allowed & {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ReadFile", "WriteFile", "PyFunc",
                          "EagerPyFunc", "PrintV2", "MatchingFiles", "Abort", "TFRecordDatasetV2"}
    assert CHECKPOINT_OPS - allowed == {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename",
                                        "ShardedFilespec", "DisableCopyOnRead", "Save", "SaveSlices", "Restore",
                                        "RestoreSlice"}
    assert {"Conv2D", "MatMul", "ReadVariableOp", "While", "LookupTableFindV2"} <= allowed
    assert {op for op, _ in saved_model_violations(root / "pyfunc")} == {"EagerPyFunc"}
    assert {op for op, _ in saved_model_violations(root / "writer")} == {"WriteFile"}
    # variables, tables and their save/restore functions (SaveV2/RestoreV2) are fine
    assert saved_model_violations(root / "table") == []
    assert saved_model_violations(root / "keras_export") == []
