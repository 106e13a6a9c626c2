"""The generated app's openapi.json: TF-Serving's REST API with this model's exact tensor schemas.

Schemas are exact (fixed dimensions as minItems = maxItems, integer ranges, float32 bounds) so
that a schema-driven fuzzer (schemathesis) generates valid requests as well as invalid ones.
"""

from __future__ import annotations

FLOAT32_MAX = 3.4028234663852886e38
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _scalar(t) -> dict:
    if t.dtype == "string":  # a JSON string, or TF-Serving's {"b64": ...} for one string's UTF-8 bytes
        return {"oneOf": [{"type": "string"}, _b64("base64 of one string's UTF-8 bytes")]}
    if t.dtype == "bool":
        return {"type": "boolean"}
    if "int" in t.dtype:
        s = {"type": "integer"}
        if t.int_high:
            s.update(minimum=0, maximum=t.int_high - 1)
        return s
    return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def _nested(t, dims) -> dict:
    s = _scalar(t)
    for d in reversed(dims):
        s = {"type": "array", "items": s, "minItems": d or 1}
        if d:
            s["maxItems"] = d
    return s


def _b64(description: str = "raw little-endian bytes of the value in the input's dtype") -> dict:
    return {"type": "object", "required": ["b64"], "additionalProperties": False,
            "properties": {"b64": {"type": "string", "format": "byte", "description": description}}}


def _value(t, dims) -> dict:
    """Nested lists; a whole value as raw b64 bytes only for a numeric input with a fixed row shape."""
    if t.dtype == "string" or None in tuple(t.shape[1:]):
        return _nested(t, dims)
    return {"oneOf": [_nested(t, dims), _b64()]}


def _out(t, batched: bool) -> dict:
    # A finite input can still overflow inside the model; NaN/Infinity are then written as
    # TF-Serving writes them (bare NaN / Infinity tokens), which JSON Schema cannot express.
    s = {"type": {"bool": "boolean", "string": "string"}.get(t.dtype, "number")}
    dims = t.shape[1:] if not batched else (None,) + tuple(t.shape[1:])
    for d in reversed(dims):
        s = {"type": "array", "items": s}
    return s


def _named(ts, value) -> dict:
    return {"type": "object", "additionalProperties": False, "required": [t.name for t in ts],
            "properties": {t.name: value(t) for t in ts}}


def openapi_spec(spec) -> dict:
    sig = spec.signature
    ins, outs = sig.inputs, sig.outputs
    row_value = lambda t: _value(t, t.shape[1:])  # noqa: E731
    col_value = lambda t: _value(t, (None,) + tuple(t.shape[1:]))  # noqa: E731
    instance = row_value(ins[0]) if len(ins) == 1 else _named(ins, row_value)
    columns = col_value(ins[0]) if len(ins) == 1 else _named(ins, col_value)
    sig_name = {"type": "string", "enum": ["serving_default"]}
    request = {"oneOf": [
        {"type": "object", "required": ["instances"], "additionalProperties": False,
         "properties": {"signature_name": sig_name, "instances": {"type": "array", "minItems": 1, "items": instance}}},
        {"type": "object", "required": ["inputs"], "additionalProperties": False,
         "properties": {"signature_name": sig_name, "inputs": columns}},
    ]}
    row_pred = _out(outs[0], False) if len(outs) == 1 else _named(outs, lambda t: _out(t, False))
    col_pred = _out(outs[0], True) if len(outs) == 1 else _named(outs, lambda t: _out(t, True))
    labels = {"description": "top label per example (only with ?labels=true)"}
    response = {"oneOf": [
        {"type": "object", "required": ["predictions"],
         "properties": {"predictions": {"type": "array", "items": row_pred}, "labels": labels}},
        {"type": "object", "required": ["outputs"], "properties": {"outputs": col_pred, "labels": labels}},
    ]}
    errors = {str(code): {"description": why, "content": {"application/json": {"schema": _ERROR}}}
              for code, why in ((400, "bad input (one line)"), (404, "unknown model name or version"),
                                (413, "body larger than MAX_CONTENT_LENGTH"))}
    name_param = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"},
                  "example": spec.name}
    version_param = {"name": "version", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}, "example": spec.version}
    status = {"type": "object", "required": ["model_version_status"], "properties": {"model_version_status": {
        "type": "array", "items": {"type": "object", "required": ["version", "state", "status"]}}}}
    meta = {"type": "object", "required": ["model_spec", "metadata"]}
    npy = {"schema": {"type": "string", "format": "binary"}}
    predict = {
        "summary": "Predict (TF-Serving REST)",
        "requestBody": {"required": True, "content": {  # .npy/.npz: numeric inputs only
            "application/json": {"schema": request},
            **({} if any(t.dtype == "string" for t in ins) else {"application/x-npy": npy, "application/x-npz": npy})}},
        "responses": {"200": {"description": "predictions (row format) or outputs (columnar format)",
                              "content": {"application/json": {"schema": response},
                                          "application/x-npy": npy, "application/x-npz": npy}},
                      **errors},
    }

    def get(schema, summary):
        return {"get": {"summary": summary, "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": schema}}}, "404": errors["404"]}}}

    def simple(summary, codes=("200",)):
        return {"get": {"summary": summary, "responses": {
            c: {"description": summary, "content": {"application/json": {"schema": {"type": "object"}}}}
            for c in codes}}}

    paths = {}
    for prefix, params in (("/v1/models/{model_name}", [name_param]),
                           ("/v1/models/{model_name}/versions/{version}", [name_param, version_param])):
        paths[prefix] = {"parameters": params, **get(status, "model status")}
        paths[prefix + "/metadata"] = {"parameters": params, **get(meta, "model metadata (signature)")}
        paths[prefix + ":predict"] = {"parameters": params, "post": predict}
    paths.update(_v2_paths(spec, errors, name_param, version_param))
    paths["/healthz"] = simple("the process is alive")
    paths["/readyz"] = simple("the model is loaded", ("200", "503"))
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{spec.name} (TF-Serving REST API, Open Inference Protocol)", "version": spec.version,
                 "description": f"Generated by kexport from {spec.source_file}; served with {spec.runtime}."},
        "paths": paths,
    }


def _v2_paths(spec, errors: dict, name_param: dict, version_param: dict) -> dict:
    """The Open Inference Protocol routes (JSON tensors; the binary data extension is not
    expressible in OpenAPI, see docs/flask.md)."""
    from .app import V2_DATATYPES

    sig = spec.signature

    def tensor_in(t):
        dims = [{"type": "integer", "enum": [d]} if d else {"type": "integer", "minimum": 1, "maximum": 64}
                for d in t.shape]
        return {"type": "object", "required": ["name", "shape", "datatype", "data"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "enum": [t.name]},
                               "shape": {"type": "array", "items": dims, "minItems": len(dims), "maxItems": len(dims)},
                               "datatype": {"type": "string", "enum": [V2_DATATYPES.get(t.dtype, "BYTES")]},
                               "data": {"type": "array",
                                        "items": {"type": "string"} if t.dtype == "string" else _scalar(t)}}}

    request = {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": len(sig.inputs), "maxItems": len(sig.inputs),
                   "items": {"oneOf": [tensor_in(t) for t in sig.inputs]}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                               "properties": {"name": {"type": "string",
                                                                       "enum": [t.name for t in sig.outputs]}}}}}}
    tensor_meta = {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}}
    metadata = {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                "properties": {"inputs": tensor_meta, "outputs": tensor_meta}}
    answer = {"type": "object", "required": ["model_name", "model_version", "outputs"]}
    empty = {"200": {"description": "yes"}}
    infer = {"summary": "Infer (Open Inference Protocol)",
             "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
             "responses": {"200": {"description": "outputs", "content": {"application/json": {"schema": answer}}},
                           **errors}}
    paths = {"/v2": {"get": {"summary": "server metadata", "responses": {"200": {
                "description": "name, version, extensions", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
             "/v2/health/live": {"get": {"summary": "the process is alive", "responses": empty}},
             "/v2/health/ready": {"get": {"summary": "the model is loaded",
                                          "responses": {**empty, "503": {"description": "not yet"}}}}}
    for prefix, params in (("/v2/models/{model_name}", [name_param]),
                           ("/v2/models/{model_name}/versions/{version}", [name_param, version_param])):
        paths[prefix] = {"parameters": params, "get": {"summary": "model metadata", "responses": {
            "200": {"description": "the Keras input/output names", "content": {"application/json": {"schema": metadata}}},
            "404": errors["404"]}}}
        paths[prefix + "/ready"] = {"parameters": params, "get": {"summary": "model readiness",
                                                                  "responses": {**empty, "404": errors["404"]}}}
        paths[prefix + "/infer"] = {"parameters": params, "post": infer}
    return paths
