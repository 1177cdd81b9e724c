"""Folders a tool owns and replaces whole (a phantom dataset, a predict study folder): one lock
per folder, recovery of a killed swap, a refusal to replace a folder some other tool wrote, and
a new version built in a temporary sibling and swapped in (:func:`replace_folder`), so that a
kill at any point leaves the previous complete version or the new one."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator, Optional

from .file_io import file_mode, fsync_dir, recover_replaced_folder, replace_folder
from .file_lock import file_lock
from .temp_names import tmp_prefix

__all__ = ["locked_folder", "foreign_entry", "new_folder_version"]


@contextlib.contextmanager
def locked_folder(folder: str, is_complete: Callable[[str], bool], what: str) -> Iterator[str]:
    """Hold ``folder``'s lock (``<folder>.lock``; other writers wait) and first undo what a killed
    writer left next to it (:func:`recover_replaced_folder`). Yields ``folder``.

    Args:
        is_complete: whether a candidate folder is a complete version (its marker is there).
        what: the folder's kind, for the log (``"phantom dataset"``, ``"prediction"``).
    """
    with file_lock(folder):
        recover_replaced_folder(folder, is_complete, what)
        yield folder


def foreign_entry(path: str, is_ours: Callable[[str], bool]) -> Optional[str]:
    """``None`` when ``path`` may be replaced: absent, an empty folder, or a folder (or a
    symbolic link to one) that ``is_ours`` recognises, complete or not (a link is replaced,
    its target left alone); else what it is (``"folder"``, ``"symbolic link"`` or ``"file"``)
    for the refusal message."""
    if not os.path.lexists(path):
        return None
    link = os.path.islink(path)
    if os.path.isdir(path) and (is_ours(path) or (not link and not os.listdir(path))):
        return None
    return "symbolic link" if link else "folder" if os.path.isdir(path) else "file"


@contextlib.contextmanager
def new_folder_version(folder: str, kill_stage: str = "") -> Iterator[str]:
    """Yield an empty temporary sibling of ``folder`` (``<name>.tmp-<host>-<pid>-<random>``) to
    write the new version into; when the block ends normally it replaces ``folder``
    (:func:`replace_folder`, the parent folder synced), on an exception it is deleted and
    ``folder`` is left as it was. Call it under :func:`locked_folder`.

    Args:
        kill_stage: prefix of the swap's kill points (the kill -9 tests).
    """
    parent, base = os.path.split(os.path.abspath(folder))
    tmp = tempfile.mkdtemp(prefix=tmp_prefix(base), dir=parent)
    try:
        os.chmod(tmp, file_mode(folder=True))
        yield tmp
        replace_folder(tmp, folder, kill_stage=kill_stage)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
