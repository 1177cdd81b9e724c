"""Every error oneshot_d2 raises for bad user input: configs, datasets, studies, checkpoints,
command-line arguments. They always name the offending file, key or option, and the
command-line tools print them as one line with exit status 2 (:mod:`oneshot_d2.cli`); any other
exception is treated as a bug and keeps its traceback."""

__all__ = ["OneShotError", "ConfigError", "DatasetError", "DatasetKeyError", "StudyError",
           "CheckpointError", "UsageError"]


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


class StudyError(DatasetError):
    """A study (a DICOM series, a NIfTI volume, a folder of slice images) that cannot be read:
    the message is one line naming the file and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class UsageError(OneShotError, ValueError):
    """A command-line argument that cannot work: the message names the option and why."""
