"""`kexport tfjs MODEL --demo`: a static page next to the model that a person can use.

- a small one-channel image input (the digits model, 8x8): draw on a canvas, prediction live;
- another image input (H x W x 1|3): choose an image file, see the top predictions;
- anything else: the inputs as JSON (pre-filled with the first reference sample), Predict.

The page loads TF.js from `vendor/` (copied from the npm packages in runtimes/tfjs_node, never a
CDN) and the fp32 model next to it; any static server works (`kexport serve-demo OUT`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DRAW_MAX = 32  # inputs up to 32x32x1 are drawn; bigger ones are images chosen from disk
CANVAS = 224


def demo_kind(signature) -> str:
    if len(signature.inputs) != 1:
        return "tensor"
    t = signature.inputs[0]
    if "float" not in t.dtype or len(t.shape) != 4 or None in t.shape[1:] or t.shape[3] not in (1, 3):
        return "tensor"
    return "draw" if t.shape[3] == 1 and max(t.shape[1:3]) <= DRAW_MAX else "image"


def pixel_scale(model) -> float:
    """1/255 (pixels in [0, 1], what the reference data assumes) unless the model starts with
    a Rescaling layer, which then expects raw 0..255 pixels."""
    layers = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]
    return 1.0 if layers and type(layers[0]).__name__ == "Rescaling" else 1.0 / 255.0


def write_demo(ctx, dest: Path, model_dir: Path, runtime_options: dict) -> Path:
    from kexport.runtimes.tfjs_chromium import copy_vendor
    from kexport.runtimes.tfjs_model import feeds_and_fetch, read_model_json

    fmt = runtime_options.get("format", "graph")
    model_json = read_model_json(model_dir / "model.json")
    feeds, fetch = feeds_and_fetch(model_json, fmt, runtime_options.get("output_map"))
    sig = ctx.signature
    kind = demo_kind(sig)
    spec = sig.inputs[0]
    sample = {k: np.asarray(v)[:1].tolist() for k, v in ctx.inputs.items()}
    page = render(
        "tfjs_demo.html.j2",
        title=f"{ctx.name} - TF.js demo",
        model_url=f"{model_dir.name}/model.json",
        format=fmt,
        kind=kind,
        height=spec.shape[1] if kind != "tensor" else 0,
        width=spec.shape[2] if kind != "tensor" else 0,
        channels=spec.shape[3] if kind != "tensor" else 0,
        canvas=CANVAS,
        scale=pixel_scale(ctx.model),
        config=script_json({
            "inputs": [{"name": t.name, "dtype": "int32" if "int" in t.dtype else "float32",
                        "shape": [d if d is not None else -1 for d in t.shape]} for t in sig.inputs],
            "outputs": sig.output_names,
            "feeds": feeds,
            "fetch": fetch,
        }),
        sample=json.dumps(sample),  # in a <textarea>: autoescaped
    )
    (dest / "index.html").write_text(page)
    copy_vendor(dest / "vendor")
    return dest / "index.html"


def render(template: str, **values) -> str:
    """A page from kexport.templates (StrictUndefined, HTML autoescaped)."""
    import jinja2

    from ... import templates

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates.ROOT)), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    return env.get_template(template).render(**values)


def script_json(obj) -> str:
    """JSON safe inside a <script> element: a model's names cannot close it (`</script>`) or
    open markup; `<`, `>` and `&` become JSON escapes that JavaScript reads back unchanged."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def demo_root(out) -> Path:
    """The folder holding index.html: OUT itself or OUT/tfjs (an export directory)."""
    from ...errors import UsageError

    out = Path(out)
    for folder in (out, out / "tfjs"):
        if (folder / "index.html").exists() and (folder / "vendor" / "tf.min.js").exists():
            return folder
    raise UsageError(f"{out}: no TF.js demo page (index.html + vendor/) here or in {out / 'tfjs'}; "
                     "write one with 'kexport tfjs MODEL --demo -o OUT'")


def make_server(out, host: str = "127.0.0.1", port: int = 8000):
    """A static file server for the demo folder (.wasm served as application/wasm)."""
    import functools
    import http.server

    root = demo_root(out)

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".wasm": "application/wasm", ".js": "text/javascript", ".json": "application/json"}

        def log_message(self, fmt, *args):  # one short line per request
            print(f"  {self.address_string()} {fmt % args}", flush=True)

    try:
        return http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(root)))
    except OSError as e:
        from ...errors import UsageError

        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); pass --port with a free port") from e


def serve(out, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the demo until Ctrl-C (`kexport serve-demo OUT`)."""
    server = make_server(out, host, port)
    print(f"serving {demo_root(out)} at http://{host}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
