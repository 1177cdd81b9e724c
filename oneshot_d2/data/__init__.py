"""Data: synthetic CT phantom, converters, dataset registration."""
from . import datasets  # noqa: F401  (registers the predefined datasets found on disk)
from .errors import CheckpointError, ConfigError, DatasetError, DatasetKeyError, OneShotError
from .phantom_dataset import PhantomSpec, write_phantom_dataset

__all__ = ["OneShotError", "ConfigError", "DatasetError", "DatasetKeyError", "CheckpointError",
           "PhantomSpec", "write_phantom_dataset", "datasets"]
