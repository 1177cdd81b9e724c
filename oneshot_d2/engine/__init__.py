"""Training and evaluation entry points."""
from .defaults import check_datasets, main, setup
from .trainer import OneShotTrainer, build_optimizer

__all__ = ["OneShotTrainer", "build_optimizer", "setup", "main", "check_datasets"]
