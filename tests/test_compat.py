"""Each remedy of oneshot_d2.compat (numbers as in design/detectron2_install.md)."""
import importlib.machinery
import sys

import numpy as np
import pytest
import torch

from oneshot_d2 import compat


def test_1_pil_linear_alias():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    import detectron2.data.transforms  # noqa: F401  (failed at import before the remedy)


def test_2_placeholder_c():
    import detectron2._C as C

    if compat.has_compiled_ops():
        pytest.skip("a compiled detectron2._C is installed: the placeholder is not used")
    assert C.has_cuda() is False and "not built" in C.get_compiler_version()
    with pytest.raises(compat.CompiledOpUnavailable, match="nms_rotated.*C\\+\\+ extension"):
        C.nms_rotated
    from detectron2.utils.collect_env import collect_env_info

    assert "not built" in collect_env_info()


def test_2_placeholder_not_installed_when_real_c_exists(monkeypatch):
    class RealC:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "detectron2._C":
                return importlib.machinery.ModuleSpec(name, None, origin="/x/_C.so")
            return None

    others = [f for f in sys.meta_path if not isinstance(f, compat._PlaceholderCFinder)]
    monkeypatch.setattr(sys, "meta_path", [RealC()] + others)
    monkeypatch.setattr(compat, "APPLIED", [])
    compat._install_placeholder_c()
    assert not any(isinstance(f, compat._PlaceholderCFinder) for f in sys.meta_path)
    assert compat.APPLIED == []


def test_4_numpy_aliases():
    from detectron2.data.build import print_instances_class_histogram

    assert np.int is int and np.float is float
    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}]}]
    print_instances_class_histogram(dicts, ["GGO", "consolidation"])


def test_5_map_dataset_retry():
    from detectron2.data.common import MapDataset

    data = list(range(10))
    ds = MapDataset(data, lambda x: None if x == 3 else x * 10)
    assert isinstance(ds._rng, compat.SetTolerantRandom)
    got = ds[3]  # the mapper fails: a random other index is used
    assert got % 10 == 0 and got != 30
    assert MapDataset(data, lambda x: None if x == 3 else x)[3] == got // 10  # seeded


def test_6_lr_scheduler_hook_saves_builtin_schedulers():
    from detectron2.engine.hooks import LRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    state = LRScheduler(opt, sched).state_dict()
    assert state["last_epoch"] == 1
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    LRScheduler(opt2, sched2).load_state_dict(state)
    assert sched2.last_epoch == 1


def test_7_fast_coco_eval_flag():
    assert compat.has_compiled_ops() is False or "placeholder_C" not in compat.APPLIED


def test_8_trainer_state_includes_optimizer():
    from detectron2.engine import DefaultTrainer

    assert "state_dict" in DefaultTrainer.__dict__  # patched on v0.6, native on newer versions


def test_9_cpu_ddp_gets_no_device_ids(monkeypatch):
    from detectron2.engine import defaults

    seen = {}

    class FakeDDP:
        def __init__(self, model, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(defaults, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(defaults.comm, "get_world_size", lambda: 2)
    defaults.create_ddp_model(torch.nn.Linear(2, 2), broadcast_buffers=False)
    assert seen == {"device_ids": None, "broadcast_buffers": False}


def test_remedies_are_idempotent():
    before = list(compat.APPLIED)
    compat.apply_all()
    assert compat.APPLIED == before
