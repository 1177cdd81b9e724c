"""Test hooks that production code calls at chosen points (no-ops unless a test sets them).

Kill hook: with ``ONESHOT_D2_TEST_KILL_AT=<stage>`` in the environment, the process SIGKILLs
itself when it reaches :func:`kill_point` ``(<stage>)`` -- the kill -9 tests use it to stop a
writer at a chosen point. Stages: ``phantom-writing`` (the new set half written),
``phantom-swap`` (old set moved aside, new set not yet in place), ``phantom-delete-old`` (new
set in place, old set not yet deleted), ``predict-swap`` / ``predict-delete-old`` (the same two
points when ``tools/predict.py`` replaces a study folder), ``checkpoint-write`` (checkpoint
bytes written to the temporary file, not yet renamed).
"""
from __future__ import annotations

import logging
import os
import signal

__all__ = ["KILL_ENV", "kill_point"]

logger = logging.getLogger(__name__)

KILL_ENV = "ONESHOT_D2_TEST_KILL_AT"


def kill_point(stage: str) -> None:
    """Test hook: SIGKILL this process if ``$ONESHOT_D2_TEST_KILL_AT`` equals ``stage``
    (a no-op otherwise). Lets the kill -9 tests stop a writer at a named point."""
    if os.environ.get(KILL_ENV) == stage:
        logger.warning("%s=%s: killing process %d", KILL_ENV, stage, os.getpid())
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
