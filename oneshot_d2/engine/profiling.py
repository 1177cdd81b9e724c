"""Where a model's time and FLOPs go, stage by stage, and the machine's matmul peak.

Used by ``tools/benchmark.py``. A *stage* is a named group of sub-modules (``"RPN":
["proposal_generator"]``); its time is the wall time spent inside any of them (forward hooks on
the modules and all their descendants, nested calls counted once, so a head that is run layer by
layer is timed too), its FLOPs those that ``torch.utils.flop_counter.FlopCounterMode`` books
under them. What runs outside every stage (box decoding, NMS, mask pasting, Python) is the
difference to the total.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ONESHOT_STAGES", "StageTimer", "stage_flops", "matmul_peak_gflops", "synchronize"]

# The stages of OneShotRCNN (and of CTRCNN / GeneralizedRCNN, which lack the cls_* modules),
# in the order of the issue tables.
ONESHOT_STAGES: Dict[str, List[str]] = {
    "backbone + FPN": ["backbone"],
    "RPN": ["proposal_generator"],
    "box RoI pooling": ["roi_heads.box_pooler"],
    "segmentation box head": ["roi_heads.box_head", "roi_heads.box_predictor"],
    "classification box head": ["roi_heads.cls_box_head", "roi_heads.cls_box_predictor"],
    "mask RoI pooling": ["roi_heads.mask_pooler"],
    "segmentation mask head": ["roi_heads.mask_head"],
    "classification mask features": ["roi_heads.cls_mask_head"],
    "image head": ["image_head"],
}


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _find(model: nn.Module, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


class StageTimer:
    """Accumulate wall time per stage while enabled (a context manager).

    ``seconds`` maps stage -> seconds summed over every call made inside the ``with`` block;
    stages whose modules the model lacks are absent.
    """

    def __init__(self, model: nn.Module, stages: Mapping[str, Sequence[str]] = ONESHOT_STAGES,
                 device: str = "cpu"):
        self.model, self.stages, self.device = model, stages, device
        self.seconds: Dict[str, float] = defaultdict(float)
        self._depth: Dict[str, int] = defaultdict(int)
        self._start: Dict[str, float] = {}
        self._handles: List = []

    def _pre(self, stage: str) -> Callable:
        def hook(module, args):
            if self._depth[stage] == 0:
                synchronize(self.device)
                self._start[stage] = time.perf_counter()
            self._depth[stage] += 1
        return hook

    def _post(self, stage: str) -> Callable:
        def hook(module, args, output):
            self._depth[stage] -= 1
            if self._depth[stage] == 0:
                synchronize(self.device)
                self.seconds[stage] += time.perf_counter() - self._start[stage]
        return hook

    def __enter__(self) -> "StageTimer":
        for stage, paths in self.stages.items():
            for path in paths:
                root = _find(self.model, path)
                if root is None:
                    continue
                self.seconds[stage] += 0.0
                for module in root.modules():
                    self._handles.append(module.register_forward_pre_hook(self._pre(stage)))
                    self._handles.append(module.register_forward_hook(self._post(stage)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _module_flops(counts: Mapping[str, Mapping], model: nn.Module, name: str,
                  module: nn.Module) -> int:
    """FLOPs booked under ``name``; for a module never called as a whole (a head run layer by
    layer), the sum over its children."""
    if name in counts:
        return sum(counts[name].values())
    return sum(_module_flops(counts, model, f"{name}.{child_name}", child)
               for child_name, child in module.named_children())


def stage_flops(model: nn.Module, fn: Callable[[], None],
                stages: Mapping[str, Sequence[str]] = ONESHOT_STAGES) -> Dict[str, float]:
    """Run ``fn`` once under ``FlopCounterMode``; return GFLOP per stage plus ``"total"``
    (2 FLOPs per multiply-add; forward and, if ``fn`` runs one, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out: Dict[str, float] = {}
    for stage, paths in stages.items():
        found = [(p, _find(model, p)) for p in paths]
        found = [(p, m) for p, m in found if m is not None]
        if found:
            out[stage] = sum(_module_flops(counts, model, f"{root}.{p}", m)
                             for p, m in found) / 1e9
    out["total"] = counter.get_total_flops() / 1e9
    return out


def matmul_peak_gflops(device: str = "cpu", n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply rate (GFLOP/s, best of ``repeats`` after 3 warm-up
    products) with the current thread count: the ceiling a compute-bound model can approach."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9
