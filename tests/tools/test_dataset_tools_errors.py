"""Bad arguments and data given to the dataset tools (``prepare_phantom``, ``check_dataset``): one
line and exit status 2. Each test's docstring says which one-line slip in the code it catches."""
import os
import subprocess
import sys

import pytest

from tests.bad_input import CHECK_DATASET, PREFIX, assert_one_error, run_tool
from tests.common import PREPARE_PHANTOM


@pytest.mark.parametrize("size", ["0", "24"])
def test_prepare_phantom_size_too_small(tmp_path, size):
    """Silent before: --size 24 wrote a set with 0 lesion instances (--size 0 crashed). Catches:
    the minimum not checked, or checked after the folder is created."""
    root = tmp_path / "ph"
    status, lines = run_tool(PREPARE_PHANTOM, "--root", str(root), "--size", size)
    assert_one_error(status, lines, "prepare_phantom", f"--size {size}: too small",
                     "the minimum is 64")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, needle", [
    (("--slices-per-patient", "0"), "--slices-per-patient 0: must be >= 1"),  # looped forever
    (("--seg-train", "-1"), "--seg-train -1: slice counts must be >= 0"),
    (("--cls-shares", "0", "0", "0"), "--cls-shares 0.0 0.0 0.0: shares must be >= 0"),
])
def test_prepare_phantom_bad_counts(tmp_path, args, needle):
    """Catches: a count check dropped (a ValueError traceback, or an endless loop in
    _patients for 0 slices per patient)."""
    status, lines = run_tool(PREPARE_PHANTOM, "--root", str(tmp_path / "ph"), "--size", "64",
                             *args)
    assert_one_error(status, lines, "prepare_phantom", needle)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_prepare_phantom_end_to_end_size_zero(tmp_path):
    """The real script (subprocess). Catches: `__main__` not going through run_cli."""
    r = subprocess.run([sys.executable, PREPARE_PHANTOM, "--root", str(tmp_path / "ph"),
                        "--size", "0"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert_one_error(r.returncode, lines, "prepare_phantom", "--size 0: too small")


def test_check_dataset_json_under_a_regular_file(phantom, tmp_path):
    """Catches: the JSON path checked only after the (long) check, failing with a bare
    FileExistsError traceback from makedirs."""
    blocker = tmp_path / "report"
    blocker.write_text("keep me")
    status, lines = run_tool(CHECK_DATASET, "--train", f"{PREFIX}_seg_train",
                             "--json", str(blocker / "r.json"))
    assert_one_error(status, lines, "check_dataset", f"{blocker}: cannot create the folder of "
                     f"--json ({blocker} is a file, not a folder)")
    assert blocker.read_text() == "keep me"
    status, lines = run_tool(CHECK_DATASET, "--train", "no_such_set")
    assert_one_error(status, lines, "check_dataset", "unknown dataset(s) ['no_such_set']")
