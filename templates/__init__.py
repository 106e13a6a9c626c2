"""Jinja templates shipped with kexport (installed as kexport.templates)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
