"""The suite runs under the numerics settings of ``tests/conftest.py`` (one thread, vector code
capped at AVX2 where the CPU has it), so its numbers do not depend on which x86-64 machine of
this kind runs it (docs/development.md#tests)."""
import os

import pytest
import torch


def test_one_thread():
    assert torch.get_num_threads() == 1
    assert os.environ.get("OMP_NUM_THREADS") == "1"


@pytest.mark.skipif("ATEN_CPU_CAPABILITY" not in os.environ,
                    reason="no AVX2 here: torch's default kernels, nothing to cap")
def test_aten_runs_the_capped_kernels():
    """Catches: torch imported (and its kernels chosen) before conftest sets the variable."""
    assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()
