"""Rebuild the bundled sample models reproducibly (seeded, deterministic ops).

    python sample_models/build.py            # writes sample_models/*.keras, *.h5, metrics.json

Data comes from scikit-learn's bundled datasets (no downloads). Each file stays under 1 MB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
SEED = 1234


def digits_data():
    """scikit-learn's 8x8 digits, scaled to [0, 1], with a fixed held-out split."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    y = d.target.astype("int64")
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def build_digits(keras):
    xtr, xte, ytr, yte = digits_data()
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    out = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    m = keras.Model(inp, out, name="digits_cnn")
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(xtr, ytr, epochs=25, batch_size=32, verbose=0, shuffle=True)
    return m, float(m.evaluate(xte, yte, verbose=0)[1])


def build_tabular(keras):
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    d = load_wine()
    x = d.data.astype("float32")
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(xtr)
    inp = keras.Input((13,), name="features")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(norm(inp))
    out = keras.layers.Dense(3, activation="softmax", name="cultivar")(h)
    m = keras.Model(inp, out, name="wine_mlp")
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(xtr, ytr, epochs=60, batch_size=16, verbose=0)
    return m, float(m.evaluate(xte, yte, verbose=0)[1])


def build_sequence(keras, np):
    """Embedding + LSTM on int tokens: is token 7 present in the first half of the sequence?"""
    rng = np.random.default_rng(SEED)
    x = rng.integers(0, 50, size=(3000, 20)).astype("int32")
    y = (x[:, :10] == 7).any(axis=1).astype("int64")
    inp = keras.Input((20,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 16, name="embed")(inp)
    h = keras.layers.LSTM(24, name="lstm")(h)
    out = keras.layers.Dense(2, activation="softmax", name="label")(h)
    m = keras.Model(inp, out, name="token_lstm")
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x[:2400], y[:2400], epochs=12, batch_size=64, verbose=0)
    return m, float(m.evaluate(x[2400:], y[2400:], verbose=0)[1])


def build_multi_io(keras, np):
    """Two inputs (image + metadata) and two outputs (class probabilities + a score)."""
    xtr, xte, ytr, yte = digits_data()
    rng = np.random.default_rng(SEED)
    meta_tr = rng.normal(size=(len(xtr), 4)).astype("float32")
    meta_te = rng.normal(size=(len(xte), 4)).astype("float32")
    img = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((4,), name="meta")
    a = keras.layers.Flatten(name="flat")(img)
    a = keras.layers.Dense(32, activation="relu", name="img_dense")(a)
    b = keras.layers.Dense(8, activation="tanh", name="meta_dense")(meta)
    h = keras.layers.Concatenate(name="merge")([a, b])
    cls = keras.layers.Dense(10, activation="softmax", name="class_probs")(h)
    score = keras.layers.Dense(1, name="score")(h)
    m = keras.Model([img, meta], [cls, score], name="two_in_two_out")
    m.compile("adam", ["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], []])
    m.fit([xtr, meta_tr], [ytr, meta_tr.sum(axis=1, keepdims=True)], epochs=15, verbose=0)
    pred = m.predict([xte, meta_te], verbose=0)[0].argmax(1)
    return m, float((pred == yte).mean())


def build_legacy_h5():
    """A Keras 2 .h5 written by tf_keras (the format older projects still ship)."""
    import numpy as np
    import tf_keras
    from sklearn.datasets import load_iris

    tf_keras.utils.set_random_seed(SEED)
    d = load_iris()
    x = d.data.astype("float32")
    m = tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=(4,), name="measurements"),
            tf_keras.layers.Dense(16, activation="relu", name="hidden"),
            tf_keras.layers.Dense(3, activation="softmax", name="species"),
        ],
        name="iris_keras2",
    )
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    m.fit(x[idx], d.target[idx], epochs=150, verbose=0)
    m.save(HERE / "iris_keras2.h5", save_format="h5")
    return float(m.evaluate(x, d.target, verbose=0)[1])


def main():
    import numpy as np
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    metrics = {}
    m, acc = build_digits(keras)
    m.save(HERE / "digits_cnn.keras")
    m.save(HERE / "digits_cnn.h5")  # Keras 3 .h5, the file the TF.js layers converter mishandles
    metrics["digits_cnn"] = {"test_accuracy": acc, "data": "sklearn digits, 25% held out (random_state=0)"}
    for name, builder in (("wine_mlp", lambda: build_tabular(keras)),
                          ("token_lstm", lambda: build_sequence(keras, np)),
                          ("two_in_two_out", lambda: build_multi_io(keras, np))):
        keras.utils.set_random_seed(SEED)
        m, acc = builder()
        m.save(HERE / f"{name}.keras")
        metrics[name] = {"test_accuracy": acc}
    metrics["iris_keras2"] = {"train_accuracy": build_legacy_h5(), "written_by": "tf_keras (Keras 2)"}
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
