"""TF-Serving: a versioned model repository (models.config, batching, warmup records)."""

from .publish import *  # noqa: F401,F403
from .publish import RUNTIMES, TFServingOptions, add_arguments, export_repository, options_from_args, run_command  # noqa: F401
