"""Each remedy of oneshot_d2.compat (numbers as in the docs/install.md table "Detectron2 v0.6 on
a modern stack"), the opt-out ``ONESHOT_D2_NO_COMPAT`` and the INFO line at import."""
import ast
import importlib.machinery
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
        _ = C.nms_rotated
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


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != compat.OPT_OUT_ENV}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=300)


def test_opt_out_applies_nothing():
    # Under the opt-out, `import oneshot_d2` fails on this stack exactly as unpatched Detectron2
    # v0.6 does, so compat.py is loaded on its own (the package __init__ imports Detectron2).
    compat_py = Path(compat.__file__).resolve()
    code = f"""
        import importlib.util, sys, warnings
        import numpy as np
        from PIL import Image

        def np_has_int():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return hasattr(np, "int")

        before = (np_has_int(), hasattr(Image, "LINEAR"))
        spec = importlib.util.spec_from_file_location("compat_alone", {str(compat_py)!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.opted_out() and mod.APPLIED == [], mod.APPLIED
        assert mod.apply_all() == []  # an explicit call honours the opt-out too
        assert (np_has_int(), hasattr(Image, "LINEAR")) == before  # remedies 4 and 1 not run
        assert not any(type(f).__name__ == "_PlaceholderCFinder" for f in sys.meta_path)
        print("numpy has int:", before[0])
        """
    out = _run_python(code, ONESHOT_D2_NO_COMPAT="1")
    assert out.returncode == 0, out.stderr[-2000:]
    if any(name.startswith("numpy_aliases:int") for name in compat.APPLIED):
        assert "numpy has int: False" in out.stdout  # numpy >= 1.24: np.int stays absent
    assert "ONESHOT_D2_NO_COMPAT=1" in out.stderr and "no remedy" in out.stderr


@pytest.mark.slow
def test_opt_out_zero_means_applied():
    out = _run_python("import oneshot_d2.compat as c; print(c.APPLIED == c.apply_all() != [])",
                      ONESHOT_D2_NO_COMPAT="0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(bool(compat.APPLIED))


@pytest.mark.slow
def test_import_logs_applied_remedies_once_at_info():
    code = """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        import oneshot_d2
        from oneshot_d2 import compat
        compat.apply_all()  # idempotent, and silent: the line is logged at import only
        print(repr(compat.APPLIED))
        """
    out = _run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    applied = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert applied == compat.APPLIED  # a fresh process applies what this one did
    lines = [ln for ln in out.stderr.splitlines() if "oneshot_d2.compat" in ln]
    assert len(lines) == 1 and lines[0].startswith("INFO oneshot_d2.compat: "), out.stderr[-2000:]
    if applied:
        assert f"applied {len(applied)} remedies: " + ", ".join(applied) in lines[0]
    else:
        assert "none" in lines[0]
