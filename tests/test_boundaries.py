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
