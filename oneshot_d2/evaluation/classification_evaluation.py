"""``ClassificationEvaluator``: slice-classification metrics of the one-shot model.

Writes, in its output directory: ``classification_metrics.json`` (every metric, the confusion
matrix, supports, F1 weights, absent classes), ``classification_predictions.csv`` (one row per
image: id, file, true and predicted class, probabilities) and ``confusion_matrix.png``. Every
file is written to a temporary name first, then renamed.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from ..errors import DatasetKeyError
from ..utils.file_io import atomic_write_bytes
from ._gather import gather_on_main
from .classification_metrics import choose_threshold, classification_metrics, thresholded_metrics

__all__ = ["ClassificationEvaluator"]

logger = logging.getLogger(__name__)

METRICS_FILE = "classification_metrics.json"
PREDICTIONS_FILE = "classification_predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"
_PER_CLASS = ("sensitivity", "precision", "specificity", "f1", "auc")
_SUMMARY = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc", "ece",
            "brier")
# Binary sets: the positive class is index 1 (every registered 2-class set: 0 Normal /
# NonCOVID, 1 COVID).
POSITIVE_CLASS = 1
CHOSEN_THRESHOLD = "chosen_threshold"


class ClassificationEvaluator(DatasetEvaluator):
    """Slice classification of the ``image_cls`` outputs against the dataset's ``image_label``.

    Results (``{"classification": {...}}``, percent) hold only scalar metrics, so that
    Detectron2's printing and ``verify_results`` handle them: accuracy, balanced accuracy, macro
    F1, the papers' weighted F1, macro one-vs-rest ROC-AUC, the calibration (expected
    calibration error, Brier score, NLL) and, per class, sensitivity, precision, specificity, F1
    and AUC (``nan`` for an undefined value, e.g. a class absent from the split). The full
    report (confusion matrix, supports, absent classes) is logged and written to JSON.
    Distributed-safe: predictions are gathered on rank 0.

    Two-class sets also get an operating point on the positive class's probability (class 1):
    with ``choose_threshold``, the threshold that maximises the balanced accuracy on this set
    (``chosen_threshold``); with ``threshold`` (e.g. the one chosen on the training split), the
    metrics at it: ``threshold``, ``thresholded/balanced_accuracy``, ``thresholded/accuracy``,
    ``thresholded/sensitivity/<class>`` for both classes.
    """

    def __init__(self, dataset_name: str, distributed: bool = True,
                 output_dir: Optional[str] = None,
                 f1_weights: Optional[Sequence[float]] = None,
                 threshold: Optional[float] = None, choose_threshold: bool = False):
        """
        Args:
            dataset_name: a registered classification dataset (metadata ``image_classes``).
            distributed: gather predictions from all processes.
            output_dir: where the JSON / CSV / PNG go (nothing written when ``None``).
            f1_weights: class weights of the weighted F1; ``None``: the split's class shares.
            threshold: two classes only: report the metrics at this threshold on the positive
                class's probability.
            choose_threshold: two classes only: report the threshold that maximises the
                balanced accuracy on this set (``chosen_threshold``).
        """
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("image_classes", None):
            raise DatasetKeyError(f"dataset {dataset_name!r} has no 'image_classes' metadata: "
                                  "register it with register_covidx_cls / register_csv_cls")
        self.class_names: List[str] = list(meta.image_classes)
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.f1_weights = list(f1_weights) if f1_weights else None
        if (threshold is not None or choose_threshold) and len(self.class_names) != 2:
            raise ValueError(f"dataset {dataset_name!r}: an operating threshold needs 2 classes, "
                             f"it has {len(self.class_names)}")
        self.threshold = threshold
        self.choose_threshold = choose_threshold
        self._records: List[Dict] = []

    def reset(self):
        self._records = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            if "image_label" not in x:
                raise DatasetKeyError(
                    f"{x.get('file_name')}: no image_label in a classification set")
            self._records.append({"image_id": x.get("image_id"),
                                  "file_name": x.get("file_name", ""),
                                  "label": int(x["image_label"]),
                                  "probs": out["image_cls"].detach().cpu().float().numpy()})

    def evaluate(self):
        records = gather_on_main(self._records, self.distributed)
        if records is None:  # not the main process
            return {}
        if not records:
            logger.warning("%s: no predictions to evaluate", self.dataset_name)
            return {}
        labels = np.array([r["label"] for r in records])
        probs = np.stack([r["probs"] for r in records])
        report = classification_metrics(labels, probs, self.class_names, self.f1_weights)
        report.update(self._operating_point(labels, probs))
        self._log(report)
        if self.output_dir:
            self._write(report, records, probs)
        scalars = OrderedDict((k, v) for k, v in report.items() if isinstance(v, float))
        return {"classification": scalars}

    def _operating_point(self, labels: np.ndarray, probs: np.ndarray) -> Dict[str, float]:
        """``chosen_threshold`` and the ``thresholded/...`` metrics (class docstring)."""
        out: Dict[str, float] = OrderedDict()
        if len(self.class_names) != 2:
            return out
        positive, scores = labels == POSITIVE_CLASS, probs[:, POSITIVE_CLASS]
        if self.choose_threshold:
            out[CHOSEN_THRESHOLD] = choose_threshold(positive, scores)
        if self.threshold is not None:
            at = thresholded_metrics(positive, scores, self.threshold)
            neg, pos = self.class_names[1 - POSITIVE_CLASS], self.class_names[POSITIVE_CLASS]
            out["threshold"] = float(self.threshold)
            out["thresholded/balanced_accuracy"] = at["balanced_accuracy"]
            out["thresholded/accuracy"] = at["accuracy"]
            out[f"thresholded/sensitivity/{pos}"] = at["sensitivity"]
            out[f"thresholded/sensitivity/{neg}"] = at["specificity"]
        return out

    # ----------------------------------------------------------------------------------------
    def _log(self, report: Dict) -> None:
        names = self.class_names
        per_class = tabulate(
            [[name, report["support"][name]] + [report[f"{m}/{name}"] for m in _PER_CLASS]
             for name in names],
            headers=["class", "images"] + list(_PER_CLASS), tablefmt="pipe", floatfmt=".2f")
        cm = tabulate([[name] + row for name, row in zip(names, report["confusion_matrix"])],
                      headers=["true \\ predicted"] + names, tablefmt="pipe")
        summary = ", ".join(f"{k} {report[k]:.2f}" for k in _SUMMARY)
        absent = (f"\nclasses absent from {self.dataset_name} (their metrics are nan): "
                  f"{', '.join(report['absent_classes'])}" if report["absent_classes"] else "")
        operating = ", ".join(f"{k} {v:.4g}" for k, v in report.items()
                              if k == CHOSEN_THRESHOLD or k == "threshold"
                              or k.startswith("thresholded/"))
        logger.info("Slice classification on %s (%d images): %s\n%s\n%s%s%s", self.dataset_name,
                    report["num_images"], summary, per_class, cm, absent,
                    f"\noperating point: {operating}" if operating else "")

    def _write(self, report: Dict, records: List[Dict], probs: np.ndarray) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in report.items()}  # JSON has no NaN
        clean["dataset"] = self.dataset_name
        clean["class_names"] = self.class_names
        atomic_write_bytes(os.path.join(self.output_dir, METRICS_FILE),
                           json.dumps(clean, indent=2).encode())

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["image_id", "file_name", "label", "prediction"]
                        + [f"prob_{n}" for n in self.class_names])
        for r, p in zip(records, probs):
            writer.writerow([r["image_id"], r["file_name"], self.class_names[r["label"]],
                             self.class_names[int(np.argmax(p))]] + [f"{v:.6f}" for v in p])
        atomic_write_bytes(os.path.join(self.output_dir, PREDICTIONS_FILE),
                           buf.getvalue().encode())
        atomic_write_bytes(os.path.join(self.output_dir, CONFUSION_FILE),
                           confusion_matrix_png(np.array(report["confusion_matrix"]),
                                                self.class_names, self.dataset_name))


def confusion_matrix_png(cm: np.ndarray, class_names: List[str], title: str) -> bytes:
    """PNG bytes of a confusion-matrix plot (counts and row percentages)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.1 * len(class_names), 1.2 + 1.0 * len(class_names)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
