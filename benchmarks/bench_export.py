"""`kexport all` vs the five vendor conversions run one by one, MobileNetV2 224x224.

    .venv/bin/python benchmarks/bench_export.py [--pairs 3] [--sequential] [--json docs/benchmarks_export.json]

Vendor path = what a user runs today, one fresh process per tool, no verification: Keras'
SavedModel export, TFLiteConverter.from_keras_model, the tf2onnx CLI and the tensorflowjs converter
on the SavedModel of the first step (tf2onnx.from_keras breaks on Keras 3 models), coremltools on a
traced tf.function (ct.convert(keras_model) breaks on Keras 3, a Keras SavedModel has several). kexport = one `kexport all` process: every
registered target, every artifact verified in every runtime that runs here.

Both paths run in the same invocation, interleaved (vendor, kexport, vendor, kexport, ...), so a
shared machine's load hits both alike; the median of the per-pair ratios is reported.
`--six` adds an arm per pair: `kexport all --targets` the issue's six targets (saved-model, tflite,
onnx, coreml, tfjs, flask: the vendor path's five formats plus the server), each still checked in
every runtime that runs here. `--sequential` adds an arm per pair: `kexport all` with the overlap of conversion and
verification switched off (api.overlapped), the A/B of that change. Peak memory: the largest
resident set of one vendor process vs the kexport process itself (its runtimes' processes, Node,
Chromium, gunicorn, the JVM, are separate). Also the digits model's `kexport all` and its floor
(TensorFlow import + model load). CPU seconds: user + system time of each process and of every
process it waited for (wait4), so `kexport all`'s includes the runtimes it started and reaped
(Node, Chromium's driver, gunicorn, qemu, the JVMs); on this 2-core machine no schedule can take
less wall time than CPU seconds / 2. Writes the JSON and the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_export:begin -->", "<!-- bench_export:end -->"

# Each step: (name, argv template). {model} the .keras file, {w} this pair's work dir; the
# SavedModel of the first step is the input of the steps that need one.
VENDOR = [
    ("SavedModel (keras export, format=tf_saved_model)", [PY, "-c", """
import sys, keras
m = keras.models.load_model(sys.argv[1])
m.export(sys.argv[2] + '/saved_model', format='tf_saved_model', verbose=False)
""", "{model}", "{w}"]),
    ("TFLite (TFLiteConverter.from_keras_model)", [PY, "-c", """
import sys, keras, tensorflow as tf
m = keras.models.load_model(sys.argv[1])
open(sys.argv[2] + '/model.tflite', 'wb').write(tf.lite.TFLiteConverter.from_keras_model(m).convert())
""", "{model}", "{w}"]),
    ("ONNX (python -m tf2onnx.convert --saved-model)", [PY, "-m", "tf2onnx.convert", "--saved-model", "{w}/saved_model",
                                                       "--output", "{w}/model.onnx", "--opset", "17"]),
    ("CoreML (coremltools.convert of a traced tf.function, mlprogram)", [PY, "-c", """
import sys, keras, tensorflow as tf, coremltools as ct
m = keras.models.load_model(sys.argv[1])
fn = tf.function(lambda x: m(x, training=False)).get_concrete_function(tf.TensorSpec(m.inputs[0].shape, m.inputs[0].dtype))
ct.convert([fn], source='tensorflow', convert_to='mlprogram').save(sys.argv[2] + '/model.mlpackage')
""", "{model}", "{w}"]),
    ("TF.js (tensorflowjs_converter, tf_saved_model)", [str(Path(PY).parent / "tensorflowjs_converter"),
                                                       "--input_format=tf_saved_model", "--signature_name=serving_default",
                                                       "{w}/saved_model", "{w}/tfjs"]),
]

SIX = "saved-model,tflite,onnx,coreml,tfjs,flask"  # issue 17's first measurement: these six targets

KEXPORT = """
import json, resource, sys
sequential = sys.argv[3] == '1'
if sequential:
    import kexport.api
    kexport.api.overlapped = lambda options, targets: False
from kexport.cli import main
rc = main(['all', sys.argv[1], '-o', sys.argv[2], '--quiet'] + sys.argv[4:])
open(sys.argv[2] + '.rss', 'w').write(json.dumps({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
sys.exit(rc)
"""


def run(argv: list[str]) -> dict:
    """Wall seconds, exit code, peak RSS (MiB) of one child process (wait4: the child itself and
    any child it waited for)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sec = time.perf_counter() - t0
    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [""]
    return {"seconds": round(sec, 2), "rc": proc.returncode, "maxrss_mib": round(usage.ru_maxrss / 1024),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "error": None if proc.returncode == 0 else last[0][:300]}


def vendor_pass(model: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    steps = {}
    for name, argv in VENDOR:
        steps[name] = run([a.format(model=model, w=work) for a in argv])
        print(f"  vendor {name:52} {steps[name]['seconds']:7.1f}s {steps[name]['maxrss_mib']:6d} MiB"
              + ("" if steps[name]["rc"] == 0 else f"  FAILED: {steps[name]['error']}"), flush=True)
    return {"seconds": round(sum(s["seconds"] for s in steps.values()), 2),
            "cpu_s": round(sum(s["cpu_s"] for s in steps.values()), 2),
            "ok": all(s["rc"] == 0 for s in steps.values()),
            "peak_mib": max(s["maxrss_mib"] for s in steps.values()), "steps": steps}


def kexport_pass(model: Path, out: Path, sequential: bool = False, targets: str | None = None) -> dict:
    res = run([PY, "-c", KEXPORT, str(model), str(out), "1" if sequential else "0"]
              + (["--targets", targets] if targets else []))
    rss = json.loads(Path(str(out) + ".rss").read_text()) if Path(str(out) + ".rss").exists() else {}
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {"targets": [], "seconds": {}}
    rows = [{"target": t["target"], "variant": t.get("variant"), "status": t["status"], "convert_s": t.get("seconds"),
             "verify": {p["runtime"]: [p["status"], p.get("seconds")] for p in t.get("parity", [])}}
            for t in report["targets"]]
    label = "kexport all (sequential)" if sequential else "kexport all --targets (six)" if targets else "kexport all"
    print(f"  {label:59} {res['seconds']:7.1f}s {round(rss.get('maxrss_kb', 0) / 1024):6d} MiB rc={res['rc']} "
          f"{res['cpu_s']:.1f} CPU-s", flush=True)
    return {"seconds": res["seconds"], "rc": res["rc"], "error": res["error"], "cpu_s": res["cpu_s"],
            "peak_mib": round(rss.get("maxrss_kb", 0) / 1024), "tree_peak_mib": res["maxrss_mib"],
            "steps": report["seconds"], "rows": rows,
            "statuses": {f"{r['target']}/{r['variant']}": r["status"] for r in rows}}


def digits(work: Path) -> dict:
    model = ROOT / "sample_models" / "digits_cnn.keras"
    floor = run([PY, "-c", "import sys, keras; keras.models.load_model(sys.argv[1])", str(model)])
    k = kexport_pass(model, work / "digits")
    print(f"  digits: kexport all {k['seconds']:.1f}s, floor (TensorFlow import + model load) {floor['seconds']:.1f}s", flush=True)
    return {"kexport_all_s": k["seconds"], "floor_s": floor["seconds"], "rc": k["rc"], "steps": k["steps"],
            "statuses": k["statuses"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--sequential", action="store_true", help="an arm: kexport all without the overlap")
    ap.add_argument("--six", action="store_true", help=f"an arm: kexport all --targets {SIX}")
    ap.add_argument("--json", default=str(ROOT / "docs" / "benchmarks_export.json"))
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kexport-bench-"))
    model = work / "mobilenetv2.keras"
    # In a child: this process must stay small. A child's peak RSS (wait4, RUSAGE_SELF) starts
    # from its parent's resident set at fork, so a parent holding TensorFlow would inflate every one.
    made = run([PY, "-c", "import sys; from kexport.batchnorm_stats import application; "
                "application('MobileNetV2', (224, 224, 3)).save(sys.argv[1])", str(model)])
    if made["rc"] != 0:
        raise SystemExit(f"could not build MobileNetV2: {made['error']}")
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "uptime_before": _uptime(), "pairs": []}
    for i in range(args.pairs):
        print(f"pair {i + 1}/{args.pairs}  ({_uptime()})", flush=True)
        pair = {"vendor": vendor_pass(model, work / f"vendor{i}"), "kexport": kexport_pass(model, work / f"kexport{i}")}
        if args.six:
            pair["kexport_six"] = kexport_pass(model, work / f"six{i}", targets=SIX)
            pair["ratio_six"] = round(pair["kexport_six"]["seconds"] / pair["vendor"]["seconds"], 3)
        if args.sequential:
            pair["kexport_sequential"] = kexport_pass(model, work / f"sequential{i}", sequential=True)
        pair["ratio"] = round(pair["kexport"]["seconds"] / pair["vendor"]["seconds"], 3)
        res["pairs"].append(pair)
        shutil.rmtree(work / f"vendor{i}", ignore_errors=True)
        for d in work.glob("*"):
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
        if i == 0:
            res["digits"] = digits(work)  # once, after the first pair
        write(res, args)  # after every pair: a cut-short run still leaves its numbers
    shutil.rmtree(work, ignore_errors=True)


def write(res: dict, args) -> None:
    res["uptime_after"] = _uptime()
    res["median_ratio"] = statistics.median(p["ratio"] for p in res["pairs"])
    if "ratio_six" in res["pairs"][0]:
        res["median_ratio_six"] = statistics.median(p["ratio_six"] for p in res["pairs"])
    if "kexport_sequential" in res["pairs"][0]:
        res["median_overlap_ratio"] = round(statistics.median(
            p["kexport"]["seconds"] / p["kexport_sequential"]["seconds"] for p in res["pairs"]), 3)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    table = render(res)
    print(table, flush=True)
    if not args.no_doc:
        text = DOC.read_text()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + table + "\n"
        DOC.write_text(text)


def _uptime() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    m = re.search(r"load average: (.*)$", out)
    return f"load average {m.group(1)}" if m else out


def render(res: dict) -> str:
    """The generated part of docs/benchmarks.md."""
    pairs = res["pairs"]
    six = "kexport_six" in pairs[0]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    lines = [BEGIN, "", f"Measured {res['started']} on {res['machine']}; the machine was shared with other jobs: "
             f"{res['uptime_before']} before, {res['uptime_after']} after. {len(pairs)} interleaved pairs.", "",
             "| pair | vendor tools one by one, no verification: s (CPU-s) | `kexport all`, everything verified: s (CPU-s) | ratio |"
             + (" `kexport all --targets` the six: s (CPU-s) | ratio |" if six else "")
             + (" `kexport all` without overlap (s) |" if "kexport_sequential" in pairs[0] else ""),
             "| --- | --- | --- | --- |" + (" --- | --- |" if six else "") + (" --- |" if "kexport_sequential" in pairs[0] else "")]
    for i, p in enumerate(pairs, 1):
        lines.append(f"| {i} | {p['vendor']['seconds']:.1f} ({p['vendor']['cpu_s']:.1f}) | {p['kexport']['seconds']:.1f} "
                     f"({p['kexport']['cpu_s']:.1f}) | {p['ratio']:.2f} |"
                     + (f" {p['kexport_six']['seconds']:.1f} ({p['kexport_six']['cpu_s']:.1f}) | {p['ratio_six']:.2f} |"
                        if six else "")
                     + (f" {p['kexport_sequential']['seconds']:.1f} |" if "kexport_sequential" in p else ""))
    lines += ["", f"**Median ratio kexport / vendor: {res['median_ratio']:.2f}** (goal: 0.5 or less; "
              + ("met" if res["median_ratio"] <= 0.5 else "not met") + ")"
              + (f"; the six targets: **{res['median_ratio_six']:.2f}**" if six else "") + ".", ""]
    cores = os.cpu_count() or 1
    vwall = med([p["vendor"]["seconds"] for p in pairs])
    for key, label in (("kexport", "`kexport all`"), ("kexport_six", "`kexport all --targets` (the six)")):
        if key in pairs[0]:
            cpu = med([p[key]["cpu_s"] for p in pairs])
            lines.append(f"Lower bound on {cores} cores: {label} needs {cpu:.1f} CPU-s (median), so no schedule "
                         f"finishes in less than {cpu / cores:.1f} s = {cpu / cores / vwall:.2f}x the vendor path's "
                         f"{vwall:.1f} s.")
    lines.append("")
    vpeak = med([p["vendor"]["peak_mib"] for p in pairs])
    kpeak = med([p["kexport"]["peak_mib"] for p in pairs])
    lines += [f"Peak memory (median over pairs): kexport process {kpeak} MiB; largest vendor process {vpeak} MiB "
              f"(ratio {kpeak / vpeak:.2f}, goal 1.2 or less: {'met' if kpeak <= 1.2 * vpeak else 'not met'}).", ""]
    lines += ["Vendor steps (median seconds, peak MiB):", "", "| step | seconds | peak MiB |", "| --- | --- | --- |"]
    for name in pairs[0]["vendor"]["steps"]:
        s = [p["vendor"]["steps"][name] for p in pairs]
        ok = "" if all(x["rc"] == 0 for x in s) else f" (FAILED: {s[0]['error']})"
        lines.append(f"| {name}{ok} | {med([x['seconds'] for x in s]):.1f} | {med([x['maxrss_mib'] for x in s])} |")
    last = pairs[-1]["kexport"]
    lines += ["", "`kexport all` steps of the last pair (report.json; with the overlap, conversion of one target "
              "runs while the previous one is verified, so the steps add up to more than the wall time):", "",
              "| target/variant | status | convert (s) | verification (runtime: status, s) |", "| --- | --- | --- | --- |"]
    lines.append(f"| load model (incl. TensorFlow import) | | {last['steps'].get('load_model')} | |")
    lines.append(f"| Keras reference | | {last['steps'].get('keras_reference')} | |")
    for r in last["rows"]:
        ver = ", ".join(f"{k}: {v[0]} {v[1]}" for k, v in r["verify"].items())
        lines.append(f"| {r['target']}/{r['variant']} | {r['status']} | {r['convert_s']} | {ver} |")
    d = res["digits"]
    lines += ["", f"Digits model (sample_models/digits_cnn.keras): `kexport all` {d['kexport_all_s']:.1f} s wall; "
              f"its floor, a process that imports TensorFlow and loads the model, {d['floor_s']:.1f} s.", ""]
    if "median_overlap_ratio" in res:
        lines += [f"Overlap A/B: `kexport all` with / without the overlap of conversion and verification, median "
                  f"{res['median_overlap_ratio']:.2f}.", ""]
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
