"""The ``models`` task: the cost of the one-shot machinery against plain Mask R-CNN with the
same backbone.

For each backbone it times, batch 1, random weights, phantom slices:

* inference: plain Mask R-CNN vs the one-shot model (affinity and LSTM heads), score threshold 0
  so that every model returns its full 100 detections;
* a training iteration (forward, backward, optimizer step) with the **same number of images**:
  plain Mask R-CNN on 2 segmentation slices vs the one-shot model on 1 segmentation + 1
  classification slice (the papers' batch). The overhead column also compares with plain Mask
  R-CNN on 1 segmentation slice: the total cost of adding a classification image.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from .common import build_model, cls_input, make_inputs, measure, seg_input

__all__ = ["BACKBONES", "MODELS", "model_options", "bench_models", "print_models_table"]

logger = logging.getLogger("benchmark")

BACKBONES: Dict[str, Tuple[str, List[str]]] = {
    # name: (config, extra options)
    "R18": ("configs/Base-OneShot-R18-FPN-GN.yaml", []),
    "R50": ("configs/Base-OneShot-RCNN-FPN.yaml", ["MODEL.RESNETS.NORM", "GN",
                                                   "MODEL.FPN.NORM", "GN",
                                                   "MODEL.BACKBONE.FREEZE_AT", "0"]),
}
MODELS: Dict[str, List[str]] = {
    "mask_rcnn": ["MODEL.META_ARCHITECTURE", "CTRCNN",  # same input normalisation
                  "MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
    "oneshot_affinity": ["MODEL.ONESHOT.IMAGE_HEAD.NAME", "AffinityHead"],
    "oneshot_lstm_attn": ["MODEL.ONESHOT.IMAGE_HEAD.NAME", "LSTMAttentionHead",
                          "MODEL.ONESHOT.ROI_BATCH_SIZE", "16",
                          "MODEL.ONESHOT.ORDER_BY_DISTANCE", "True"],
}
# every model returns its full 100 detections
COMMON_OPTIONS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "100",
                  "SOLVER.BASE_LR", "0.001"]


def model_options(backbone: str, model: str) -> Tuple[str, List[str]]:
    """(config, options) of ``model`` on ``backbone``, for :func:`common.build_model`."""
    config, extra = BACKBONES[backbone]
    return config, extra + MODELS[model] + COMMON_OPTIONS


def bench_models(repo: str, backbone: str, size: int, iters: int, warmup: int,
                 device: str) -> List[list]:
    """Rows [backbone, model, what, seconds, GFLOP, GFLOP/s, overhead vs plain Mask R-CNN] of
    every model of :data:`MODELS` on ``backbone``."""
    inputs = make_inputs(size, 2)
    rows: List[list] = []
    results: Dict[Tuple[str, str], float] = {}
    for model_name in MODELS:
        cfg, model, opt = build_model(repo, *model_options(backbone, model_name), size, device)
        oneshot = model_name != "mask_rcnn"

        model.eval()

        def infer(model=model):
            with torch.no_grad():
                model([cls_input(inputs[0])])

        t, gf = measure(infer, iters, warmup, device)
        results[(model_name, "infer")] = t
        rows.append([backbone, model_name, "inference, 1 image", t, gf, gf / t])

        model.train()
        batches = {"2 seg": [seg_input(inputs[0]), seg_input(inputs[1])]} if not oneshot else {
            "1 seg + 1 cls": [seg_input(inputs[0]), cls_input(inputs[1])]}
        if not oneshot:
            batches["1 seg"] = [seg_input(inputs[0])]
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


def print_models_table(repo: str, backbones: Sequence[str], size: int, iters: int,
                       warmup: int, device: str, device_name: str) -> None:
    """Run :func:`bench_models` for each backbone and print one table."""
    rows: List[list] = []
    for backbone in backbones:
        logger.info("benchmarking %s at %dx%d on %s", backbone, size, size, device)
        rows += bench_models(repo, backbone, size, iters, warmup, device)
    print(f"\n{size}x{size}, batch as stated, median of {iters} runs, {device_name}, "
          f"torch {torch.__version__}\n")
    print(tabulate(rows, headers=["backbone", "model", "what", "seconds", "GFLOP", "GFLOP/s",
                                  "overhead vs plain Mask R-CNN"],
                   floatfmt=(None, None, None, ".3f", ".1f", ".1f"), tablefmt="pipe"))
