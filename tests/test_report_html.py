"""report.html: self-contained, its numbers equal report.json, no external request, and a model's
names cannot inject markup or break the usage snippets. Checked in headless Chromium."""

from __future__ import annotations

import copy
import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kexport.report_html import js_str, kotlin_str, py_str, render, sh_str, swift_str

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("KEXPORT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
HOSTILE = 'x"\'</pre><script>window.PWNED=1</script>$(touch PWNED)${a}\\\nü'


def _open(page, html: Path) -> list[str]:
    """Load the page; return every request that was not the file itself."""
    others = []

    def route(r):
        if r.request.url != html.as_uri():
            others.append(r.request.url)
            return r.abort()
        return r.continue_()

    page.route("**/*", route)
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    page.unroute("**/*")
    return others


def _browse(html: Path, fn):
    """Open `html` in headless Chromium and return fn(page, others), where `others` lists every
    request that was not the file itself. Runs in a thread of its own: Playwright's sync API
    refuses a thread where an asyncio loop runs (another test may have left one)."""
    from concurrent.futures import ThreadPoolExecutor

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium not found (make chromium)")

    def work():
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                others = _open(page, html)
                return fn(page, others)
            finally:
                browser.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result(timeout=300)


def test_numbers_in_the_page_equal_report_json(sample_export, tmp_path):
    _, out = sample_export("two_in_two_out")
    html = out / "report.html"
    assert html.is_file(), "every export writes report.html beside report.json"
    report = json.loads((out / "report.json").read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def read(page, others):
        page.screenshot(path=str(ARTIFACTS / "report_two_in_two_out.png"), full_page=True)
        cells = {}
        for t in report["targets"]:
            row = page.locator(f'tr[data-target="{t["target"]}"][data-variant="{t["variant"]}"]')
            size = row.locator("td[data-size]").get_attribute("data-size") if row.count() == 1 else None
            cells[(t["target"], t["variant"])] = (row.count(), size, {
                p["runtime"]: (row.locator(f'td[data-runtime="{p["runtime"]}"]').get_attribute("data-status"),
                               row.locator(f'td[data-runtime="{p["runtime"]}"]').get_attribute("data-err"))
                for p in t["parity"]})
        return {"others": others, "sha": page.inner_text("#sha256"), "params": page.inner_text("#parameters"),
                "names": page.locator("code.io-name").all_inner_texts(), "usage": page.inner_text("#usage"),
                "cells": cells}

    got = _browse(html, read)
    assert got["others"] == [], "the report must not load anything"
    assert got["sha"] == report["model"]["sha256"]
    assert got["params"].replace(",", "") == str(report["model"]["parameters"])
    checked = 0
    for t in report["targets"]:
        count, size, runtimes = got["cells"][(t["target"], t["variant"])]
        assert count == 1, t["target"]
        if t.get("size_bytes") is not None:
            assert size == str(t["size_bytes"])
        for p in t["parity"]:
            status, err = runtimes[p["runtime"]]
            assert status == p["status"]
            if p.get("max_abs_err") is not None:
                assert float(err) == p["max_abs_err"]
                checked += 1
    assert checked >= 5
    assert got["names"] == [t["name"] for t in report["model"]["inputs"] + report["model"]["outputs"]]
    for t in report["model"]["inputs"] + report["model"]["outputs"]:
        assert t["name"] in got["usage"]


def test_hostile_names_stay_text(sample_export, tmp_path):
    _, out = sample_export("two_in_two_out")
    report = copy.deepcopy(json.loads((out / "report.json").read_text()))
    report["model"]["inputs"][0]["name"] = HOSTILE
    report["targets"][0]["notes"] = [HOSTILE]
    dest = tmp_path / "hostile"
    dest.mkdir()
    html = render(report, dest)
    got = _browse(html, lambda page, others: {
        "others": others, "pwned": page.evaluate("() => window.PWNED"), "scripts": page.locator("script").count(),
        "model": page.inner_text("#model")})
    assert got["others"] == [] and got["pwned"] is None and got["scripts"] == 0
    assert "</pre><script>window.PWNED=1</script>$(touch PWNED)" in got["model"]  # shown as text


def test_language_escapers_round_trip(tmp_path):
    assert ast.literal_eval(py_str(HOSTILE)) == HOSTILE
    node = shutil.which("node")
    if node:
        got = subprocess.run([node, "-e", f"process.stdout.write(JSON.stringify({js_str(HOSTILE)}))"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(got) == HOSTILE
    got = subprocess.run(["bash", "-c", f"printf %s {sh_str(HOSTILE)}"], capture_output=True, text=True, check=True).stdout
    assert got == HOSTILE and not (tmp_path / "PWNED").exists()
    k = kotlin_str(HOSTILE)  # no Kotlin compiler here: the rules a Kotlin literal needs
    assert "${" not in k.replace("\\$", "") and "\n" not in k and k.count('"') - k.count('\\"') == 2
    sw = swift_str(HOSTILE)
    assert "\n" not in sw and sw.count('"') - sw.count('\\"') == 2 and "\\(" not in sw


def test_demo_page_config_cannot_close_its_script():
    from kexport.targets.tfjs.demo import script_json

    hostile = {"inputs": [{"name": HOSTILE}], "outputs": ["</script><img src=x onerror=alert(1)>"]}
    text = script_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == hostile  # JavaScript (and JSON) read the same names back
