"""The suite runs under the numerics settings of ``tests/conftest.py`` (one thread, vector code
capped at AVX2 where the CPU has it), so its numbers do not depend on which x86-64 machine of
this kind runs it (docs/development.md#tests)."""
import os
import re

import pytest
import torch


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return set(re.findall(r"[a-z0-9_]+", f.read()))
    except OSError:
        return set()


def test_one_thread():
    assert torch.get_num_threads() == 1
    assert os.environ.get("OMP_NUM_THREADS") == "1"


@pytest.mark.skipif(not {"avx2", "fma"} <= _cpu_flags(), reason="no AVX2 here: nothing to cap")
def test_aten_runs_the_capped_kernels():
    """Catches: the cap not set, or set only after torch ran its first operation (its kernels
    are chosen then)."""
    assert os.environ.get("ATEN_CPU_CAPABILITY") == "avx2"
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
