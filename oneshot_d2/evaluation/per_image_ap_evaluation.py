"""``PerImageAPEvaluator``: the papers' per-image mask AP beside Detectron2's COCOEvaluator.

See :mod:`oneshot_d2.evaluation.per_image_ap` for the protocol. Results go under the
``segm_per_image`` key (percent): ``AP`` (mean over IoU 0.50:0.95), ``AP50``, ``AP75`` and one
``AP@t`` per threshold; ``per_image_ap.json`` in the output directory lists every image's APs.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from ..data.io import decode_mask
from ..errors import DatasetError, DatasetKeyError
from ..utils.file_io import atomic_write_text
from ._gather import gather_on_main
from .per_image_ap import IOU_THRESHOLDS, image_ap, summarize_per_image_ap

__all__ = ["PerImageAPEvaluator", "annotation_masks"]

logger = logging.getLogger(__name__)

RESULTS_KEY = "segm_per_image"


def annotation_masks(record: Dict) -> tuple:
    """Ground-truth masks of a Detectron2 dataset dict.

    Returns:
        ((G, H, W) bool masks, (G,) int64 class ids); crowd annotations are skipped.
    """
    h, w = int(record["height"]), int(record["width"])
    masks, classes = [], []
    for ann in record.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        m = decode_mask(ann.get("segmentation"), h, w)
        if m is None:
            raise DatasetError(f"{record.get('file_name')}: annotation without a mask "
                             "(the per-image AP needs 'segmentation')")
        if m.shape != (h, w):
            raise DatasetError(f"{record.get('file_name')}: mask {m.shape} differs from the "
                             f"image size {(h, w)}")
        masks.append(m)
        classes.append(int(ann["category_id"]))
    if not masks:
        return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.int64)
    return np.stack(masks), np.asarray(classes, dtype=np.int64)


class PerImageAPEvaluator(DatasetEvaluator):
    """Per-image mask AP averaged over images (papers' protocol, one-to-one matching)."""

    def __init__(self, dataset_name: str, score_thresh: float = 0.75, distributed: bool = True,
                 output_dir: Optional[str] = None):
        """
        Args:
            dataset_name: a registered segmentation dataset (dicts with mask annotations).
            score_thresh: predictions below it are ignored (papers: 0.75).
            distributed: gather per-image results from all processes.
            output_dir: where ``per_image_ap.json`` goes (nothing written when ``None``).
        """
        self.dataset_name = dataset_name
        self.score_thresh = score_thresh
        self.distributed = distributed
        self.output_dir = output_dir
        self._gt = {d["image_id"]: d for d in DatasetCatalog.get(dataset_name)}
        self._results: List[Dict] = []

    def reset(self):
        self._results = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            record = self._gt.get(x["image_id"])
            if record is None:
                raise DatasetKeyError(f"{x.get('file_name')}: image_id {x['image_id']!r} is not in "
                               f"{self.dataset_name}")
            gt_masks, gt_classes = annotation_masks(record)
            inst = out["instances"].to("cpu")
            keep = inst.scores >= self.score_thresh
            pred_masks = inst.pred_masks[keep].numpy().astype(bool) \
                if inst.has("pred_masks") else np.zeros((0,) + gt_masks.shape[1:], dtype=bool)
            if pred_masks.shape[1:] != gt_masks.shape[1:]:
                raise DatasetError(f"{record.get('file_name')}: predicted masks "
                                 f"{pred_masks.shape[1:]} and ground truth "
                                 f"{gt_masks.shape[1:]} differ in size")
            ap = image_ap(pred_masks, inst.scores[keep].numpy(),
                          inst.pred_classes[keep].numpy(), gt_masks, gt_classes)
            self._results.append({"image_id": x["image_id"],
                                  "file_name": record.get("file_name", ""),
                                  "num_gt": int(len(gt_classes)), "num_pred": int(keep.sum()),
                                  "ap": ap.tolist()})

    def evaluate(self):
        results = gather_on_main(self._results, self.distributed)
        if results is None:  # not the main process
            return {}
        if not results:
            logger.warning("%s: no predictions for the per-image AP", self.dataset_name)
            return {}
        summary = summarize_per_image_ap(np.array([r["ap"] for r in results]), IOU_THRESHOLDS)
        res = OrderedDict(summary)
        logger.info(
            "Per-image mask AP on %s (%d images, score >= %.2f, papers' protocol):\n%s",
            self.dataset_name, len(results), self.score_thresh,
            tabulate([[res["AP"], res["AP50"], res["AP75"]]], headers=["AP", "AP50", "AP75"],
                     tablefmt="pipe", floatfmt=".3f"))
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            atomic_write_text(
                os.path.join(self.output_dir, "per_image_ap.json"),
                json.dumps({"dataset": self.dataset_name, "score_thresh": self.score_thresh,
                            "iou_thresholds": list(IOU_THRESHOLDS), "summary": res,
                            "images": results}, indent=1))
        return {RESULTS_KEY: res}
