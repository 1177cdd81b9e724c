"""Fixtures: a small phantom dataset (generated once per session) and CPU settings. Helpers
shared by the test modules are in ``common.py``."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oneshot_d2  # noqa: E402,F401  isort: skip  (compatibility remedies before Detectron2)
from common import REPO, SHARED_DATA  # noqa: E402,F401  (re-exported for older test modules)

from oneshot_d2.data.datasets.builtin import prepare_cncb_layout  # noqa: E402
from oneshot_d2.data.phantom_dataset import PhantomSpec, write_phantom_dataset  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SMALL_SPEC = PhantomSpec(size=128, seg_train=8, seg_test=4, cls_train=6, cls_val=3, cls_test=3,
                         slices_per_patient=2, seed=7)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A prepared small phantom dataset (CNCB layout + COCO annotations), 128x128 slices."""
    root = str(tmp_path_factory.mktemp("data") / "phantom")
    write_phantom_dataset(root, SMALL_SPEC)
    prepare_cncb_layout(root)
    return root


@pytest.fixture
def unique_name(request):
    """A dataset-name prefix unique to the test (DatasetCatalog rejects duplicates)."""
    return "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
