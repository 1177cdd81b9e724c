"""The errors raised for bad user input: configs, datasets, checkpoints. They always name the
offending file or key, and the command-line tools print them as one line with exit status 2
(:mod:`oneshot_d2.cli`); any other exception is treated as a bug and keeps its traceback."""

__all__ = ["OneShotError", "ConfigError", "DatasetError", "DatasetKeyError", "CheckpointError"]


class OneShotError(Exception):
    """Base class of the errors caused by the input (not by a bug in oneshot_d2)."""


class ConfigError(OneShotError, ValueError):
    """A bad configuration: the message names the file (or the command line), the key and the
    problem."""


class DatasetError(OneShotError, ValueError):
    """Bad or missing dataset input: the message names the file and the problem."""


class DatasetKeyError(DatasetError, KeyError):
    """A dataset name that is not registered, or a metadata field / record key a dataset lacks
    (a ``KeyError`` too, as Detectron2's catalogs raise)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


class CheckpointError(OneShotError, ValueError):
    """A checkpoint / weights file that is missing, truncated, corrupt or not a checkpoint: the
    message names the file and the problem."""
