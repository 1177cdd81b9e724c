"""``ClassificationEvaluator``: slice-classification metrics of the one-shot model."""
from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

__all__ = ["ClassificationEvaluator", "confusion_matrix"]

logger = logging.getLogger(__name__)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


class ClassificationEvaluator(DatasetEvaluator):
    """Accuracy, per-class sensitivity TP / (TP + FN) and the confusion matrix of the
    ``image_cls`` outputs against the dataset's ``image_label``; results under the
    ``classification`` key (distributed-safe: gathered on rank 0)."""

    def __init__(self, dataset_name: str, distributed: bool = True,
                 output_dir: Optional[str] = None):
        meta = MetadataCatalog.get(dataset_name)
        self.class_names: List[str] = list(meta.image_classes)
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self._records: List[Dict] = []

    def reset(self):
        self._records = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            if "image_label" not in x:
                raise KeyError(f"{x.get('file_name')}: no image_label in a classification set")
            self._records.append({"image_id": x.get("image_id"), "label": int(x["image_label"]),
                                  "probs": out["image_cls"].detach().cpu().float().numpy()})

    def evaluate(self):
        records = self._records
        if self.distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return {}
        if not records:
            logger.warning("%s: no predictions to evaluate", self.dataset_name)
            return {}
        num_classes = len(self.class_names)
        labels = np.array([r["label"] for r in records])
        preds = np.array([int(np.argmax(r["probs"])) for r in records])
        cm = confusion_matrix(labels, preds, num_classes)
        res = OrderedDict(accuracy=100.0 * float(np.trace(cm)) / max(1, cm.sum()))
        for c, name in enumerate(self.class_names):
            support = cm[c].sum()
            res[f"sensitivity/{name}"] = 100.0 * cm[c, c] / support if support else float("nan")
        table = tabulate([[name] + cm[c].tolist() for c, name in enumerate(self.class_names)],
                         headers=["true \\ predicted"] + self.class_names, tablefmt="pipe")
        logger.info("Slice classification on %s (%d images): accuracy %.2f %%\n%s",
                    self.dataset_name, len(records), res["accuracy"], table)
        return {"classification": res}
