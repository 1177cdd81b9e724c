"""File-system safety shared by the dataset tools and the checkpointer: temporary names that
carry the writer's host and process id, clean-up of the leftovers of an interrupted run, an
inter-process lock, and a test-only kill hook.

Names: a writer builds ``<name>`` as ``<name>.tmp-<host>-<pid>-<random>`` next to it (a file or
a folder) and renames it into place; a dataset replaced by ``prepare_phantom --overwrite`` is
moved aside as ``<name>.old-<host>-<pid>-<random>`` until the new one is in place. ``<host>``
is :func:`host_tag`: 8 hex digits hashed from the host name and the PID namespace, so names stay
parseable whatever the host name holds (``-``, ``.``) and a process id is only ever compared
with the processes it belongs to. A process killed in between leaves these behind;
:func:`clean_orphans` (called by the next run of the same tool) removes the ones written on this
host (same PID namespace) whose process is gone, and never anything else: a name written on
another host or in another PID namespace (a shared file system) is left alone, since whether its
process still runs cannot be seen from here.

Locks: :func:`file_lock` holds ``fcntl.flock`` on ``<name>.lock`` (Linux / POSIX) while a
process writes ``<name>``; a second writer waits for it. The kernel drops the lock of a killed
process, and the lock file is removed on release.

Kill hook (tests only): with ``ONESHOT_D2_TEST_KILL_AT=<stage>`` in the environment, the process
SIGKILLs itself when it reaches :func:`kill_point` ``(<stage>)`` -- the kill -9 tests in
``tests/test_data_safety.py`` use it to stop a writer at a chosen point. Stages:
``phantom-writing`` (the new set half written), ``phantom-swap`` (old set moved aside, new set
not yet in place), ``phantom-delete-old`` (new set in place, old set not yet deleted),
``predict-swap`` / ``predict-delete-old`` (the same two points when ``tools/predict.py``
replaces a study folder), ``checkpoint-write`` (checkpoint bytes written to the temporary file,
not yet renamed).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

__all__ = ["KILL_ENV", "Sibling", "kill_point", "host_tag", "tmp_prefix", "sibling_name",
           "parse_sibling", "pid_alive", "find_orphans", "clean_orphans", "file_lock", "fsync_dir",
           "file_mode", "current_umask", "replace_folder", "recover_replaced_folder"]

logger = logging.getLogger(__name__)

KILL_ENV = "ONESHOT_D2_TEST_KILL_AT"
# <name>.<kind>-<host>-<pid>-<random>; <host> is host_tag()'s 8 hex digits, tempfile's random
# part is [a-z0-9_], sibling_name's hex.
_SIBLING = re.compile(r"^(?P<base>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)"
                      r"-(?P<tag>[A-Za-z0-9_]+)$")


class Sibling(NamedTuple):
    """The parts of a temporary / moved-aside name ``<base>.<kind>-<host>-<pid>-<tag>``."""

    base: str
    kind: str
    host: str
    pid: int
    tag: str


def kill_point(stage: str) -> None:
    """Test hook: SIGKILL this process if ``$ONESHOT_D2_TEST_KILL_AT`` equals ``stage``
    (a no-op otherwise). Lets the kill -9 tests stop a writer at a named point."""
    if os.environ.get(KILL_ENV) == stage:
        logger.warning("%s=%s: killing process %d", KILL_ENV, stage, os.getpid())
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[<inode>]`` on Linux; empty when unknown): two
    containers may share a host name but not their process ids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@functools.lru_cache(maxsize=None)
def _host_tag_of(hostname: str, pid_namespace: str) -> str:
    return hashlib.sha256(f"{hostname}\0{pid_namespace}".encode()).hexdigest()[:8]


def host_tag() -> str:
    """8 hex digits naming where this process's id is meaningful: a hash of the host name and
    the PID namespace. Part of every temporary name, so that :func:`clean_orphans` only judges
    the process ids of its own host (a hash keeps the name parseable whatever characters the
    host name holds)."""
    return _host_tag_of(socket.gethostname(), _pid_namespace())


def tmp_prefix(name: str) -> str:
    """``<name>.tmp-<host>-<pid>-``: the prefix for ``tempfile.mkstemp`` / ``mkdtemp`` of a
    temporary sibling of ``name`` (a base name, not a path)."""
    return f"{name}.tmp-{host_tag()}-{os.getpid()}-"


def sibling_name(path: str, kind: str) -> str:
    """A fresh ``<path>.<kind>-<host>-<pid>-<random>`` path (``kind``: ``tmp`` or ``old``)."""
    if kind not in ("tmp", "old"):
        raise ValueError(f"kind must be 'tmp' or 'old', got {kind!r}")
    return f"{path}.{kind}-{host_tag()}-{os.getpid()}-{os.urandom(4).hex()}"


def parse_sibling(name: str) -> Optional[Sibling]:
    """The :class:`Sibling` parts ``(base, kind, host, pid, tag)`` of a temporary /
    moved-aside name, ``None`` for any other name."""
    m = _SIBLING.match(name)
    if m is None:
        return None
    return Sibling(m["base"], m["kind"], m["host"], int(m["pid"]), m["tag"])


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _scan(folder: str, bases: Optional[Iterable[str]], kinds: Iterable[str]
          ) -> Tuple[List[str], List[str]]:
    """``(orphans, foreign)``: the paths in ``folder`` with a temporary / moved-aside name of
    one of ``bases`` and ``kinds`` whose process (on this host) is gone, and those written on
    another host / PID namespace."""
    if not os.path.isdir(folder):
        return [], []
    bases = None if bases is None else set(bases)
    kinds = set(kinds)
    here = host_tag()
    orphans, foreign = [], []
    for name in sorted(os.listdir(folder)):
        parsed = parse_sibling(name)
        if parsed is None or parsed.kind not in kinds \
                or (bases is not None and parsed.base not in bases):
            continue
        if parsed.host != here:
            foreign.append(os.path.join(folder, name))
        elif parsed.pid != os.getpid() and not pid_alive(parsed.pid):
            orphans.append(os.path.join(folder, name))
    return orphans, foreign


def find_orphans(folder: str, bases: Optional[Iterable[str]] = None,
                 kinds: Iterable[str] = ("tmp", "old")) -> List[str]:
    """Paths in ``folder`` named ``<base>.<kind>-<host>-<pid>-<random>`` written on this host
    (:func:`host_tag`) whose process is gone. Names of another host / PID namespace are never
    returned: whether their process still runs cannot be seen from here.

    Args:
        folder: where to look (not recursive); a missing folder has no orphans.
        bases: only these base names (``None``: any).
        kinds: ``tmp`` (temporary files / folders) and / or ``old`` (moved-aside datasets).
    """
    return _scan(folder, bases, kinds)[0]


def clean_orphans(folder: str, bases: Optional[Iterable[str]] = None,
                  kinds: Iterable[str] = ("tmp", "old")) -> List[str]:
    """Remove :func:`find_orphans` (files or folders), logging each; returns the removed paths.
    A path that cannot be removed is reported and kept; one written on another host / PID
    namespace is left alone (logged at INFO)."""
    orphans, foreign = _scan(folder, bases, kinds)
    for path in foreign:
        logger.info("left %s alone: written on another host or PID namespace (host tag %s, "
                    "this one is %s), whose processes cannot be checked from here; remove it by "
                    "hand once its writer has finished", path,
                    parse_sibling(os.path.basename(path)).host, host_tag())
    removed = []
    for path in orphans:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as e:
            logger.warning("could not remove %s, left by an interrupted run: %s", path, e)
            continue
        logger.warning("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed


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
