#!/usr/bin/env python
"""Cost of the one-shot machinery against plain Mask R-CNN with the same backbone.

    python tools/benchmark.py                                # CPU, 512x512, R-18-FPN and R-50-FPN
    python tools/benchmark.py --device cuda --iters 20       # on a GPU
    python tools/benchmark.py --backbones R18 --size 256 --iters 3

For each backbone it times, at the papers' 512x512 input with batch 1 (median of --iters runs
after --warmup runs, random weights, synthetic phantom slices):

* inference: plain Mask R-CNN vs the one-shot model (affinity and LSTM heads), score threshold 0
  so that every model returns its full 100 detections;
* a training iteration (forward, backward, optimizer step) with the **same number of images**:
  plain Mask R-CNN on 2 segmentation slices vs the one-shot model on 1 segmentation + 1
  classification slice (the papers' batch). A row "one-shot 1+1 vs plain 1" shows the total cost
  of adding a classification image for reference.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the same runs (2 FLOPs per
multiply-add, forward and backward) and reported as GFLOP and GFLOP/s next to every timing.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch

import oneshot_d2  # noqa: F401  isort: skip
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from oneshot_d2 import add_oneshot_config
from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.data.phantom import COVID, CP, lung_window, render_slice, sample_anatomy
from oneshot_d2.engine import OneShotTrainer

logger = logging.getLogger("benchmark")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACKBONES = {
    # name: (config, extra options)
    "R18": ("configs/Base-OneShot-R18-FPN-GN.yaml", []),
    "R50": ("configs/Base-OneShot-RCNN-FPN.yaml", ["MODEL.RESNETS.NORM", "GN",
                                                   "MODEL.FPN.NORM", "GN",
                                                   "MODEL.BACKBONE.FREEZE_AT", "0"]),
}
MODELS = {
    "mask_rcnn": ["MODEL.META_ARCHITECTURE", "CTRCNN",  # same input normalisation
                  "MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
    "oneshot_affinity": ["MODEL.ONESHOT.IMAGE_HEAD.NAME", "AffinityHead"],
    "oneshot_lstm_attn": ["MODEL.ONESHOT.IMAGE_HEAD.NAME", "LSTMAttentionHead",
                          "MODEL.ONESHOT.ROI_BATCH_SIZE", "16",
                          "MODEL.ONESHOT.ORDER_BY_DISTANCE", "True"],
}


def build(backbone: str, model: str, size: int, device: str):
    config, extra = BACKBONES[backbone]
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(extra + MODELS[model] + [
        "MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "100",
        "SOLVER.BASE_LR", "0.001"])
    torch.manual_seed(0)
    m = OneShotTrainer.build_model(cfg)
    if hasattr(m.roi_heads, "copy_seg_to_cls"):
        m.roi_heads.copy_seg_to_cls()
    return cfg, m, OneShotTrainer.build_optimizer(cfg, m)


def make_inputs(size: int, n: int, seed: int = 0) -> List[Dict]:
    """n phantom slices as Detectron2 model inputs with lesion instances and a slice label."""
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


def _seg(x):
    return {k: v for k, v in x.items() if k != "image_label"}


def _cls(x):
    return {k: v for k, v in x.items() if k != "instances"}


def measure(fn: Callable[[], None], iters: int, warmup: int, device: str):
    def sync():
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
    with FlopCounterMode(display=False) as counter:
        fn()
    return statistics.median(times), counter.get_total_flops() / 1e9


def bench_backbone(backbone: str, size: int, iters: int, warmup: int, device: str):
    inputs = make_inputs(size, 2)
    rows = []
    results = {}
    for model_name in MODELS:
        cfg, model, opt = build(backbone, model_name, size, device)
        oneshot = model_name != "mask_rcnn"

        model.eval()

        def infer(model=model):
            with torch.no_grad():
                model([_cls(inputs[0])])

        t, gf = measure(infer, iters, warmup, device)
        results[(model_name, "infer")] = t
        rows.append([backbone, model_name, "inference, 1 image", t, gf, gf / t])

        model.train()
        batches = {"2 seg": [_seg(inputs[0]), _seg(inputs[1])]} if not oneshot else {
            "1 seg + 1 cls": [_seg(inputs[0]), _cls(inputs[1])]}
        if not oneshot:
            batches["1 seg"] = [_seg(inputs[0])]
        for label, batch in batches.items():
            def step(model=model, batch=batch, opt=opt):
                with EventStorage(0):
                    loss = sum(model(batch).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

            t, gf = measure(step, iters, warmup, device)
            results[(model_name, label)] = t
            rows.append([backbone, model_name, f"train iteration, {label}", t, gf, gf / t])
    base_inf, base_train2, base_train1 = (results[("mask_rcnn", k)]
                                          for k in ("infer", "2 seg", "1 seg"))
    for row in rows:
        name, mode, t = row[1], row[2], row[3]
        if name == "mask_rcnn":
            row.append("baseline")
        elif mode.startswith("inference"):
            row.append(f"{100 * (t / base_inf - 1):+.1f} %")
        else:
            row.append(f"{100 * (t / base_train2 - 1):+.1f} % (vs 2 seg); "
                       f"{100 * (t / base_train1 - 1):+.1f} % (vs 1 seg)")
    return rows


def main(argv=None) -> int:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.getLogger("detectron2").setLevel(logging.WARNING)  # no model dumps
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for backbone in args.backbones:
        logger.info("benchmarking %s at %dx%d on %s", backbone, args.size, args.size, args.device)
        rows += bench_backbone(backbone, args.size, args.iters, args.warmup, args.device)
    device = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else f"CPU, {torch.get_num_threads()} threads")
    print(f"\n{args.size}x{args.size}, batch as stated, median of {args.iters} runs, {device}, "
          f"torch {torch.__version__}\n")
    print(tabulate(rows, headers=["backbone", "model", "what", "seconds", "GFLOP", "GFLOP/s",
                                  "overhead vs plain Mask R-CNN"],
                   floatfmt=(None, None, None, ".3f", ".1f", ".1f"), tablefmt="pipe"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="benchmark"))
