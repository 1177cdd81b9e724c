"""The command-line tools' error contract: a mistake in the input is one line, not a traceback.

Every tool (``tools/train_net.py``, ``tools/*.py``, ``datasets/prepare_*.py``) runs its
``main(argv)`` through :func:`run_cli`. An expected error -- bad input named by the project
(:class:`~oneshot_d2.errors.OneShotError`: ``DatasetError``, ``ConfigError`` (which
also carries yacs' unknown keys and type mismatches), ``CheckpointError``, ``UsageError``), a
YAML error or a file-system error (``OSError``, e.g. a missing file) -- is printed to stderr as
one line::

    <tool>: error: <file or key>: <problem>

and the tool exits with status 2. ``--debug`` on the command line (every tool accepts it) or
``ONESHOT_D2_DEBUG=1`` in the environment re-raises it instead, with its traceback. Any other
exception (a bug, including a bare ``ValueError`` / ``KeyError`` / ``AssertionError``) keeps its
traceback. The tools also filter Detectron2 v0.6's two
known-harmless warnings (:func:`oneshot_d2.compat.filter_known_warnings`).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any, Callable, List, Optional, Sequence

import yaml
from torch.multiprocessing import ProcessRaisedException

from ..compat import filter_known_warnings
from ..errors import OneShotError

__all__ = ["DEBUG_ENV", "EXIT_ERROR", "EXPECTED_ERRORS", "add_debug_argument",
           "debug_requested", "error_message", "quiet_training_tracebacks", "run_cli",
           "run_quietly", "worker_error_message"]

logger = logging.getLogger(__name__)

DEBUG_ENV = "ONESHOT_D2_DEBUG"
EXIT_ERROR = 2
# OneShotError: DatasetError, ConfigError (yacs' unknown keys and type mismatches are turned
# into it by oneshot_d2.config.load_config), CheckpointError, UsageError; OSError: files and
# folders. A ValueError / KeyError / AssertionError from anywhere else is a bug: traceback.
EXPECTED_ERRORS = (OneShotError, OSError, yaml.YAMLError)
# "detectron2.engine.train_loop" logs the traceback of an exception during training itself.
_TRAIN_LOOP_LOGGER = "detectron2.engine.train_loop"
_EXCEPTION_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): ")


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` (show the traceback of an error) to a tool's parser; returns it."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")
    return parser


def debug_requested(argv: Sequence[str]) -> bool:
    """True with ``--debug`` in ``argv`` or ``ONESHOT_D2_DEBUG`` set to anything but empty / 0."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _last_line(text: str) -> str:
    """The last non-empty line of a multi-line message, without a leading exception name: an
    error raised in a DataLoader worker arrives with the worker's traceback in its message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return text.strip()
    return _EXCEPTION_PREFIX.sub("", lines[-1])


def error_message(exc: BaseException) -> str:
    """One line for ``exc``: ``file: problem`` for an ``OSError`` with a file name, the key
    error's own text (not its quoted repr), the last line of a multi-line message."""
    if isinstance(exc, OSError) and exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return f"{target}: {exc.strerror or exc}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = _last_line(text) or type(exc).__name__
    return " ".join(text.split())


class _NoExpectedTraceback(logging.Filter):
    """Drops the traceback that Detectron2's training loop logs for an expected error (the
    tool prints the error itself, as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EXPECTED_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_training_tracebacks() -> None:
    """Drop the traceback Detectron2's training loop logs for an expected error (the tool
    prints one line); called by :func:`run_cli`, and by each process ``launch`` starts."""
    train_loop = logging.getLogger(_TRAIN_LOOP_LOGGER)
    if not any(isinstance(f, _NoExpectedTraceback) for f in train_loop.filters):
        train_loop.addFilter(_NoExpectedTraceback())


def run_quietly(main: Callable[[Any], Any], args: Any) -> Any:
    """``main(args)`` with :func:`quiet_training_tracebacks` unless ``args.debug`` or
    ``ONESHOT_D2_DEBUG``: the function a tool hands to Detectron2's ``launch``, so that each
    process it starts drops the tracebacks of expected errors too."""
    if not (getattr(args, "debug", False) or debug_requested([])):
        quiet_training_tracebacks()
    return main(args)


def run_cli(main: Callable[[Optional[List[str]]], object], argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None) -> int:
    """Run a tool's ``main(argv)`` under the error contract of this module.

    Args:
        main: the tool's entry point; it parses ``argv`` itself (with
            :func:`add_debug_argument`) and returns an exit status (``None``: 0).
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the tool's name in the error line (default: the script's name without ``.py``).

    Returns:
        ``main``'s status, or 2 after printing one error line for an expected error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    filter_known_warnings()
    debug = debug_requested(argv)
    if not debug:
        quiet_training_tracebacks()
    try:
        status = main(argv)
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        return EXIT_ERROR
    except ProcessRaisedException as e:  # an error in a process started by launch (DDP)
        message = worker_error_message(str(e))
        if debug or message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    return status if isinstance(status, int) else 0


_WORKER_ERROR = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<name>[A-Za-z_]\w*): (?P<message>.*)$")


def worker_error_message(text: str) -> Optional[str]:
    """The message of an expected error raised in a worker process, from the traceback text
    that ``torch.multiprocessing`` passes to the parent (its last line,
    ``module.ClassName: message``); ``None`` when the error is not one of
    :data:`EXPECTED_ERRORS` (a bug: the parent keeps the traceback)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    match = _WORKER_ERROR.match(lines[-1]) if lines else None
    if match is None:
        return None
    expected = {cls.__name__ for cls in _expected_error_classes()}
    return match.group("message") if match.group("name") in expected else None


def _expected_error_classes() -> List[type]:
    """Every subclass of :data:`EXPECTED_ERRORS` defined so far (by name)."""
    found, todo = [], list(EXPECTED_ERRORS)
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found
