"""Write the digits model's data as .npz files for `--calibration` and `--eval`.

The split is the one the model was trained with (sample_models/build.py `digits_data()`):
    digits_eval.npz         the held-out 25%: `pixels` (the model input) and `y` (labels)
    digits_calibration.npz  the first 128 training images: `pixels` only (calibration never
                            sees the held-out data)

    python sample_models/make_eval_data.py OUT_DIR
    kexport tflite sample_models/digits_cnn.keras --quantize all \\
        --calibration OUT_DIR/digits_calibration.npz --eval OUT_DIR/digits_eval.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CALIBRATION_SAMPLES = 128


def write_digits_data(out_dir) -> tuple[Path, Path]:
    """Returns (calibration .npz, eval .npz)."""
    sys.path.insert(0, str(HERE.parent))
    from sample_models.build import digits_data

    xtr, xte, _, yte = digits_data()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal, ev = out / "digits_calibration.npz", out / "digits_eval.npz"
    np.savez(cal, pixels=xtr[:CALIBRATION_SAMPLES])
    np.savez(ev, pixels=xte, y=yte)
    return cal, ev


if __name__ == "__main__":
    for p in write_digits_data(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(p)
