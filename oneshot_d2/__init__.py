"""oneshot_d2: one-shot COVID-19 models (Ter-Sarkisov 2021) as a Detectron2 extension."""
from . import (
    compat,  # noqa: F401  (must run before any other Detectron2 import)
    data,  # noqa: F401  (registers datasets)
    modeling,  # noqa: F401  (registers the model parts)
)
from .config import add_oneshot_config
from .version import __version__

__all__ = ["add_oneshot_config", "__version__"]
