"""Targets: one module each, registered by the explicit import list below.

Adding a target = adding one module and one line here.
"""

from .base import FP32, Artifact, NoOptions, Target, Tolerance, all_targets, get_target, register_target  # noqa: F401

from . import saved_model  # noqa: F401,E402
from . import tflite  # noqa: F401,E402
from . import onnx  # noqa: F401,E402
from . import coreml  # noqa: F401,E402
from . import flask  # noqa: F401,E402
from . import tfjs  # noqa: F401,E402
from . import triton  # noqa: F401,E402
from . import kserve  # noqa: F401,E402
from . import tf_serving  # noqa: F401,E402
from . import spark  # noqa: F401,E402
from . import dl4j  # noqa: F401,E402
from . import openvino  # noqa: F401,E402
