"""One adapter per inference runtime: `available()`, `load(path)`, `predict(named arrays)`.

Importing this package never imports TensorFlow (generated servers depend on that). Adding a
runtime = one module plus one line in the import list below.
"""

from .base import Runtime, Session, all_runtimes, get_runtime, register_runtime  # noqa: F401

# Explicit import list (no package scanning): each module registers its runtime.
from . import tf_saved_model  # noqa: F401,E402
from . import tf_saved_model_cli  # noqa: F401,E402
from . import litert  # noqa: F401,E402
from . import litert_arm64  # noqa: F401,E402
from . import onnxruntime_runtime  # noqa: F401,E402
from . import coreml_reference  # noqa: F401,E402
from . import coreml_native  # noqa: F401,E402
from . import flask_http  # noqa: F401,E402
from . import tfjs_node  # noqa: F401,E402
from . import tfjs_chromium  # noqa: F401,E402
from . import spark_local  # noqa: F401,E402
from . import triton_config  # noqa: F401,E402
from . import tritonserver  # noqa: F401,E402
from . import kserve_crd  # noqa: F401,E402
from . import kubernetes_schema  # noqa: F401,E402
from . import jvm_runner  # noqa: F401,E402
from . import openvino_cpu  # noqa: F401,E402
