"""Helpers of the bad-input tests: run a tool's ``main`` in-process as its ``__main__`` does and
check the one-line error contract (:mod:`oneshot_d2.cli`)."""
import contextlib
import hashlib
import importlib
import importlib.util
import io
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

from oneshot_d2.cli import run_cli
from tests.common import REPO, TINY

PREFIX = "badin"  # the phantom registered under this prefix (module fixture)


# the commands, as modules of oneshot_d2.cli (tools/<name>.py only runs their entry_point)
TRAIN_NET = "oneshot_d2.cli.train_net"
TRAIN_NET_SCRIPT = os.path.join(REPO, "tools", "train_net.py")


CHECK_DATASET = "oneshot_d2.cli.check_dataset"
PREDICT = "oneshot_d2.cli.predict"




PREPARE_PUBLIC = os.path.join(REPO, "datasets", "prepare_public.py")


_TOOLS: Dict[str, object] = {}


def _tool(path: str):
    """The command module ``oneshot_d2.cli.<name>``, or the script at ``path`` (``datasets/``)
    imported as a module (once)."""
    if not path.endswith(".py"):
        return importlib.import_module(path)
    if path not in _TOOLS:
        name = "tool_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS[path] = module
    return _TOOLS[path]


def run_tool(path: str, *argv: str) -> Tuple[int, List[str]]:
    """Run a command's ``main`` in-process as its entry point does; (status, stderr lines).
    (stderr is redirected here rather than with ``capsys``: Detectron2's loggers keep the
    ``sys.stdout`` of their first call, which ``capsys`` would close after the test.)"""
    prog = os.path.splitext(os.path.basename(path))[0] if path.endswith(".py") else \
        path.rsplit(".", 1)[-1]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run_cli(_tool(path).main, list(argv), prog=prog)
    return status, [line for line in err.getvalue().splitlines() if line.strip()]


def assert_one_error(status: int, lines: List[str], prog: str, *needles: str,
                     exact: bool = True) -> str:
    """Exit status 2 and exactly one stderr line ``<prog>: error: ...`` holding ``needles``,
    the only line (``exact``) or, once the run has started (library log lines such as torch's
    "No CUDA runtime" may precede it), the last one and the only error."""
    assert status == 2, lines
    assert not any("Traceback" in line for line in lines), lines
    assert len(lines) == 1 if exact else sum("error" in line.lower() for line in lines) == 1, lines
    assert lines[-1].startswith(f"{prog}: error: "), lines
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def snapshot(folder) -> Dict[str, str]:
    """relative path -> sha1 of every file under ``folder`` (to prove inputs unchanged)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


def write_png(path, array: np.ndarray) -> str:
    assert cv2.imwrite(str(path), array)
    return str(path)


def truncate(path, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


def seg_opts(out_dir, *extra: str) -> List[str]:
    return ["DATASETS.TRAIN", f"('{PREFIX}_seg_train',)", "DATASETS.TEST",
            f"('{PREFIX}_seg_test',)", "OUTPUT_DIR", str(out_dir), *TINY, *extra]
