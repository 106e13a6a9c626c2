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
        p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x224x224x3",
                       help="shape of an input with free dimensions for the reference data (repeatable)")
        p.add_argument("--benchmark", action="store_true",
                       help="also time every verified artifact in each runtime: ms per inference, throughput")
        p.add_argument("--allow-unverified", action="store_true",
                       help="exit 0 even when no runtime here could check a target (its row stays 'unverified')")
        q = p.add_argument_group("quantized variants (docs/quantization.md)")
        q.add_argument("--quantize", metavar="VARIANTS",
                       help="extra variants next to fp32, comma-separated, or 'all' (each target's full list): "
                            + ", ".join(f"{n} {'|'.join(t.QUANTIZE)}" for n, t in _registry().items() if t.QUANTIZE))
        q.add_argument("--calibration", metavar="DATA.npz|DIR",
                       help="calibration data for static int8: arrays named after the inputs, or an image folder")
        q.add_argument("--eval", metavar="DATA.npz|DIR",
                       help="evaluation data: the inputs plus labels 'y' (or a folder of class folders)")
        q.add_argument("--min-agreement", type=float, default=0.98,
                       help="refuse a variant whose top-1 agreement with Keras is below this (default 0.98)")
        q.add_argument("--max-accuracy-drop", type=float, default=1.0,
                       help="refuse a variant losing more accuracy points than this vs Keras (default 1.0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    p.add_argument("--quiet", action="store_true", help="print errors only (the exit code tells the rest)")


def _registry():
    from .targets import all_targets

    return all_targets()


# targets whose command publishes the artifact into a repository named by -o
PUBLISHING = {"tf-serving": "add a checked version to a TF-Serving model repository (-o REPO)"}
SHARED_DESTS = {"quantize"}  # flags defined once in _common and handed to every target
TARGET_PREFIX = "target:"  # dest of a target flag: "target:<target>:<dest>"


def _target_actions(target) -> list[argparse.Action]:
    scratch = _Parser(add_help=False)
    target.add_arguments(scratch)
    return [a for a in scratch._actions if a.option_strings and a.dest not in SHARED_DESTS]


def _add_target_arguments(p: argparse.ArgumentParser, target, *, prefixed: bool, ambiguous: dict) -> None:
    """A target's own flags, stored under its own namespace. Under `kexport all` each flag is also
    offered as --<target>-<flag> (--coreml-format, --tfjs-format); a bare flag that two targets
    define is refused there with the prefixed spellings."""
    group = p.add_argument_group(f"{target.name} options")
    for action in _target_actions(target):
        names = []
        for opt in action.option_strings:
            if prefixed:
                names.append(f"--{target.name}-{opt.lstrip('-')}")
            if not prefixed or opt not in ambiguous:
                names.append(opt)
        kwargs = {"dest": f"{TARGET_PREFIX}{target.name}:{action.dest}", "default": action.default,
                  "help": action.help}
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kwargs["action"] = "store_true" if isinstance(action, argparse._StoreTrueAction) else "store_false"
        else:
            metavar = action.metavar or (None if action.choices else action.dest.upper())
            kwargs.update(type=action.type, choices=action.choices, metavar=metavar, nargs=action.nargs)
        group.add_argument(*names, **kwargs)


class _Ambiguous(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        raise _UsageExit(f"{parser.prog}: {option_string} is a flag of several targets; use "
                         + " or ".join(self.default) + " (see 'kexport all --help')")


def _ambiguous_flags(targets) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for t in targets.values():
        for action in _target_actions(t):
            for opt in action.option_strings:
                owners.setdefault(opt, []).append(f"--{t.name}-{opt.lstrip('-')}")
    return {opt: spellings for opt, spellings in owners.items() if len(spellings) > 1}


def target_namespace(args, target) -> argparse.Namespace:
    """The flags of one target (its own namespace) plus the shared ones."""
    prefix = f"{TARGET_PREFIX}{target.name}:"
    own = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    return argparse.Namespace(**own, **{k: getattr(args, k, None) for k in SHARED_DESTS})


def build_parser() -> argparse.ArgumentParser:
    from .targets import all_targets

    parser = _Parser(prog="kexport", description="Export a Keras model everywhere and prove each artifact matches.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    targets = all_targets()
    for name, target in targets.items():
        p = sub.add_parser(name, help=PUBLISHING.get(name, target.description))
        _common(p)
        _add_target_arguments(p, target, prefixed=False, ambiguous={})
        if name in PUBLISHING:  # `kexport tf-serving -o REPO`: the target, then published into REPO
            out = next(a for a in p._actions if a.dest == "out")
            out.default, out.help = None, "the model repository directory (required)"
    p = sub.add_parser("all", help="every target")
    _common(p)
    p.add_argument("--targets", metavar="LIST", help="only these targets, comma-separated (default: every target)")
    p.add_argument("--skip", metavar="LIST", help="every target but these, comma-separated")
    ambiguous = _ambiguous_flags(targets)
    for target in targets.values():
        _add_target_arguments(p, target, prefixed=True, ambiguous=ambiguous)
    group = p.add_argument_group("flags of several targets (give the prefixed form)")
    for opt, spellings in ambiguous.items():
        group.add_argument(opt, action=_Ambiguous, nargs="?", default=spellings, dest=f"ambiguous:{opt}", metavar="...",
                           help="use " + " or ".join(spellings))
    p = sub.add_parser("verify", help="re-check an export directory against its stored reference data")
    p.add_argument("out", help="directory written by kexport")
    p.add_argument("--json", action="store_true")
    p.add_argument("--allow-unverified", action="store_true", help="exit 0 when a target could not be checked here")
    p.add_argument("--atol", type=float, help="absolute tolerance instead of each target's documented one")
    p.add_argument("--rtol", type=float, help="scale-relative tolerance instead of each target's documented one")
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
    return parser


def _quiet_libraries(debug: bool):
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        # coremltools draws tqdm progress bars and has no switch of its own (apple/coremltools#1144,
        # #1815); tqdm reads TQDM_DISABLE when it is first imported, which is after this line
        os.environ.setdefault("TQDM_DISABLE", "1")
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        for name in ("tensorflow", "absl", "tf2onnx", "coremltools"):
            logging.getLogger(name).setLevel(logging.ERROR)


_PROGRESS = []


def _progress(start: float, quiet: bool = False):
    from .progress import Progress

    p = Progress(quiet=quiet)
    _PROGRESS.append(p)
    return p


def _options(args):
    from .options import ExportOptions
    from .targets import all_targets

    names = _chosen(args)
    topts = {n: all_targets()[n].options_from_args(target_namespace(args, all_targets()[n])) for n in names}
    return ExportOptions(
        safe_mode=not args.unsafe, custom_objects=args.custom_objects, inputs=args.inputs,
        samples=args.samples, verify=not args.no_verify, atol=args.atol, rtol=args.rtol,
        target_options=topts, quantize=args.quantize, calibration=args.calibration, eval=args.eval,
        min_agreement=args.min_agreement, max_accuracy_drop=args.max_accuracy_drop,
        input_shapes=_input_shapes(args.input_shape), allow_unverified=args.allow_unverified,
        benchmark=args.benchmark,
    )


def _chosen(args) -> list[str]:
    """The targets of this command: one, or for `kexport all` every target, --targets' list, or all but --skip's."""
    from .errors import UsageError
    from .targets import all_targets

    if args.command != "all":
        return [args.command]
    known = list(all_targets())

    def names(flag, value):
        listed = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in listed if n not in known]
        if unknown or not listed:
            raise UsageError(f"{flag} {value!r}: unknown target {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(known)}")
        return listed

    if args.targets and args.skip:
        raise UsageError("--targets and --skip together: give one of them")
    if args.targets:
        return list(dict.fromkeys(names("--targets", args.targets)))
    if args.skip:
        skipped = names("--skip", args.skip)
        chosen = [n for n in known if n not in skipped]
        if not chosen:
            raise UsageError(f"--skip {args.skip!r} leaves no target")
        return chosen
    return known


def _input_shapes(items: list[str]) -> dict:
    """['image=1x224x224x3'] -> {'image': (1, 224, 224, 3)}."""
    from .errors import UsageError

    out = {}
    for item in items:
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape {item!r}: expected NAME=DxDx..., e.g. image=1x224x224x3")
        out[name] = shape
    return out


def _close_progress():
    while _PROGRESS:
        _PROGRESS.pop().close()


def _print_result(result, as_json: bool, quiet: bool = False):
    from .report import format_table

    _close_progress()
    if quiet:
        for line in result.failures():
            print(f"kexport: {line}", file=sys.stderr)
        return
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(format_table(result))
        if result.out_dir:
            print(f"\nreport: {os.path.join(result.out_dir, 'report.json')}")


def cmd_export(args) -> int:
    from . import api

    result = api.export(args.model, _chosen(args), args.out, options=_options(args), progress=_progress(time.perf_counter(), args.quiet))
    _print_result(result, args.json, args.quiet)
    return result.exit_code


def cmd_verify(args) -> int:
    from . import api

    result = api.verify(args.out, progress=_progress(time.perf_counter(), args.quiet), allow_unverified=args.allow_unverified,
                        atol=args.atol, rtol=args.rtol)
    _print_result(result, args.json, args.quiet)
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
            print(f"  {name:12} no: converter not installed ({', '.join(missing)}); pip install 'kexport[{target.pip_extra or 'all'}]'")
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
        state = "ok" if not missing else f"missing: pip install 'kexport[{target.pip_extra or 'all'}]'"
        print(f"  {name:14} {state:10} ({', '.join(vers)})")
    print("runtimes:")
    for name, rt in all_runtimes().items():
        reason = rt.available()
        print(f"  {name:18} " + ("ok" if not reason else f"unavailable: {reason}" + (f" -> {rt.install_hint}" if rt.install_hint else "")))
        if not reason and getattr(rt, "device", None):  # not this host natively (e.g. emulated arm64)
            print(f"  {'':18}   on {rt.device}")
    return EXIT_OK


def cmd_tf_serving(args) -> int:
    from .targets.tf_serving import run_command

    eopts = _options(args)
    topts = eopts.target_options["tf-serving"]
    result = run_command(args.model, args.out, topts, eopts, progress=_progress(time.perf_counter(), args.quiet))
    _print_result(result, args.json, args.quiet)
    return result.exit_code


def cmd_serve_demo(args) -> int:
    from .targets.tfjs import serve_demo as serve

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
        _close_progress()
        print(f"kexport: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KexportError as e:
        _close_progress()
        if debug:
            raise
        print(f"kexport: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kexport: interrupted; no partial artifact was moved into place", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in kexport or a library: still one line unless --debug
        _close_progress()
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
