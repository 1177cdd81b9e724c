"""The command-line error contract (:mod:`oneshot_d2.cli`): one line for an expected error, the
traceback with ``--debug`` or ``ONESHOT_D2_DEBUG``, errors of ``launch``'s processes and of
DataLoader workers, and the warnings the tools hide. Each test's docstring says which one-line
slip in the code it catches."""
import contextlib
import io
import os
import subprocess
import sys
import warnings
from typing import List, Optional

import pytest

from oneshot_d2.cli.common import _NoExpectedTraceback, error_message, run_cli
from oneshot_d2.errors import DatasetError
from tests.bad_input import TRAIN_NET_SCRIPT


@pytest.mark.slow
def test_debug_flag_keeps_the_traceback(tmp_path):
    """Catches: --debug ignored (the traceback a developer needs is swallowed), or --debug after
    the KEY VALUE options passed to yacs as a config key. Subprocess: the real script."""
    r = subprocess.run([sys.executable, TRAIN_NET_SCRIPT, "--config-file",
                        str(tmp_path / "x.yaml"), "SOLVER.MAX_ITER", "1", "--debug"],
                       capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert "Traceback" in r.stderr and "x.yaml: config file not found" in r.stderr


def test_error_message_of_a_dataloader_worker_error():
    """A DatasetError raised in a DataLoader worker reaches the main process with the worker's
    traceback in its message. Catches: that multi-line message printed as is (a traceback
    after all) instead of its last line."""
    from torch._utils import ExceptionWrapper

    try:
        raise DatasetError("/d/img.png: unreadable image, truncated (dataset x)")
    except DatasetError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as info:
        wrapper.reraise()
    assert "Traceback" in str(info.value)
    assert error_message(info.value) == "/d/img.png: unreadable image, truncated (dataset x)"
    assert error_message(KeyError("Non-existent key: A.B")) == "Non-existent key: A.B"
    assert error_message(FileNotFoundError(2, "No such file", "/x")) == "/x: No such file"


def test_training_loop_logs_no_traceback_for_expected_errors():
    """Detectron2's training loop logs `Exception during training:` with the traceback before
    re-raising. Catches: the filter dropping real bugs' tracebacks, or not dropping ours."""
    import logging

    f = _NoExpectedTraceback()
    for exc, kept in ((DatasetError("a.png: bad"), False), (TypeError("bug"), True)):
        try:
            raise exc
        except Exception:
            record = logging.LogRecord("detectron2.engine.train_loop", logging.ERROR, __file__,
                                       1, "Exception during training:", (), sys.exc_info())
        assert f.filter(record) and (record.exc_info is not None) == kept


def test_known_harmless_warnings_filtered_and_nothing_else():
    """A tool's ``main`` that emits Detectron2 v0.6's two known-harmless warnings and a real
    one, run through run_cli as every tool's ``__main__`` does (every warning shown before it
    starts, as without pytest.ini's filters). Catches: run_cli no longer filtering them (the
    tools' logs repeat them), or the filter broadened (the real warning hidden too)."""
    def main(argv: Optional[List[str]]) -> int:
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the "
                      "indexing argument.", UserWarning, stacklevel=1)
        warnings.warn("The given NumPy array is not writable, and PyTorch does not support "
                      "non-writable tensors.", UserWarning, stacklevel=1)
        warnings.warn("something real", UserWarning, stacklevel=1)
        return 0

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # also undoes pytest.ini's filters of the two
        status = run_cli(main, [], prog="tool")
    assert status == 0
    assert [str(w.message) for w in seen] == ["something real"]


def test_debug_environment_variable(monkeypatch):
    """ONESHOT_D2_DEBUG=1 keeps the traceback like --debug; "0" / "" do not."""
    from oneshot_d2.cli import debug_requested

    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("ONESHOT_D2_DEBUG", value)
        assert debug_requested([]) is expected
    monkeypatch.delenv("ONESHOT_D2_DEBUG")
    assert debug_requested(["--debug"]) and not debug_requested([])


@pytest.mark.parametrize("last_line, expected", [
    ("oneshot_d2.errors.DatasetError: /d/a.png: image file not found (dataset s)",
     "/d/a.png: image file not found (dataset s)"),
    ("FileNotFoundError: [Errno 2] No such file: '/d/a.png'", "[Errno 2] No such file: '/d/a.png'"),
    ("ZeroDivisionError: division by zero", None),  # a bug: the traceback stays
    ("KeyError: 'roi_heads'", None)])
def test_errors_of_launched_processes(last_line, expected):
    """An error in a process started by Detectron2's launch (--num-gpus > 1) reaches the parent
    as torch's ProcessRaisedException holding the worker's traceback. Catches: that traceback
    printed for bad input (an image missing mid-training under DDP), or a bug in a worker
    reduced to one line."""
    from torch.multiprocessing import ProcessRaisedException

    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent "
            f"call last):\n  File \"train_loop.py\", line 149, in train\n{last_line}\n")

    def main(argv):
        raise ProcessRaisedException(text, 1, 4242)

    if expected is None:
        with pytest.raises(ProcessRaisedException):
            run_cli(main, [], prog="train_net")
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run_cli(main, [], prog="train_net") == 2
    assert err.getvalue().splitlines() == [f"train_net: error: {expected}"]


def test_console_scripts_are_the_commands_of_the_package_and_the_tools():
    """Catches: a command missing from setup.py's console scripts, a script pointing at a
    function that does not exist, or a tools/ shim running another command than its name."""
    import importlib
    import importlib.metadata
    import pkgutil

    import oneshot_d2.cli
    from tests.common import REPO

    commands = {m.name for m in pkgutil.iter_modules(oneshot_d2.cli.__path__)} - {"common"}
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.value.startswith("oneshot_d2.")}
    assert sorted(v.split(":")[0].rsplit(".", 1)[-1] for v in scripts.values()) == sorted(commands)
    for value in scripts.values():
        module, func = value.split(":")
        assert func == "entry_point" and callable(getattr(importlib.import_module(module), func))
    for command in commands:
        with open(os.path.join(REPO, "tools", f"{command}.py"), encoding="utf-8") as f:
            assert f"from oneshot_d2.cli.{command} import entry_point\n" in f.read()


@pytest.mark.slow
def test_console_script_runs_with_the_error_contract(tmp_path):
    """The installed ``oneshot-predict`` (subprocess). Catches: an entry point that bypasses
    run_cli (a traceback, exit status 1) or prints its error on stdout."""
    script = os.path.join(os.path.dirname(sys.executable), "oneshot-predict")
    r = subprocess.run([script, "--config-file", str(tmp_path / "x.yaml"), "--input",
                        str(tmp_path), "--output", str(tmp_path / "out")], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(tmp_path))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert lines == [f"predict: error: {tmp_path / 'x.yaml'}: config file not found"], lines
