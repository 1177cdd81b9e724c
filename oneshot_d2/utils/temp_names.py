"""Temporary and moved-aside names that carry the writer's host and process id, and clean-up of
the leftovers of an interrupted run.

A writer builds ``<name>`` as ``<name>.tmp-<host>-<pid>-<random>`` next to it (a file or a
folder) and renames it into place; a folder being replaced is moved aside as
``<name>.old-<host>-<pid>-<random>`` until the new one is in place. ``<host>`` is
:func:`host_tag`: 8 hex digits hashed from the host name and the PID namespace, so names stay
parseable whatever the host name holds (``-``, ``.``) and a process id is only ever compared
with the processes it belongs to. A process killed in between leaves these behind;
:func:`clean_orphans` (called by the next run of the same tool) removes the ones written on this
host (same PID namespace) whose process is gone, and never anything else: a name written on
another host or in another PID namespace (a shared file system) is left alone, since whether its
process still runs cannot be seen from here.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import socket
from typing import Iterable, List, NamedTuple, Optional, Tuple

__all__ = ["Sibling", "host_tag", "tmp_prefix", "sibling_name", "parse_sibling", "pid_alive",
           "find_orphans", "clean_orphans"]

logger = logging.getLogger(__name__)

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
