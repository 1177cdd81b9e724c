"""Fixtures: a small phantom dataset (generated once per session), the CPU settings every test
runs under, and the order of the tests. Helpers shared by the test modules are in
``tests/common.py``."""
import os
import re

import pytest


def _pin_cpu_numerics() -> None:
    """Give every x86-64 machine of this kind the same floating-point results: one thread (a
    parallel sum's order depends on the thread count) and vector code capped at AVX2, which these
    machines all have (an AVX-512 CPU otherwise runs other ATen / oneDNN / MKL kernels, which
    round differently: measured, docs/development.md#tests). torch reads these variables at its
    first operation, so they are set before torch is imported; a value already in the
    environment wins."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = set(re.findall(r"[a-z0-9_]+", f.read()))
    except OSError:  # not Linux: leave the defaults
        return
    if {"avx2", "fma"} <= flags:
        os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
        os.environ.setdefault("MKL_CBWR", "AVX2")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tools the tests run as subprocesses


_pin_cpu_numerics()

import torch  # noqa: E402  isort: skip  (after the numerics settings)

import oneshot_d2  # noqa: E402,F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.data.datasets.builtin import (  # noqa: E402
    prepare_cncb_layout,
    register_cncb_layout,
)
from oneshot_d2.data.phantom_dataset import PhantomSpec, write_phantom_dataset  # noqa: E402

torch.set_num_threads(1)  # one thread per process: pytest-xdist runs one process per core

SMALL_SPEC = PhantomSpec(size=128, seg_train=8, seg_test=4, cls_train=6, cls_val=3, cls_test=3,
                         slices_per_patient=2, seed=7)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A prepared small phantom dataset (CNCB layout + COCO annotations), 128x128 slices."""
    root = str(tmp_path_factory.mktemp("data") / "phantom")
    write_phantom_dataset(root, SMALL_SPEC)
    prepare_cncb_layout(root)
    return root


@pytest.fixture(scope="module")
def phantom(phantom_root):
    """The session's small phantom, registered as ``badin_*`` (3 slice classes, 1 / 2 lesion
    categories in merge / separate mode): the bad-input tests' data (``tests/bad_input.py``)."""
    register_cncb_layout(phantom_root, "badin")
    return phantom_root


@pytest.fixture
def unique_name(request):
    """A dataset-name prefix unique to the test (DatasetCatalog rejects duplicates)."""
    return "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")


# the longest module (about 2 CPU minutes): started first, so the other process runs the rest
LONGEST = "tests/engine/test_training_acc.py"


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the longest module before all (stable order otherwise): with
    ``pytest -n`` (pytest-xdist), a long test that starts last would run alone at the end."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 not item.nodeid.startswith(LONGEST)))
