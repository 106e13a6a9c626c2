"""Checks of a TF-Serving version directory that do not need the server binary (which cannot be
installed here): the signature defs TF-Serving will expose, every warmup request replayed through
the SavedModel, and the extra top-k classification signature. Each check is one ParityRow named
after what it checked, so it lands in report.json beside the runtime rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...parity import ParityRow, compare

PREDICT_METHOD = "tensorflow/serving/predict"


def _row(name: str, problems: list[str], tol, t0: float, **kw) -> ParityRow:
    return ParityRow(name, "failed" if problems else "passed", atol=tol.atol, rtol=tol.rtol,
                     reason="; ".join(problems) or None, seconds=round(time.perf_counter() - t0, 3), **kw)


def read_signature_defs(version_dir: Path) -> dict:
    """{signature: {"method", "inputs": {key: (dtype, shape)}, "outputs": {...}}} of the `serve`
    MetaGraph, read from saved_model.pb (what `saved_model_cli show --all` prints)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    graphs = [m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags]
    if not graphs:
        return {}

    def spec(info):
        dims = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        return tf.dtypes.as_dtype(info.dtype).name, dims

    return {key: {"method": sd.method_name,
                  "inputs": {k: spec(v) for k, v in sd.inputs.items()},
                  "outputs": {k: spec(v) for k, v in sd.outputs.items()}}
            for key, sd in graphs[0].signature_def.items() if not key.startswith("__")}


def expected_signature_defs(signature, classify: dict | None) -> dict:
    def keras(specs):
        return {t.name: (t.dtype, tuple(-1 if d is None else d for d in t.shape)) for t in specs}

    out = {"serving_default": {"method": PREDICT_METHOD, "inputs": keras(signature.inputs),
                               "outputs": keras(signature.outputs)}}
    if classify:
        k = classify["top_k"]
        out[classify["signature"]] = {"method": PREDICT_METHOD, "inputs": keras(signature.inputs),
                                      "outputs": {"classes": ("string", (-1, k)), "scores": ("float32", (-1, k))}}
    return out


def signature_defs_row(version_dir: Path, signature, classify: dict | None, tol) -> ParityRow:
    t0 = time.perf_counter()
    got = read_signature_defs(version_dir)
    want = expected_signature_defs(signature, classify)
    problems = []
    if sorted(got) != sorted(want):
        problems.append(f"signatures {sorted(got)}, expected {sorted(want)}")
    for key in sorted(set(got) & set(want)):
        for part in ("method", "inputs", "outputs"):
            if got[key][part] != want[key][part]:
                problems.append(f"{key} {part}: {got[key][part]} != {want[key][part]}")
    return _row("signature-defs", problems, tol, t0)


def top_k(reference: np.ndarray, labels: list[str], k: int):
    order = np.argsort(-reference, axis=-1, kind="stable")[:, :k]
    return np.asarray(labels, dtype=object)[order], np.take_along_axis(reference, order, axis=-1)


def compare_classify(name: str, reference: np.ndarray, labels: list[str], k: int,
                     classes: np.ndarray, scores: np.ndarray, tol) -> list[str]:
    """Labels must equal Keras' top-k labels, except where two Keras scores are closer than the
    tolerance (then either order is right); scores must match within the tolerance."""
    want_labels, want_scores = top_k(reference, labels, k)
    got_labels = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(classes)
    problems = []
    if got_labels.shape != want_labels.shape or scores.shape != want_scores.shape:
        return [f"{name}: classes {got_labels.shape} / scores {scores.shape}, expected {want_labels.shape}"]
    bound = tol.atol + tol.rtol * float(np.max(np.abs(reference)))
    err = float(np.max(np.abs(scores.astype(np.float64) - want_scores)))
    if err > bound:
        problems.append(f"{name}: top-k scores differ by {err:.3g} > {bound:.3g}")
    gap = np.abs(np.diff(want_scores, axis=-1))
    near_tie = np.zeros(want_scores.shape, bool)
    near_tie[:, :-1] |= gap <= bound
    near_tie[:, 1:] |= gap <= bound
    wrong = (got_labels != want_labels) & ~near_tie
    if wrong.any():
        r, c = np.argwhere(wrong)[0]
        problems.append(f"{name}: {int(wrong.sum())} top-k labels differ from Keras (row {r} rank {c}: "
                        f"{got_labels[r, c]!r} != {want_labels[r, c]!r})")
    return problems


def _row_index(reference_in: dict[str, np.ndarray]):
    names = sorted(reference_in)
    n = len(reference_in[names[0]])
    index = {b"".join(reference_in[k][i].tobytes() for k in names): i for i in range(n)}

    def rows_of(request: dict[str, np.ndarray]) -> list[int] | None:
        if sorted(request) != names:
            return None
        m = len(request[names[0]])
        keys = [b"".join(np.ascontiguousarray(request[k][i].astype(reference_in[k].dtype)).tobytes() for k in names)
                for i in range(m)]
        found = [index.get(key) for key in keys]
        return None if any(f is None for f in found) else found

    return rows_of


def warmup_row(loaded, version_dir: Path, reference_in, reference_out, tol, classify: dict | None) -> ParityRow:
    """Parse the warmup TFRecord with tensorflow-serving-api's protos and replay every request
    through the SavedModel signature it names; each answer must match the Keras outputs of the
    reference rows the request carries."""
    import tensorflow as tf

    from .proto import WARMUP_NAME, read_warmup

    t0 = time.perf_counter()
    path = version_dir / "assets.extra" / WARMUP_NAME
    if not path.exists():
        return _row("warmup-replay", [f"{path} missing"], tol, t0)
    logs = read_warmup(path)
    rows_of = _row_index(reference_in)
    problems, got_parts, want_parts = [], [], []
    for i, log in enumerate(logs):
        if log.WhichOneof("log_type") != "predict_log":
            problems.append(f"record {i}: {log.WhichOneof('log_type')} is not a predict_log")
            continue
        request = log.predict_log.request
        sig = request.model_spec.signature_name or "serving_default"
        feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        idx = rows_of(feed)
        if idx is None:
            problems.append(f"record {i}: inputs {sorted(feed)} are not rows of the reference inputs")
            continue
        if sig not in loaded.signatures:
            problems.append(f"record {i}: signature {sig!r} not in the SavedModel ({sorted(loaded.signatures)})")
            continue
        answer = {k: v.numpy() for k, v in loaded.signatures[sig](**{k: tf.constant(v) for k, v in feed.items()}).items()}
        if classify and sig == classify["signature"]:
            ref = reference_out[classify["output"]][idx]
            problems += compare_classify(f"record {i} ({sig})", ref, classify["labels"], classify["top_k"],
                                         answer.get("classes", np.empty(0)), answer.get("scores", np.empty(0)), tol)
        else:
            got_parts.append(answer)
            want_parts.append({k: v[idx] for k, v in reference_out.items()})
    if not logs:
        problems.append(f"{path}: no records")
    row = None
    if got_parts:
        keys = set(want_parts[0])
        got = {k: np.concatenate([g[k] for g in got_parts]) for k in keys if all(k in g for g in got_parts)}
        row = compare("warmup-replay", {k: np.concatenate([w[k] for w in want_parts]) for k in keys}, got, tol)
        problems = ([row.reason] if row.reason else []) + problems
    out = _row("warmup-replay", problems, tol, t0)
    if row is not None:
        out.max_abs_err, out.max_rel_err, out.outputs, out.top1_agreement = (
            row.max_abs_err, row.max_rel_err, row.outputs, row.top1_agreement)
    return out


def classify_row(loaded, reference_in, reference_out, tol, classify: dict) -> ParityRow:
    """The extra signature on the reference inputs: top-k labels and scores as Keras ranks them."""
    import tensorflow as tf

    t0 = time.perf_counter()
    fn = loaded.signatures[classify["signature"]]
    answer = fn(**{k: tf.constant(v) for k, v in reference_in.items()})
    ref = reference_out[classify["output"]]
    scores = answer["scores"].numpy()
    problems = compare_classify(classify["signature"], ref, classify["labels"], classify["top_k"],
                                answer["classes"].numpy(), scores, tol)
    row = _row(f"signature:{classify['signature']}", problems, tol, t0)
    if scores.shape == (len(ref), classify["top_k"]):
        scale = float(np.max(np.abs(ref)))
        row.max_abs_err = float(np.max(np.abs(scores.astype(np.float64) - top_k(ref, classify["labels"], classify["top_k"])[1])))
        row.max_rel_err = row.max_abs_err / scale if scale else row.max_abs_err
    return row
