"""Atomic writes of files and folders: a file or folder is always either its old version or the
complete new one, even after a kill -9 or a crash.

Files go through :func:`atomic_open` (a temporary sibling, flushed to disk and renamed);
folders are built under a temporary name and swapped in by :func:`replace_folder`, which
:func:`recover_replaced_folder` completes after a kill. Temporary names and their clean-up:
:mod:`oneshot_d2.utils.temp_names`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Iterator, Optional

from .temp_names import clean_orphans, find_orphans, parse_sibling, sibling_name, tmp_prefix
from .testing import kill_point

__all__ = ["make_folder", "atomic_open", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "fsync_dir", "current_umask", "file_mode", "replace_folder",
           "recover_replaced_folder"]

logger = logging.getLogger(__name__)


def _first_blocker(folder: str) -> Optional[str]:
    """The nearest existing ancestor of ``folder`` (itself included) when it is not a folder."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path if os.path.exists(path) and not os.path.isdir(path) else None


def make_folder(folder: str, what: str = "folder") -> str:
    """Create ``folder`` (and its parents) if needed and check that it is writable; returns it.

    Raises:
        OSError: ``filename`` is ``folder``; the message says why (e.g. which part of the path
            is a regular file).
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        blocker = _first_blocker(folder)
        reason = f"{blocker} is a file, not a folder" if blocker else e.strerror
        raise type(e)(e.errno, f"cannot create the {what} ({reason})", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the {what} is not writable", folder)
    return folder


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; when the block ends without an
    error, flush it to disk and rename it to ``path`` (``os.replace``), so that ``path`` is
    always either the old file or the complete new one, even after a kill -9 or a crash.

    The temporary file is ``<name>.tmp-<host>-<pid>-<random>``
    (:mod:`oneshot_d2.utils.temp_names`): removed on an error, left behind only by a killed
    process; the next write of ``path`` removes those of dead processes (with a warning). The
    new file gets the usual mode (0o666 less the umask).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_orphans(folder, bases=[os.path.basename(path)], kinds=("tmp",))
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(os.path.basename(path)), dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_open`, so that ``path`` is either the
    old file or the complete new one."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj))


def fsync_dir(folder: str) -> None:
    """Flush a folder's entries (a rename in it) to disk; best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read from ``/proc/self/status`` on Linux without changing it
    (0o022 when unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def file_mode(folder: bool = False) -> int:
    """The mode ``open()`` (or, with ``folder``, ``os.mkdir``) gives a new file: 0o666 (0o777)
    less the umask. ``tempfile`` creates 0o600 / 0o700 instead."""
    return (0o777 if folder else 0o666) & ~current_umask()


def replace_folder(tmp: str, root: str, kill_stage: str = "") -> None:
    """Rename the complete folder ``tmp`` to ``root``. An existing ``root`` is first renamed to
    ``<root>.old-<host>-<pid>-<random>`` and deleted only once the new folder is in place, so a
    kill at any point leaves the old or the new complete folder (a kill between the two renames
    leaves both aside, for the writer's next run to put back).

    Args:
        tmp: the new folder, complete, on the same file system as ``root``.
        root: its final name.
        kill_stage: prefix of this swap's :func:`kill_point` stages (``<prefix>-swap``,
            ``<prefix>-delete-old``), for the kill -9 tests.
    """
    if not os.path.lexists(root):
        os.rename(tmp, root)
        return
    old = sibling_name(root, "old")
    os.rename(root, old)
    try:
        if kill_stage:
            kill_point(f"{kill_stage}-swap")
        os.rename(tmp, root)
    except BaseException:
        os.rename(old, root)
        raise
    if kill_stage:
        kill_point(f"{kill_stage}-delete-old")
    if os.path.islink(old):
        os.unlink(old)
    else:
        shutil.rmtree(old)


def recover_replaced_folder(root: str, is_complete: Callable[[str], bool], what: str) -> None:
    """Undo what a killed :func:`replace_folder` left next to ``root``: when ``root`` is missing,
    put back the complete folder of the interrupted swap (the new one, else the old one); then
    remove the temporary and moved-aside folders of dead processes of this host (those of
    another host are left alone).

    Args:
        root: the folder's final name.
        is_complete: whether a candidate folder is complete (e.g. its marker file is there).
        what: what the folder holds, for the log (``"phantom dataset"``).
    """
    parent, base = os.path.split(root)
    if not os.path.lexists(root):
        orphans = find_orphans(parent, [base])
        for kind in ("tmp", "old"):  # a finished new folder first: the swap had begun
            done = [p for p in orphans
                    if parse_sibling(os.path.basename(p))[1] == kind and is_complete(p)]
            if done:
                source = max(done, key=os.path.getmtime)
                os.rename(source, root)
                logger.warning("%s: put back the %s %s %s, left by an interrupted run", root,
                               "new" if kind == "tmp" else "previous", what, source)
                break
    clean_orphans(parent, [base])
