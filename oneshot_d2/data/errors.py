"""The error raised for bad dataset input (it always names the offending file)."""

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Bad or missing dataset input: the message names the file and the problem."""
