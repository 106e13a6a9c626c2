"""Rebuild the small test models in this folder: python tests/data/make_models.py"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

if __name__ == "__main__":
    import keras

    import custom_layers

    keras.utils.set_random_seed(0)
    for name, layer in (("erfinv_model", custom_layers.InvErf), ("cumprod_model", custom_layers.CumProd)):
        inp = keras.Input((4,), name="x")
        h = keras.layers.Dense(4, name="dense")(inp)
        h = layer(name=name.split("_")[0])(h)
        out = keras.layers.Dense(3, activation="softmax", name="probs")(h)
        keras.Model(inp, out, name=name).save(HERE / f"{name}.keras")
