"""Escaping for every language the generated server is written in, as Jinja filters.

Every string that reaches a template (model name, file name, labels, tensor names, versions)
may come from an untrusted model file or file name. The environment built by `environment()`
refuses to render a string that did not go through one of these filters (its `finalize`
raises), so a value can only be pasted escaped for the place it lands in:

    py       a Python literal (repr of str/int/float/bool/None, lists/dicts of them)
    pytext   text inside a Python comment or docstring (no quote, backslash or line break survives)
    sh       one shell word (POSIX single quotes)
    url      one URL path segment (percent-encoded, RFC 3986 unreserved characters kept)
    md       Markdown / HTML prose (HTML-escaped, Markdown punctuation backslash-escaped)
    docker_tag   a valid Docker image name component (lowercase [a-z0-9] runs joined by '-', never empty)
    pin      a requirements.txt pin `name==version` (validated, refused otherwise)
    comment  text after '#' in requirements.txt / Dockerfile / gunicorn.conf.py (one line)
"""

from __future__ import annotations

import html
import math
import re
import shlex
import urllib.parse


class Escaped(str):
    """A string already escaped for its destination; the only kind of string a template may emit."""


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")


def _printable(text: str, extra: str = "") -> str:
    """Non-printable characters (line breaks included) and `extra` as Python escapes."""
    out = []
    for ch in str(text):
        if ch == "\\" or ch in extra:
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def py(value) -> Escaped:
    def check(v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"non-finite float {v!r} has no Python literal")
        if isinstance(v, (list, tuple)):
            for x in v:
                check(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                check(k)
                check(x)
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            raise TypeError(f"no Python literal for {type(v).__name__}")

    check(value)
    return Escaped(repr(value))


def pytext(value) -> Escaped:
    return Escaped(_printable(value, extra="\"'"))


def comment(value) -> Escaped:
    return Escaped(_printable(value))


def sh(value) -> Escaped:
    return Escaped(shlex.quote(str(value)))


def url(value) -> Escaped:
    return Escaped(urllib.parse.quote(str(value), safe=""))


def md(value) -> Escaped:
    text = html.escape(_printable(value), quote=False)
    return Escaped(_MD_SPECIAL.sub(r"\\\1", text))


def docker_tag(value) -> Escaped:
    tag = re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")[:100].strip("-")
    return Escaped(tag or "model")


def pin(value) -> Escaped:
    name, version = value
    text = f"{name}=={version}"
    if not _PIN.fullmatch(text):
        raise ValueError(f"refusing to write requirement {text!r}")
    return Escaped(text)


FILTERS = {"py": py, "pytext": pytext, "comment": comment, "sh": sh, "url": url, "md": md,
           "docker_tag": docker_tag, "pin": pin}


def finalize(value):
    """Only escaped strings, numbers and booleans reach the output."""
    if isinstance(value, Escaped) or isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r} in a template")
        return value
    raise TypeError(f"unescaped {type(value).__name__} {str(value)[:60]!r} in a template: "
                    "pass it through a filter (py, pytext, sh, url, md, comment, docker_tag, pin)")


def environment(template_dir):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, finalize=finalize)
    env.filters.update(FILTERS)
    return env
