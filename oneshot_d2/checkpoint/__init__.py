"""Checkpoints: Detectron2's checkpointer with atomic saves and clear errors for bad files, and
the checks of the weights a model is given."""
from .checkpointer import AtomicCheckpointer
from .weights import check_complete_model, check_weights

__all__ = ["AtomicCheckpointer", "check_complete_model", "check_weights"]
