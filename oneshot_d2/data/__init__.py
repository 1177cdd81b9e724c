"""Data: synthetic CT phantom, converters, dataset registration."""
from . import datasets  # noqa: F401  (registers the predefined datasets found on disk)
from .phantom_dataset import PhantomSpec, write_phantom_dataset

__all__ = ["PhantomSpec", "write_phantom_dataset", "datasets"]
