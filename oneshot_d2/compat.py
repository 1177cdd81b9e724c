"""Remedies for running Detectron2 v0.6 on a modern stack (Python 3.11, torch 2.x, numpy 2,
Pillow >= 10), and for running it without its compiled extension.

Imported by ``oneshot_d2/__init__.py`` before any Detectron2 import, so ``import oneshot_d2``
patches Detectron2, numpy and PIL for the whole process. Each remedy checks the condition it
fixes (never a version string), so on a full, newer Detectron2 every one is a no-op.
:data:`APPLIED` lists the remedies that took effect in this process; one INFO line on the
``oneshot_d2.compat`` logger names them at import.

Opt-out: with the environment variable ``ONESHOT_D2_NO_COMPAT=1`` (any value but empty or ``0``)
set before ``import oneshot_d2``, no remedy is applied (:data:`APPLIED` stays empty, nothing
is patched) and one WARNING line says so. Use it on a stack that needs none of them, or to
supply your own fixes; on Pillow >= 10 or numpy >= 1.24 Detectron2 v0.6 then fails as it
does unpatched.

Remedies (the numbers are those of the table "Detectron2 v0.6 on a modern stack" of
docs/install.md):

1. ``PIL.Image.LINEAR`` removed in Pillow 10 -> alias to ``BILINEAR``.
2. ``detectron2._C`` not built (registry route) -> a placeholder module, found only when no real
   one exists, with the helpers ``collect_env`` needs and a clear error for compiled ops
   (rotated boxes, deformable conv, fast COCO eval; none is used by oneshot_d2).
3. ``caffe2`` placeholder for ``detectron2.export``: *not applied*; oneshot_d2 does not import it.
4. ``np.int`` / ``np.float`` / ``np.bool`` ... removed in numpy >= 1.24 -> builtin aliases
   (``print_instances_class_histogram`` uses ``np.int`` on every training run).
5. ``random.sample(set)`` rejected by Python >= 3.11 in ``MapDataset``'s retry path -> its RNG
   accepts sets (sorted, so the retry stays deterministic).
6. ``LRScheduler`` hook saves only ``_LRScheduler`` subclasses -> also torch's built-in schedulers.
7. fast COCO eval is C++ -> :func:`has_compiled_ops`; callers pass ``use_fast_impl`` accordingly.
8. ``DefaultTrainer`` does not checkpoint the optimizer -> save/load its inner trainer's state.
9. ``launch`` hard-codes NCCL/CUDA and DDP gets ``device_ids`` for CPU models -> gloo and
   ``device_ids=None`` when there is no GPU.
10. ``torch.load(weights_only=True)``: a policy, not a patch -- oneshot_d2 keeps checkpoints to
    tensors and plain Python values.

Also: Detectron2's modules call ``torch.jit.script`` at import, which torch >= 2.10 answers with
a ``FutureWarning`` each time; that one message is filtered (nothing else; not under the opt-out).
:func:`filter_known_warnings` (called by the command-line tools, see :mod:`oneshot_d2.cli`, and
by the training ``main``) filters the two known-harmless warnings Detectron2 v0.6 repeats on a
modern stack, the same two ``pytest.ini`` filters: "The given NumPy array is not writable" and
"torch.meshgrid: ... indexing argument" (both ``UserWarning``); nothing else, so that a real
warning stands out.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import random
import sys
import types
from typing import Any, Callable, List

logger = logging.getLogger(__name__)

APPLIED: List[str] = []
_PLACEHOLDER_C = "detectron2._C"
OPT_OUT_ENV = "ONESHOT_D2_NO_COMPAT"


def opted_out() -> bool:
    """True when ``ONESHOT_D2_NO_COMPAT`` is set to anything but empty or ``0``."""
    return os.environ.get(OPT_OUT_ENV, "").strip() not in ("", "0")


# --------------------------------------------------------------------------------------------
# 1. Pillow >= 10
def _fix_pil_linear() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        APPLIED.append("pil_linear")


# --------------------------------------------------------------------------------------------
# 2. detectron2._C placeholder
class CompiledOpUnavailable(RuntimeError):
    """Raised when code asks the placeholder ``detectron2._C`` for a compiled operator."""


def _make_placeholder_c() -> types.ModuleType:
    mod = types.ModuleType(_PLACEHOLDER_C)
    mod.__doc__ = ("Placeholder installed by oneshot_d2.compat: Detectron2 was built without "
                   "C++ ops.")
    mod.__oneshot_placeholder__ = True
    mod.get_compiler_version = lambda: "not built (pure-Python Detectron2)"
    mod.get_cuda_version = lambda: "not built"
    mod.has_cuda = lambda: False

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise CompiledOpUnavailable(
            f"detectron2._C.{name} is a compiled Detectron2 operator, and this Detectron2 was "
            "installed without its C++ extension (registry route, see docs/install.md). "
            "Install Detectron2 from its repository to use rotated boxes, deformable convolution "
            "or the fast COCO evaluator; oneshot_d2 itself does not need them."
        )

    mod.__getattr__ = __getattr__
    return mod


class _PlaceholderCFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last finder on ``sys.meta_path``: serves ``detectron2._C`` only when no real one exists."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib API
        if fullname != _PLACEHOLDER_C:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin="oneshot_d2.compat")

    def create_module(self, spec):
        return _make_placeholder_c()

    def exec_module(self, module):
        return None


def _real_c_exists() -> bool:
    for finder in sys.meta_path:
        if isinstance(finder, _PlaceholderCFinder):
            continue
        spec = None
        try:
            import detectron2  # noqa: F401  (the package's __path__ is needed for the search)

            spec = finder.find_spec(_PLACEHOLDER_C, detectron2.__path__)
        except (AttributeError, ImportError, ValueError):
            continue
        if spec is not None:
            return True
    return False


def _install_placeholder_c() -> None:
    if any(isinstance(f, _PlaceholderCFinder) for f in sys.meta_path):
        return
    if _real_c_exists():
        return
    sys.meta_path.append(_PlaceholderCFinder())
    APPLIED.append("placeholder_C")


def has_compiled_ops() -> bool:
    """True when Detectron2's C++ extension is really built (remedy 7: fast COCO eval)."""
    try:
        import detectron2._C as C
    except ImportError:  # no extension and no placeholder (ONESHOT_D2_NO_COMPAT)
        return False

    return not getattr(C, "__oneshot_placeholder__", False)


# --------------------------------------------------------------------------------------------
# 4. numpy >= 1.24 removed aliases
_NUMPY_ALIASES = {"int": int, "float": float, "bool": bool, "str": str}  # those v0.6 uses


def _fix_numpy_aliases() -> None:
    import warnings

    import numpy as np

    restored = []
    for name, value in _NUMPY_ALIASES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy 2.x warns before raising
                getattr(np, name)
        except AttributeError:
            setattr(np, name, value)
            restored.append(name)
    if restored:
        APPLIED.append("numpy_aliases:" + ",".join(restored))


# --------------------------------------------------------------------------------------------
# 5. MapDataset retry path on Python >= 3.11
class SetTolerantRandom(random.Random):
    """``random.Random`` whose ``sample`` accepts a set (sorted first, so it stays seeded)."""

    def sample(self, population, k, **kwargs):  # type: ignore[override]
        if isinstance(population, (set, frozenset)):
            population = sorted(population)
        return super().sample(population, k, **kwargs)


def _fix_map_dataset_retry() -> None:
    try:
        random.Random(0).sample({0}, 1)
        return  # this Python still samples from sets
    except TypeError:
        pass
    from detectron2.data import common

    init = common.MapDataset.__init__
    if getattr(init, "__oneshot_patched__", False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        rng = getattr(self, "_rng", None)
        if isinstance(rng, random.Random) and not isinstance(rng, SetTolerantRandom):
            tolerant = SetTolerantRandom()
            tolerant.setstate(rng.getstate())
            self._rng = tolerant

    __init__.__oneshot_patched__ = True
    common.MapDataset.__init__ = __init__
    APPLIED.append("map_dataset_retry")


# --------------------------------------------------------------------------------------------
# 6. LRScheduler hook and torch >= 2.0 schedulers
def _fix_lr_scheduler_state() -> None:
    import torch
    from detectron2.engine import hooks

    base = getattr(torch.optim.lr_scheduler, "LRScheduler", None)
    if base is None:
        return
    probe_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    probe = hooks.LRScheduler(probe_opt, torch.optim.lr_scheduler.StepLR(probe_opt, 1))
    if probe.state_dict():
        return  # the hook already saves built-in schedulers

    def state_dict(self):
        if isinstance(self.scheduler, base):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict):
        if isinstance(self.scheduler, base):
            logger.info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)

    hooks.LRScheduler.state_dict = state_dict
    hooks.LRScheduler.load_state_dict = load_state_dict
    APPLIED.append("lr_scheduler_state")


# --------------------------------------------------------------------------------------------
# 8. DefaultTrainer checkpoints without the optimizer
def _fix_trainer_state() -> None:
    from detectron2.engine import DefaultTrainer

    if "state_dict" in DefaultTrainer.__dict__:
        return  # newer Detectron2 saves the inner trainer (optimizer, grad scaler) itself

    def state_dict(self):
        ret = super(DefaultTrainer, self).state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super(DefaultTrainer, self).load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    DefaultTrainer.state_dict = state_dict
    DefaultTrainer.load_state_dict = load_state_dict
    APPLIED.append("trainer_state")


# --------------------------------------------------------------------------------------------
# 9. CPU launch (gloo) and CPU DDP
def _cpu_capable_worker(original: Callable) -> Callable:
    def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine,
                            machine_rank, dist_url, args, timeout=None):
        import torch

        if torch.cuda.is_available():
            kwargs = {} if timeout is None else {"timeout": timeout}
            return original(local_rank, main_func, world_size, num_gpus_per_machine,
                            machine_rank, dist_url, args, **kwargs)
        import torch.distributed as dist
        from detectron2.utils import comm

        global_rank = machine_rank * num_gpus_per_machine + local_rank
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                                rank=global_rank, **kwargs)
        num_machines = world_size // num_gpus_per_machine
        for i in range(num_machines):
            ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
            pg = dist.new_group(ranks_on_i)
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = pg
        comm.synchronize()
        main_func(*args)

    return _distributed_worker


def _fix_cpu_launch() -> None:
    from detectron2.engine import defaults

    # `detectron2.engine.launch` is also the name of the function the package re-exports.
    launch_mod = importlib.import_module("detectron2.engine.launch")
    worker = launch_mod._distributed_worker
    if not getattr(worker, "__oneshot_patched__", False):
        if "gloo" not in inspect.getsource(worker).lower():
            patched = _cpu_capable_worker(worker)
            patched.__oneshot_patched__ = True
            # mp.spawn pickles the worker by reference: it must be importable from here.
            patched.__module__ = __name__
            patched.__qualname__ = "_cpu_capable_distributed_worker"
            globals()["_cpu_capable_distributed_worker"] = patched
            launch_mod._distributed_worker = patched
            APPLIED.append("cpu_launch")

    create = defaults.create_ddp_model
    if getattr(create, "__oneshot_patched__", False):
        return

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        params = list(model.parameters())
        if "device_ids" not in kwargs and params and params[0].device.type == "cpu":
            kwargs["device_ids"] = None
        return create(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model.__oneshot_patched__ = True
    create_ddp_model.__doc__ = create.__doc__
    defaults.create_ddp_model = create_ddp_model
    import detectron2.engine as engine

    engine.create_ddp_model = create_ddp_model
    APPLIED.append("cpu_ddp")


# The messages (regular expressions matched at the start) that pytest.ini filters too.
KNOWN_HARMLESS_WARNINGS = (r"The given NumPy array is not writable", r"torch\.meshgrid")


def filter_known_warnings() -> None:
    """Ignore exactly :data:`KNOWN_HARMLESS_WARNINGS` (``UserWarning``) in this process;
    idempotent (the ``warnings`` module drops duplicate filters)."""
    import warnings

    for message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def apply_all() -> List[str]:
    """Apply every remedy whose condition holds; idempotent. Returns :data:`APPLIED`.

    Applies nothing when ``ONESHOT_D2_NO_COMPAT`` is set (:func:`opted_out`).
    """
    if opted_out():
        return APPLIED
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    _fix_pil_linear()
    _fix_numpy_aliases()
    _install_placeholder_c()
    _fix_map_dataset_retry()
    _fix_lr_scheduler_state()
    _fix_trainer_state()
    _fix_cpu_launch()
    return APPLIED


def _apply_at_import() -> None:
    if opted_out():
        logger.warning("%s=%s: oneshot_d2.compat applied no remedy (Detectron2 v0.6 may fail "
                       "on this stack)", OPT_OUT_ENV, os.environ[OPT_OUT_ENV])
        return
    apply_all()
    logger.info("oneshot_d2.compat applied %d remedies: %s", len(APPLIED),
                ", ".join(APPLIED) if APPLIED else "none (nothing to fix)")


_apply_at_import()
