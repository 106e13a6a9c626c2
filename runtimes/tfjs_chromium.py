"""TF.js in a real headless browser: runtime `tfjs-chromium`.

The artifact folder is served on 127.0.0.1 (a free port) together with the parity page
(tfjs_chromium_page.html, beside this module) and the TF.js bundle of the npm packages in
runtimes/tfjs_node (nothing from a CDN). Debian's chromium is driven by Playwright's Python package; Playwright's
own browser download does not work offline. One browser is launched per Python process, on
first use, and reused by every session (closed atexit). The page keeps TF.js' own backend
choice (`backend="auto"`: webgl when the browser offers it) unless told otherwise; the backend
used is reported by `session.backend` and in report.json (`runtime_timing`).
"""

from __future__ import annotations

import atexit
import base64
import http.server
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from .base import Runtime, module_missing, register_runtime
from .tfjs_model import PACKAGES_DIR, feeds_and_fetch, read_model_json

CHROMIUM = os.environ.get("KEXPORT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
LAUNCH_TIMEOUT_MS = 60_000
CALL_TIMEOUT_MS = 300_000
# The page the parity check drives: everything a runtime reads lives in runtimes/ (generated
# servers copy runtimes, never the templates).
PAGE = Path(__file__).with_name("tfjs_chromium_page.html")
INSTALL_HINT = "apt-get install chromium, pip install playwright, and `make node-deps` for the TF.js bundle"


def vendor_files() -> dict[str, Path]:
    """URL name -> file for the TF.js browser bundle (from node_modules, served locally)."""
    tfjs = PACKAGES_DIR / "node_modules" / "@tensorflow"
    files = {"tf.min.js": tfjs / "tfjs" / "dist" / "tf.min.js",
             "tf-backend-wasm.min.js": tfjs / "tfjs-backend-wasm" / "dist" / "tf-backend-wasm.min.js"}
    for wasm in (tfjs / "tfjs-backend-wasm" / "dist").glob("*.wasm"):
        files[wasm.name] = wasm
    return files


def copy_vendor(dest: Path) -> None:
    """Copy the bundle next to a demo page so any static server can serve it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in vendor_files().items():
        shutil.copyfile(src, dest / name)


# ---- local HTTP server -------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    routes: dict[str, Path] = {}  # url prefix "/a/<token>/" -> folder
    pages: dict[str, str] = {}  # "/page.html" -> html
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".json": "application/json"}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in self.pages:
            body = self.pages[path].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def translate_path(self, path):
        path = path.split("?")[0]
        if path.startswith("/vendor/"):
            f = vendor_files().get(path[len("/vendor/"):])
            return str(f) if f else "/nonexistent"
        for prefix, folder in list(self.routes.items()):  # sessions mount/unmount meanwhile
            if path.startswith(prefix):
                target = (folder / path[len(prefix):]).resolve()
                return str(target) if folder.resolve() in target.parents or target == folder.resolve() else "/nonexistent"
        return "/nonexistent"


class _Server:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        _Handler.pages["/parity.html"] = PAGE.read_text(encoding="utf-8")

    def mount(self, folder: Path) -> str:
        prefix = f"/a/{uuid.uuid4().hex[:12]}/"
        _Handler.routes[prefix] = Path(folder)
        return f"http://127.0.0.1:{self.port}{prefix}"

    def unmount(self, url: str):
        _Handler.routes.pop(url.split(str(self.port), 1)[1], None)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- the shared browser ------------------------------------------------------------------------

class _Browser:
    """Chromium + the local server + one parity page per TF.js backend, all reused."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        t0 = time.perf_counter()
        self.pw = sync_playwright().start()
        try:
            self.browser = self.pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   timeout=LAUNCH_TIMEOUT_MS)
        except Exception:
            self.pw.stop()
            raise
        self.launch_seconds = round(time.perf_counter() - t0, 3)
        self.server = _Server()
        self.pages: dict = {}  # backend -> (page, info, console lines)

    def page(self, backend: str):
        entry = self.pages.get(backend)
        if entry is not None and not entry[0].is_closed():
            return entry
        page = self.browser.new_page()
        page.set_default_timeout(CALL_TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.on("pageerror", lambda e: console.append(str(e)))
        try:
            page.goto(f"http://127.0.0.1:{self.server.port}/parity.html", timeout=LAUNCH_TIMEOUT_MS)
            page.wait_for_function("window.kexportReady === true", timeout=LAUNCH_TIMEOUT_MS)
            info = page.evaluate("(b) => window.kexportInit(b)", backend)
        except Exception as e:
            page.close()
            raise RuntimeError(f"the TF.js parity page did not start: {_one_line(e, console)}") from e
        self.pages[backend] = (page, info, console)
        return self.pages[backend]

    def close(self):
        for fn in (self.browser.close, self.pw.stop, self.server.close):
            try:
                fn()
            except Exception:  # best effort at exit: the process is ending anyway
                pass


_STATE: dict = {}


def browser() -> _Browser:
    if "browser" not in _STATE:
        _STATE["browser"] = _Browser()
    return _STATE["browser"]


@atexit.register
def _close_browser():
    b = _STATE.pop("browser", None)
    if b is not None:
        b.close()


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found; {INSTALL_HINT}"
    reason = module_missing("playwright", "playwright")
    if reason:
        return reason
    missing = [n for n, f in vendor_files().items() if not f.exists()]
    if missing or "tf.min.js" not in vendor_files():
        return f"TF.js bundle missing in {PACKAGES_DIR}/node_modules; run `make node-deps`"
    return None


class TfjsChromiumSession:
    def __init__(self, path: str, fmt: str = "graph", backend: str = "auto", output_map: dict | None = None):
        p = Path(path)
        model_json_path = p / "model.json" if p.is_dir() else p
        model_json = read_model_json(model_json_path)
        self.format = fmt
        self.feeds, self.fetch = feeds_and_fetch(model_json, fmt, output_map)
        b = browser()
        self.server = b.server
        self.page, info, self.console = b.page(backend)
        self.backend = info["backend"]
        self.base = self.server.mount(model_json_path.parent)
        self.id = None
        try:
            res = self.page.evaluate("([u, f]) => window.kexportLoad(u, f)", [self.base + model_json_path.name, fmt])
        except Exception as e:
            self.server.unmount(self.base)
            raise RuntimeError(_one_line(e, self.console)) from e
        self.id = res["id"]
        self.load_seconds = res["seconds"]
        self.predict_seconds: list[float] = []

    def predict(self, inputs):
        tensors = []
        for name, a in inputs.items():
            a = np.asarray(a)
            a = a.astype(np.int32) if a.dtype.kind in "iu" else a.astype(np.uint8) if a.dtype == np.bool_ else a.astype(np.float32)
            dtype = {"f": "float32", "i": "int32", "u": "bool"}[a.dtype.kind]
            tensors.append({"name": name, "feed": self.feeds.get(name, name), "dtype": dtype, "shape": list(a.shape),
                            "data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()})
        try:
            res = self.page.evaluate("([i, t, f]) => window.kexportPredict(i, t, f)", [self.id, tensors, self.fetch])
        except Exception as e:
            msg = _one_line(e, self.console)
            self.page.close()  # a failed kernel can leave the backend broken: next session gets a fresh page
            raise RuntimeError(msg) from e
        self.predict_seconds.append(res["seconds"])
        self.backend = res["backend"]
        out = {}
        for t in res["tensors"]:
            dt = {"float32": np.float32, "int32": np.int32, "bool": np.uint8}.get(t["dtype"], np.float32)
            arr = np.frombuffer(base64.b64decode(t["data"]), dtype=dt).reshape(t["shape"]).copy()
            out[t["name"]] = arr
        return out

    def close(self):
        try:
            if self.id is not None and not self.page.is_closed():
                self.page.evaluate("(i) => window.kexportDispose(i)", self.id)
        except Exception:  # a crashed page: nothing left to free
            pass
        self.server.unmount(self.base)


def page_info(backend: str = "auto") -> dict:
    """The backend TF.js picks in the parity page, the browser version and its launch time
    (report.json `runtime_timing`). Latency is not measured here: a first WebGL run compiles
    shaders for seconds; the parity row's `seconds` has the real load + predict time."""
    reason = TfjsChromium().available()
    if reason:
        return {"skipped": reason}
    try:
        b = browser()
        _, info, _ = b.page(backend)
    except RuntimeError as e:
        return {"error": str(e)}
    return {"backend": info["backend"], "tfjs": info["tfjs"], "chromium": b.browser.version,
            "launch_s": b.launch_seconds}


def _one_line(e: BaseException, console: list[str]) -> str:
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    msg = msg.replace("Error: page.evaluate: ", "")
    errors = [c for c in console if "rror" in c]
    return msg[:300] + (f" (page: {errors[-1][:200]})" if errors and errors[-1][:50] not in msg else "")


@register_runtime
class TfjsChromium(Runtime):
    name = "tfjs-chromium"
    install_hint = INSTALL_HINT
    thread_bound = True  # Playwright's sync API: the browser lives on the thread that launched it

    def available(self):
        reason = chromium_missing()
        if reason:
            return reason
        # Launching is the only real test (missing libraries, sandbox trouble); done once, and the
        # browser is then reused, so a broken browser is a skipped row with its reason, not a hang.
        if "error" not in _STATE and "browser" not in _STATE:
            try:
                browser()
            except Exception as e:
                _STATE["error"] = f"headless chromium did not start: {_one_line(e, [])}"
        return _STATE.get("error")

    def load(self, path, **options):
        return TfjsChromiumSession(str(path), options.get("format", "graph"), options.get("backend", "auto"),
                                   options.get("output_map"))

    def timing(self, path, inputs, **options):
        return page_info(options.get("backend", "auto"))
