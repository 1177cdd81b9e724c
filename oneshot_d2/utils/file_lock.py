"""An inter-process lock on a file or folder that is about to be written.

:func:`file_lock` holds ``fcntl.flock`` on ``<name>.lock`` (Linux / POSIX) while a process
writes ``<name>``; a second writer waits for it. The kernel drops the lock of a killed process,
and the lock file is removed on release. Where ``fcntl`` does not exist (Windows) the lock is
`filelock <https://py-filelock.readthedocs.io>`_'s ``FileLock`` on the same file.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["file_lock"]

logger = logging.getLogger(__name__)


def _lock_holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def file_lock(target: str, wait: bool = True) -> Iterator[str]:
    """Hold an exclusive lock on ``target`` (a file or folder, existing or not) between
    processes, through ``fcntl.flock`` on ``<target>.lock``; yields the lock file's path.

    Args:
        target: what is about to be written; its parent folder is created.
        wait: wait for another holder (logged once); ``False`` raises instead.

    Raises:
        BlockingIOError: ``wait`` is False and another process holds the lock.
    """
    lock_path = os.path.abspath(target) + ".lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    if fcntl is None:
        with _portable_lock(lock_path, target, wait):
            yield lock_path
        return
    fd = _acquire(lock_path, target, wait)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # still holding the lock: a waiter sees the inode vanish
        os.close(fd)


def _acquire(lock_path: str, target: str, wait: bool) -> int:
    """Open and flock ``lock_path``; retry when the file was removed or replaced meanwhile
    (its previous holder released it), so only one process holds the current lock file."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(lock_path)
                if not wait:
                    raise BlockingIOError(
                        errno.EWOULDBLOCK, f"{target}: another process (pid {holder}) is "
                        "writing it; try again when it has finished") from None
                logger.warning("%s: another process (pid %s) is writing it; waiting for it to "
                               "finish", target, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def _portable_lock(lock_path: str, target: str, wait: bool) -> Iterator[None]:
    """``filelock.FileLock`` on ``lock_path`` (no ``fcntl`` here), with the same errors."""
    import filelock  # a dependency of torch

    lock = filelock.FileLock(lock_path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BlockingIOError(errno.EWOULDBLOCK, f"{target}: another process is writing it; "
                              "try again when it has finished") from None
    try:
        yield
    finally:
        lock.release()
