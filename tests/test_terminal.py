"""What a person sees in the terminal: plain timestamped lines in CI logs, one live status line on
a TTY, nothing but errors with --quiet, and no library progress bars or logs without --debug."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import SAMPLE_MODELS
from kexport.progress import Progress

KEXPORT = [sys.executable, "-c", "from kexport.cli import run; run()"]
BARS = re.compile(r"\d+/\d+ \[|it/s|passes/s|ops/s|%\|")


def _run(*argv, env=None):
    return subprocess.run([*KEXPORT, *map(str, argv)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def test_plain_lines_without_a_tty_and_no_library_noise(tmp_path):
    res = _run("coreml", SAMPLE_MODELS["wine_mlp"], "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines and all(re.match(r"\[\s*\d+\.\d+s\] ", ln) for ln in lines), lines
    assert "\r" not in res.stderr and not BARS.search(res.stderr), res.stderr
    assert "coreml" in res.stdout and "report:" in res.stdout


def test_quiet_prints_nothing_on_success_and_the_failure_otherwise(tmp_path):
    res = _run("onnx", SAMPLE_MODELS["wine_mlp"], "-o", tmp_path / "out", "--quiet")
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", (res.stdout, res.stderr)
    res = _run("onnx", SAMPLE_MODELS["wine_mlp"], "-o", tmp_path / "out2", "--quiet", "--atol", "-1", "--rtol", "0")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("kexport: onnx/fp32") and "\r" not in res.stderr


def test_tty_shows_one_live_line_with_elapsed_time():
    buf = io.StringIO()
    p = Progress(stream=buf, tty=True, tick=0.05)
    p("[1/1] onnx")
    p("    fp32: converting")
    time.sleep(0.2)  # the ticker redraws the live line while a step runs
    p("    fp32 on onnxruntime: passed")
    p.close()
    text = buf.getvalue()
    assert text.count("… fp32: converting") >= 2, text  # redrawn in place
    assert "\r\x1b[2K" in text and "fp32 on onnxruntime: passed\n" in text
    assert text.endswith("\r\x1b[2K")  # the live line is cleared at the end


def test_progress_lines_survive_a_converter_silencing_fd2():
    """The overlapped loop prints one target's verdicts while the next conversion has fd 2
    redirected (native_log.captured_native_stderr): those lines must still reach the terminal."""
    code = (
        "import threading\n"
        "from kexport.progress import Progress\n"
        "from kexport.native_log import captured_native_stderr\n"
        "p = Progress()\n"
        "with captured_native_stderr():\n"
        "    t = threading.Thread(target=p, args=('[1/2] saved-model',)); t.start(); t.join()\n"
        "p('[2/2] tflite')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "KEXPORT_DEBUG"})
    assert res.returncode == 0, res.stderr
    assert re.findall(r"\] (\[\d/2\] [\w-]+)", res.stderr) == ["[1/2] saved-model", "[2/2] tflite"], res.stderr
