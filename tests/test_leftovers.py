"""Issue 11 items 10 and 11 (non-server): a run leaves nothing behind, even when killed; the
terminal shows kexport's lines, not converters' progress bars; Keras load errors name the layer.

Every run here gets its own TMPDIR, so "nothing left in the temp dir" is checked exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "sample_models" / "wine_mlp.keras"


def kexport(*args, tmpdir: Path, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # an in-process run may have set it
    env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "kexport", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def leftovers(out: Path, tmpdir: Path) -> list[str]:
    found = [p.name for p in out.glob(".kexport-*")] if out.exists() else []
    found += [p.name for p in tmpdir.glob("kexport-*") if p.is_dir()]
    return sorted(found)


@pytest.fixture
def tmpdir_(tmp_path) -> Path:
    d = tmp_path / "tmp"
    d.mkdir()
    return d


def test_inspect_leaves_no_temporary_saved_model(tmpdir_):
    p = kexport("inspect", MODEL, tmpdir=tmpdir_)
    assert p.returncode == 0, p.stderr
    assert leftovers(tmpdir_ / "none", tmpdir_) == []
    assert not list(tmpdir_.rglob("saved_model.pb")), "inspect left a SavedModel in TMPDIR"


def test_sigkill_leftovers_are_swept_by_the_next_run(tmp_path, tmpdir_):
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmpdir_)}
    run = subprocess.Popen([sys.executable, "-m", "kexport", "all", str(MODEL), "-o", str(out)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and run.poll() is None:
            if list(out.glob(".kexport-*")) and [p for p in tmpdir_.glob("kexport-*") if p.is_dir()]:
                break  # mid-export: a target's temp dir in OUT and the work dir in TMPDIR
            time.sleep(0.05)
        assert run.poll() is None, "the export finished before it could be killed"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)  # the run and everything it started (its own session)
        run.wait()
    assert leftovers(out, tmpdir_), "SIGKILL should have left temporaries (the test needs them)"
    p = kexport("saved-model", MODEL, "-o", out, tmpdir=tmpdir_)
    assert p.returncode == 0, p.stderr
    assert leftovers(out, tmpdir_) == []


def test_sweep_keeps_live_owners_and_removes_dead_ones(tmp_path):
    from kexport import scratch

    live = scratch.temp_dir(".kexport-tflite-", dir=tmp_path)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = tmp_path / f".kexport-onnx-pid{dead_pid}.123-abcd1234"
    dead.mkdir()
    recycled = tmp_path / f".kexport-tfjs-pid{os.getpid()}.1-abcd1234"  # our pid, another start time
    recycled.mkdir()
    legacy = tmp_path / ".kexport-coreml-abcd1234"
    legacy.mkdir()
    os.utime(legacy, (time.time() - 2 * 86400,) * 2)
    unrelated = tmp_path / ".kexport-probe-file"
    unrelated.write_text("")
    removed = scratch.sweep(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, recycled.name, legacy.name])
    assert live.exists() and unrelated.exists()


def test_missing_or_refused_model_creates_no_output_dir(tmp_path, tmpdir_):
    out = tmp_path / "out"
    p = kexport("tflite", tmp_path / "missing.keras", "-o", out, tmpdir=tmpdir_)
    assert p.returncode == 2 and not out.exists(), p.stderr
    bomb = tmp_path / "ratio.keras"
    with zipfile.ZipFile(bomb, "w") as zf:
        zf.writestr("config.json", b" " * (8 << 20), compress_type=zipfile.ZIP_DEFLATED)
    p = kexport("tflite", bomb, "-o", out, tmpdir=tmpdir_)
    assert p.returncode == 2 and "refused" in p.stderr and not out.exists(), p.stderr


def test_coreml_progress_bars_stay_off_stderr(tmp_path, tmpdir_):
    pytest.importorskip("coremltools")
    p = kexport("coreml", MODEL, "-o", tmp_path / "out", tmpdir=tmpdir_)
    assert p.returncode == 0, p.stderr
    assert "Running MIL" not in p.stderr and "%|" not in p.stderr, p.stderr
    debug = kexport("coreml", MODEL, "-o", tmp_path / "out_debug", "--debug", tmpdir=tmpdir_)
    assert "Running MIL" in debug.stderr  # --debug keeps the library's output


def _with_config(tmp_path: Path, name: str, mutate) -> Path:
    with zipfile.ZipFile(MODEL) as src:
        cfg = json.loads(src.read("config.json"))
        mutate(next(layer for layer in cfg["config"]["layers"] if layer["class_name"] == "Dense"))
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as dst:
            for member in src.namelist():
                dst.writestr(member, json.dumps(cfg) if member == "config.json" else src.read(member))
    return path


@pytest.mark.parametrize("case", ["unknown_class", "bad_argument"])
def test_keras_load_error_names_the_layer_in_one_uncut_line(tmp_path, tmpdir_, case):
    def mutate(layer):
        if case == "unknown_class":
            layer["class_name"], layer["module"] = "MysteryDense", "my_layers"
        else:
            layer["config"]["bogus_arg"] = 1

    path = _with_config(tmp_path, f"{case}.keras", mutate)
    p = kexport("inspect", path, tmpdir=tmpdir_)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("kexport:") or "Traceback" in ln]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    line = lines[0]
    assert "layer 'hidden'" in line, line
    shown = line.split("Keras could not load the model: ", 1)[1].rsplit("; if it uses custom layers", 1)[0]
    shown = shown.split("): ", 1)[1] if shown.startswith("layer 'hidden' (") else shown.split(": ", 1)[1]
    import keras  # the full message Keras raises: what is shown is its root cause, cut only between words

    with pytest.raises(Exception) as info:
        keras.saving.load_model(path, compile=False)
    root = str(info.value).rsplit("Exception encountered:", 1)[-1].strip()
    cut = shown[:-4] if shown.endswith(" ...") else shown
    assert root.startswith(cut), (shown, root[:400])
    assert len(cut) == len(root) or root[len(cut)] == " ", f"cut mid-word: {shown!r}"


def test_gunicorn_log_never_exists_on_disk(tmp_path, monkeypatch):
    """The server's log is unlinked as soon as it is opened: an interrupted `kexport flask`
    (SIGINT, SIGKILL) cannot leave it in the temp dir, and its tail is still readable."""
    import tempfile

    from kexport.runtimes.flask_http import GunicornServer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = tmp_path / "app"
    app.mkdir()  # no app: gunicorn exits at once, with an error in its log
    server = GunicornServer(app)
    try:
        assert not list(tmp_path.glob("kexport-gunicorn-*")), "the log must not be a file in the temp dir"
        server.proc.wait(timeout=120)
        assert server.log_tail(), "the log is still readable through its descriptor"
    finally:
        server.stop()
    assert not list(tmp_path.glob("kexport-gunicorn-*"))
