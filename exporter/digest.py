"""sha256 of an artifact (a file, or a directory tree with its relative paths) and of the
reference data: what `kexport verify` checks before trusting anything a report says."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_sha256(path: Path, exclude: Path | None = None) -> str:
    """A file's sha256, or a directory's over every (relative path, content) pair in order, so a
    renamed, added or removed file changes it too. `exclude`: a relative sub-folder left out (the
    report that a published TF-Serving version carries about itself)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _feed(h, path)
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if exclude is not None and f.relative_to(path).is_relative_to(exclude):
            continue
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        _feed(h, f)
        h.update(b"\0")
    return h.hexdigest()


def _feed(h, f: Path) -> None:
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
