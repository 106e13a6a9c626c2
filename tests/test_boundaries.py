"""Import boundaries, read from the source (ast), not from what happens to be imported:

- runtimes/ never imports the core: generated servers copy runtime adapters and must not need
  kexport (only `kexport.runtimes` itself, written as relative imports);
- nothing outside a target package imports that package's internals (`kexport.targets.tfjs.graph`
  from api.py, say): a target is used through the Target protocol and its package's __init__.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_OF = {"exporter": "kexport", "runtimes": "kexport.runtimes", "templates": "kexport.templates"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    base = PACKAGE_OF[parts[0]].split(".")
    parts = base + parts[1:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if _is_module(f"{mod}.{a.name}")]
    return out


def _is_module(name: str) -> bool:
    """`from pkg import x` imports a module only when pkg/x.py or pkg/x/ exists."""
    for folder, package in sorted(PACKAGE_OF.items(), key=lambda kv: -len(kv[1])):
        if name == package or name.startswith(package + "."):
            rel = name[len(package):].lstrip(".").split(".")
            path = ROOT.joinpath(folder, *rel)
            return path.with_suffix(".py").is_file() or path.is_dir()
    return False


def _sources(folder: str):
    return [p for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts]


def test_runtimes_never_import_the_core():
    bad = []
    for path in _sources("runtimes"):
        for line, mod in _imports(path):
            top = mod.split(".")
            if top[0] in ("exporter", "runtimes", "templates") or (
                    top[0] == "kexport" and mod != "kexport" and not mod.startswith("kexport.runtimes")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "runtimes/ must stand alone (generated servers copy it):\n" + "\n".join(bad)


def _target_packages() -> set[str]:
    return {p.parent.name for p in (ROOT / "exporter" / "targets").glob("*/__init__.py")}


def test_no_module_reaches_into_another_target_package():
    packages = _target_packages()
    bad = []
    for path in _sources("exporter") + _sources("runtimes"):
        me = _module_name(path)
        for line, mod in _imports(path):
            parts = mod.split(".")
            if parts[:2] != ["kexport", "targets"] or len(parts) < 4 or parts[2] not in packages:
                continue
            owner = f"kexport.targets.{parts[2]}"
            if not (me == owner or me.startswith(owner + ".")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} (use {owner}'s public names)")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rules above can fail: a fake runtime importing the core is caught."""
    fake = ROOT / "runtimes" / "_boundary_probe.py"
    fake.write_text("from kexport.loader import load_model\n")
    try:
        hits = [m for _, m in _imports(fake)]
        assert "kexport.loader" in hits
    finally:
        fake.unlink()


# ---- runtimes read only runtimes/ ----------------------------------------------------------------

_OUTSIDE_WORDS = ("templates", "exporter", "..")


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _reads_outside(source: str, filename: str = "<probe>") -> list[tuple[int, str]]:
    """(line, what) for every way a module could reach a file outside its own folder tree: a path
    climbing from __file__ (`.parent.parent`, `.parents[..]`, nested `os.path.dirname`), or a
    string naming another top folder of the project ("templates", "exporter") or "..". Comments
    and docstrings may name them."""
    tree = ast.parse(source, filename)
    skip = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parent":
            out.append((node.lineno, ".parent.parent"))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            out.append((node.lineno, ".parents[...]"))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "dirname" and node.args \
                and isinstance(node.args[0], ast.Call) and getattr(node.args[0].func, "attr", None) == "dirname":
            out.append((node.lineno, "os.path.dirname(os.path.dirname(...))"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            words = [w for w in _OUTSIDE_WORDS if w in node.value.replace("\\", "/").split("/")]
            if words:
                out.append((node.lineno, f"path string {node.value!r}"))
    return sorted(set(out))


def test_runtimes_read_only_their_own_folder():
    """Runtimes are copied into generated servers: a page, a script or a schema a runtime reads
    lives in runtimes/ (tfjs_chromium_page.html), never in templates/ or the core."""
    bad = []
    for path in _sources("runtimes"):
        for line, what in _reads_outside(path.read_text(), str(path)):
            bad.append(f"{path.relative_to(ROOT)}:{line} reads outside runtimes/: {what}")
    assert not bad, "\n".join(bad)


def test_the_outside_reader_check_sees_the_old_chromium_page():
    """What tfjs_chromium.py did before the page moved into runtimes/ is caught, each way."""
    old = ('from pathlib import Path\n'
           'TEMPLATES = Path(__file__).resolve().parent.parent / "templates"\n')
    assert [w for _, w in _reads_outside(old)] == [".parent.parent", "path string 'templates'"]
    assert _reads_outside('import os\nROOT = os.path.dirname(os.path.dirname(__file__))\n')
    assert _reads_outside('from pathlib import Path\nP = Path(__file__).parents[1] / "x.j2"\n')
    assert _reads_outside('P = "../templates/x.j2"\n')
    assert not _reads_outside('"""Reads ../templates? No."""\nPAGE = "tfjs_chromium_page.html"\n')
