"""Temporary names that carry the writer's host and process id, clean-up of what a killed run
left, atomic writes and the inter-process lock. Each test's docstring says which one-line slip
in the code it catches."""
import json
import logging
import os
import subprocess
import sys

import pytest

from oneshot_d2.utils.file_io import atomic_write_json
from oneshot_d2.utils.file_lock import file_lock
from oneshot_d2.utils.temp_names import (
    clean_orphans,
    host_tag,
    parse_sibling,
    sibling_name,
    tmp_prefix,
)
from tests.common import REPO, dead_pid, other_host_tag


def test_temporary_names_carry_host_and_pid(tmp_path):
    """Catches: a temporary / moved-aside name without the host (a pid judged on the wrong
    machine), or one that parse_sibling cannot read back (then never cleaned up)."""
    here = host_tag()
    assert len(here) == 8 and int(here, 16) >= 0
    for name in (tmp_prefix("a.json") + "k3_x9z", os.path.basename(sibling_name("p.d", "old")),
                 os.path.basename(sibling_name("my-data.v2", "tmp"))):
        parsed = parse_sibling(name)
        assert parsed is not None and parsed.host == here and parsed.pid == os.getpid(), name
    assert parse_sibling(os.path.basename(sibling_name("my-data.v2", "tmp"))).base == "my-data.v2"


def test_clean_orphans_only_removes_dead_writers_files(tmp_path):
    """Catches: removing a live process's temporary file, a file written on another host /
    PID namespace (its pid says nothing here: on a shared file system it may be a live
    writer's), another tool's / base's files, or a user's file that merely contains ".tmp"."""
    gone, here, other = dead_pid(), host_tag(), other_host_tag()
    names = {f"x.tmp-{here}-{gone}-ab12": True, f"x.old-{here}-{gone}-ab12": True,
             f"x.tmp-{here}-{os.getpid()}-ab12": False, f"y.tmp-{here}-{gone}-ab12": False,
             f"x.tmp-{other}-{gone}-ab12": False, f"x.old-{other}-{gone}-ab12": False,
             f"x.tmp-{gone}-ab12": False, f"x.tmp-{here}-notapid-ab12": False,
             "x.tmp": False, "x": False}
    for name in names:
        (tmp_path / name).mkdir()
    infos = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: infos.append((record.levelno, record.getMessage()))
    logger = logging.getLogger("oneshot_d2.utils.temp_names")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        removed = clean_orphans(str(tmp_path), bases=["x"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        n for n, gone in names.items() if gone)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, gone in names.items() if not gone)
    left = [m for lvl, m in infos if lvl == logging.INFO and "another host" in m]
    assert len(left) == 2 and all(other in m for m in left)


def test_atomic_write_removes_its_dead_temporary_files(tmp_path):
    """Catches: atomic writes never cleaning up the temporary files of a killed writer of the
    same file (or cleaning those of a live one, or of a writer on another host)."""
    here = host_tag()
    dead, live = f"a.json.tmp-{here}-{dead_pid()}-ab12", f"a.json.tmp-{here}-{os.getpid()}-ab12"
    foreign = f"a.json.tmp-{other_host_tag()}-{dead_pid()}-ab12"
    for name in (dead, live, foreign):
        (tmp_path / name).write_text("{")
    atomic_write_json(str(tmp_path / "a.json"), {"ok": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["a.json", live, foreign])
    assert json.loads((tmp_path / "a.json").read_text()) == {"ok": 1}


def test_file_lock_is_exclusive(tmp_path):
    """Catches: a lock that does not exclude a second holder, or a lock file left behind."""
    target = str(tmp_path / "index.json")
    with file_lock(target):
        with pytest.raises(BlockingIOError, match="index.json"):
            with file_lock(target, wait=False):
                pass
    with file_lock(target, wait=False):
        pass
    assert os.listdir(tmp_path) == []


def test_file_lock_without_fcntl(tmp_path):
    """Where ``fcntl`` does not exist (Windows) the module still imports and locks through
    filelock. Catches: an unguarded ``import fcntl``, or the fallback calling fcntl anyway."""
    module = os.path.join(REPO, "oneshot_d2", "utils", "file_lock.py")
    code = (
        "import importlib.util, os, sys\n"
        "sys.modules['fcntl'] = None  # import fcntl raises ImportError, as on Windows\n"
        f"spec = importlib.util.spec_from_file_location('file_lock', {module!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert m.fcntl is None\n"
        "with m.file_lock(sys.argv[1]) as path:\n"
        "    assert os.path.exists(path), path\n"
        "print('locked', path)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "target")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"locked {tmp_path / 'target'}.lock"
