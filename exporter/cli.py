"""`kexport` command line: a thin layer over the Python API, run in-process.

Exit codes: 0 all requested targets converted and passed; 1 a target failed conversion or
parity; 2 bad usage or an unreadable/refused model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from .errors import KexportError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other usage error
        raise _UsageExit(f"{self.prog}: {message} (see '{self.prog} --help')")


class _UsageExit(Exception):
    pass


def _common(p: argparse.ArgumentParser, *, model=True):
    if model:
        p.add_argument("model", help="a .keras file, a .h5 file (Keras 3 or 2) or a SavedModel directory")
        p.add_argument("-o", "--out", default="kexport-out", help="output directory (default ./kexport-out)")
        p.add_argument("--unsafe", action="store_true", help="allow Lambda layers (runs code stored in the file)")
        p.add_argument("--custom-objects", metavar="FILE.py", help="Python file that defines/registers custom layers")
        p.add_argument("--inputs", metavar="DATA.npz", help="reference inputs, arrays named after the model inputs")
        p.add_argument("--samples", type=int, default=8, help="random reference samples when no --inputs (default 8)")
        p.add_argument("--no-verify", action="store_true", help="skip the parity check")
        p.add_argument("--atol", type=float, help="override the absolute tolerance of every target")
        p.add_argument("--rtol", type=float, help="override the (scale-relative) tolerance of every target")
        p.add_argument("--json", action="store_true", help="print report.json instead of the table")
        q = p.add_argument_group("quantized variants (docs/quantization.md)")
        q.add_argument("--quantize", metavar="VARIANTS",
                       help="extra variants next to fp32, comma-separated, or 'all' (each target's full list): "
                            "tflite dynamic|float16|int8, onnx dynamic|int8, coreml float16|int8|palettize, "
                            "tfjs float16|uint8|uint16")
        q.add_argument("--calibration", metavar="DATA.npz|DIR",
                       help="calibration data for static int8: arrays named after the inputs, or an image folder")
        q.add_argument("--eval", metavar="DATA.npz|DIR",
                       help="evaluation data: the inputs plus labels 'y' (or a folder of class folders)")
        q.add_argument("--min-agreement", type=float, default=0.98,
                       help="refuse a variant whose top-1 agreement with Keras is below this (default 0.98)")
        q.add_argument("--max-accuracy-drop", type=float, default=1.0,
                       help="refuse a variant losing more accuracy points than this vs Keras (default 1.0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")


def _add_target_arguments(p: argparse.ArgumentParser, target) -> None:
    """A target's flags, minus those already defined (shared flags such as --quantize are defined
    once, in _common, with the vocabulary of every target)."""
    scratch = _Parser(add_help=False)
    target.add_arguments(scratch)
    for action in scratch._actions:
        if not any(s in p._option_string_actions for s in action.option_strings):
            p._add_action(action)


def build_parser() -> argparse.ArgumentParser:
    from .targets import all_targets

    parser = _Parser(prog="kexport", description="Export a Keras model everywhere and prove each artifact matches.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    targets = all_targets()
    for name, target in targets.items():
        p = sub.add_parser(name, help=target.description)
        _common(p)
        _add_target_arguments(p, target)
    p = sub.add_parser("all", help="every target")
    _common(p)
    for target in targets.values():
        _add_target_arguments(p, target)
    p = sub.add_parser("verify", help="re-check an export directory against its stored reference data")
    p.add_argument("out", help="directory written by kexport")
    p.add_argument("--json", action="store_true")
    _common(p, model=False)
    p = sub.add_parser("inspect", help="signature, layers and which targets can take the model")
    p.add_argument("model")
    p.add_argument("--unsafe", action="store_true")
    p.add_argument("--custom-objects", metavar="FILE.py")
    _common(p, model=False)
    p = sub.add_parser("doctor", help="which converters and runtimes work here, and how to install the rest")
    _common(p, model=False)
    p = sub.add_parser("serve-demo", help="serve the TF.js demo page of an export (kexport tfjs MODEL --demo)")
    p.add_argument("out", help="directory written by 'kexport tfjs --demo' (or its tfjs/ folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _common(p, model=False)
    p = sub.add_parser("tf-serving", help="add a checked version to a TF-Serving model repository (-o REPO)")
    _common(p)
    from .targets.tf_serving import add_arguments as tf_serving_arguments

    tf_serving_arguments(p)
    return parser


def _quiet_libraries(debug: bool):
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        for name in ("tensorflow", "absl", "tf2onnx", "coremltools"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _progress(start: float):
    def say(line: str):
        print(f"[{time.perf_counter() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

    return say


def _options(args):
    from .options import ExportOptions
    from .targets import all_targets

    names = list(all_targets()) if args.command == "all" else [args.command]
    topts = {n: all_targets()[n].options_from_args(args) for n in names}
    return ExportOptions(
        safe_mode=not args.unsafe, custom_objects=args.custom_objects, inputs=args.inputs,
        samples=args.samples, verify=not args.no_verify, atol=args.atol, rtol=args.rtol,
        target_options=topts, quantize=args.quantize, calibration=args.calibration, eval=args.eval,
        min_agreement=args.min_agreement, max_accuracy_drop=args.max_accuracy_drop,
    )


def _print_result(result, as_json: bool):
    from .report import format_table

    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(format_table(result))
        if result.out_dir:
            print(f"\nreport: {os.path.join(result.out_dir, 'report.json')}")


def cmd_export(args) -> int:
    from . import api

    result = api.export(args.model, [args.command], args.out, options=_options(args), progress=_progress(time.perf_counter()))
    _print_result(result, args.json)
    return result.exit_code


def cmd_verify(args) -> int:
    from . import api

    result = api.verify(args.out, progress=_progress(time.perf_counter()))
    _print_result(result, args.json)
    return result.exit_code


def cmd_inspect(args) -> int:
    from collections import Counter

    from .context import ExportContext
    from .loader import load_model, sha256_of, signature_of
    from .targets import all_targets

    model = load_model(args.model, safe_mode=not args.unsafe, custom_objects=args.custom_objects)
    sig = signature_of(model)
    print(f"model: {args.model} ({model.name}), {model.count_params():,} parameters")
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for t in specs:
            print(f"  {kind:6} {t.name}: shape={list(t.shape)} dtype={t.dtype}")
    counts = Counter(type(layer).__name__ for layer in model.layers)
    print("layers: " + ", ".join(f"{n} x{c}" for n, c in counts.most_common()))
    from pathlib import Path

    ctx = ExportContext(model, Path(args.model), sha256_of(Path(args.model)), sig, {}, {})
    print("targets:")
    for name, target in all_targets().items():
        missing = target.missing_requirements()
        if missing:
            print(f"  {name:12} no: converter not installed ({', '.join(missing)}); pip install 'kexport[{target.extra}]'")
            continue
        try:
            problems = target.preflight(ctx, target.Options())
        except KexportError as e:
            problems = [str(e)]
        print(f"  {name:12} " + ("yes" if not problems else "no: " + "; ".join(problems)))
    return EXIT_OK


def cmd_doctor(args) -> int:
    from importlib import metadata

    from kexport.runtimes import all_runtimes

    from .targets import all_targets

    import importlib.util

    print("reference:")
    keras_ok = importlib.util.find_spec("keras") is not None
    print(f"  {'keras':14} " + ("ok" if keras_ok else "missing: pip install 'kexport[keras]'"))
    print("converters:")
    for name, target in all_targets().items():
        missing = target.missing_requirements()
        vers = []
        for mod in target.requires:
            try:
                vers.append(f"{mod} {metadata.version(mod.replace('_', '-'))}")
            except metadata.PackageNotFoundError:
                vers.append(f"{mod} missing")
        state = "ok" if not missing else f"missing: pip install 'kexport[{target.extra or 'all'}]'"
        print(f"  {name:14} {state:10} ({', '.join(vers)})")
    print("runtimes:")
    for name, rt in all_runtimes().items():
        reason = rt.available()
        print(f"  {name:18} " + ("ok" if not reason else f"unavailable: {reason}" + (f" -> {rt.install_hint}" if rt.install_hint else "")))
    return EXIT_OK


def cmd_tf_serving(args) -> int:
    from .targets.tf_serving import run_command

    result = run_command(args, progress=_progress(time.perf_counter()))
    _print_result(result, args.json)
    return result.exit_code


def cmd_serve_demo(args) -> int:
    from .targets.tfjs.demo import serve

    serve(args.out, args.host, args.port)
    return EXIT_OK


COMMANDS = {"verify": cmd_verify, "inspect": cmd_inspect, "doctor": cmd_doctor, "tf-serving": cmd_tf_serving,
            "serve-demo": cmd_serve_demo}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        os.environ["KEXPORT_DEBUG"] = "1"
    _quiet_libraries(debug)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS.get(args.command, cmd_export)(args)
    except _UsageExit as e:
        print(f"kexport: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KexportError as e:
        if debug:
            raise
        print(f"kexport: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kexport: interrupted; no partial artifact was moved into place", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in kexport or a library: still one line unless --debug
        if debug:
            raise
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"kexport: internal error: {type(e).__name__}: {msg} (re-run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


_NOISE = re.compile(
    rb"^(?:[EWI]\d{4} |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [EWI] |WARNING: All log messages before absl"
    rb"|To enable the following instructions|.*(?:cuda|cuDNN|cuFFT|cuBLAS|TF-TRT))"
)


def _filter_native_stderr():
    """Drop TensorFlow's C++ start-up chatter (CUDA probes, absl banners) from fd 2, keep the rest.

    Only for the console script: in-process callers (tests, the API) keep their stderr as is.
    """
    import atexit
    import threading

    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump():
        with os.fdopen(read_fd, "rb") as src:
            for line in src:
                if not _NOISE.match(line):
                    os.write(original, line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()

    def restore():
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last writer, so pump() sees EOF
        t.join(timeout=2)

    atexit.register(restore)


def run():
    """Console-script entry point."""
    if "--debug" not in sys.argv:
        _filter_native_stderr()
    sys.exit(main())


if __name__ == "__main__":
    run()
