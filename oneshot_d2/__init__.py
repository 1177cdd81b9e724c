"""oneshot_d2: one-shot COVID-19 models (Ter-Sarkisov 2021) as a Detectron2 extension."""
from . import compat  # noqa: F401  (must run before any Detectron2 import)

__version__ = "0.1.0"
