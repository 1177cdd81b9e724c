"""Training and evaluation entry points."""
from .checks import check_training_config, verify_results
from .defaults import check_datasets, default_output_dir, main, setup
from .trainer import OneShotTrainer, build_optimizer
from .utils import unwrap_model

__all__ = ["OneShotTrainer", "build_optimizer", "setup", "main",
           "check_datasets", "check_training_config", "default_output_dir", "verify_results",
           "unwrap_model"]
