"""What the benchmark tasks share: the one model builder (random weights, the initial weight
copy), phantom slices as model inputs, the timing and FLOP count of a call, and the
mixed-precision switch (:class:`Precision`), which is off while FLOPs are counted."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import BitMasks, Instances
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from oneshot_d2.config import add_oneshot_config
from oneshot_d2.data.phantom import COVID, CP, render_slice, sample_anatomy
from oneshot_d2.data.transforms import lung_window
from oneshot_d2.engine import OneShotTrainer

__all__ = ["Precision", "build_model", "make_inputs", "seg_input", "cls_input", "measure",
           "settings_line"]


class Precision:
    """Mixed precision for ``--amp`` (float16 on CUDA, bfloat16 on the CPU), switched off while
    FLOPs are counted: ``FlopCounterMode`` decomposes ops below autocast, which then meet mixed
    dtypes (and the count does not depend on the dtype), so FLOPs are counted in fp32.

    One object per benchmark run, shared by the functions it times and by :func:`measure`.
    """

    def __init__(self, amp: bool = False):
        self.amp = amp
        self.counting = False

    def __repr__(self) -> str:
        return f"Precision(amp={self.amp})"

    @contextlib.contextmanager
    def counting_flops(self) -> Iterator[None]:
        """Inside the block, :meth:`autocast` gives a null context (fp32)."""
        self.counting = True
        try:
            yield
        finally:
            self.counting = False

    def autocast(self, device: str) -> ContextManager[Any]:
        """``torch.autocast`` for ``device`` when ``amp`` is on and no FLOPs are being counted;
        a null context otherwise."""
        if not self.amp or self.counting:
            return contextlib.nullcontext()
        cuda = device.startswith("cuda")
        return torch.autocast(device_type="cuda" if cuda else "cpu",
                              dtype=torch.float16 if cuda else torch.bfloat16)


def build_model(repo: str, config: str, opts: Sequence[str], size: int, device: str,
                ) -> Tuple[CfgNode, nn.Module, torch.optim.Optimizer]:
    """The model of ``config`` (relative to ``repo``) with ``opts`` merged, random weights
    (seed 0) and ``size`` px test input, on ``device``; then the initial copy of the
    segmentation branch's weights into the classification branch where the ROI heads have one.
    Returns (cfg, model, optimizer)."""
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.merge_from_file(os.path.join(repo, config))
    cfg.merge_from_list(list(opts) + [
        "MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)])
    torch.manual_seed(0)
    model = OneShotTrainer.build_model(cfg)
    if hasattr(model.roi_heads, "copy_seg_to_cls"):
        model.roi_heads.copy_seg_to_cls()
    return cfg, model, OneShotTrainer.build_optimizer(cfg, model)


def make_inputs(size: int, n: int, seed: int = 0) -> List[Dict[str, Any]]:
    """n phantom slices as Detectron2 model inputs with lesion instances and a slice label
    (COVID-like and pneumonia-like alternating)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        s = render_slice(rng, size, COVID if i % 2 == 0 else CP, sample_anatomy(rng), 0.6)
        img = np.repeat(lung_window(s.hu)[:, :, None], 3, axis=2)
        inst = Instances((size, size))
        masks = [(s.mask == v) for v in (2, 3) if (s.mask == v).sum() > 100] or [s.mask == 1]
        bm = BitMasks(torch.from_numpy(np.stack(masks)))
        inst.gt_masks = bm
        inst.gt_boxes = bm.get_bounding_boxes()
        inst.gt_classes = torch.zeros(len(masks), dtype=torch.long)
        items.append({"image": torch.from_numpy(img.transpose(2, 0, 1).copy()),
                      "height": size, "width": size, "instances": inst,
                      "image_label": s.label, "file_name": f"phantom_{i}"})
    return items


def seg_input(x: Dict[str, Any]) -> Dict[str, Any]:
    """The input as a segmentation slice: without its slice label."""
    return {k: v for k, v in x.items() if k != "image_label"}


def cls_input(x: Dict[str, Any]) -> Dict[str, Any]:
    """The input as a classification slice: without its lesion instances."""
    return {k: v for k, v in x.items() if k != "instances"}


def measure(fn: Callable[[], None], iters: int, warmup: int, device: str,
            precision: Optional[Precision] = None) -> Tuple[float, float]:
    """(median seconds of ``iters`` calls of ``fn`` after ``warmup`` calls, GFLOP of one more
    call). That last call runs under ``precision.counting_flops()``, so ``fn``'s autocast
    is off while it is counted."""
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    counting = precision.counting_flops() if precision is not None else contextlib.nullcontext()
    with counting, FlopCounterMode(display=False) as counter:
        fn()
    return statistics.median(times), counter.get_total_flops() / 1e9


def settings_line(amp: bool, device_name: str, peak: float) -> str:
    """The tables' settings: precision, device, torch version and the measured matmul peak."""
    return (f"{'AMP, ' if amp else ''}{device_name}, torch {torch.__version__}; fp32 matmul "
            f"peak measured in this run: {peak:.0f} GFLOP/s")
