"""kexport: export a Keras model to every deployment target and prove each artifact matches.

    import kexport
    result = kexport.export("model.keras", targets=["tflite", "onnx"], out_dir="dist")
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConversionError, KexportError, ModelLoadError, ParityError, UnsupportedError, UsageError,
)
from .options import ExportOptions  # noqa: E402


def export(*args, **kwargs):
    from .api import export as _export

    return _export(*args, **kwargs)


def verify(*args, **kwargs):
    from .api import verify as _verify

    return _verify(*args, **kwargs)


__all__ = ["export", "verify", "ExportOptions", "KexportError", "ModelLoadError", "ParityError",
           "UnsupportedError", "UsageError", "ConversionError", "__version__"]
