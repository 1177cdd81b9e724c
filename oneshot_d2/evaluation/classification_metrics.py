"""Slice-classification metrics as pure functions of labels and class probabilities.

Undefined values (a class absent from the evaluated split, or never predicted) are ``nan``,
never an exception; averages skip them and the evaluator reports which classes were absent.
The papers' "class-adjusted" F1 is the weighted mean of per-class F1 with weights w(c) = the
class's share of the evaluated split (affinity paper eq. 14), or weights given by the user.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn import metrics as _sk_metrics

__all__ = ["confusion_matrix", "roc_auc_binary", "classification_metrics"]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class (``sklearn.metrics``)."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    for name, arr in (("label", labels), ("prediction", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes - 1}]: {sorted(set(arr.tolist()))}")
    if labels.size == 0:  # scikit-learn refuses empty inputs
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return _sk_metrics.confusion_matrix(labels, preds, labels=np.arange(num_classes)) \
        .astype(np.int64)


def roc_auc_binary(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``) = P(score of a positive >
    score of a negative), ties counting one half; ``nan`` without positives or negatives (a class
    absent from the split, or the only one) or with non-finite scores, never an exception."""
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(is_positive.sum())
    if n_pos == 0 or n_pos == is_positive.size or not np.isfinite(scores).all():
        return float("nan")
    return float(_sk_metrics.roc_auc_score(is_positive, scores))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: List[str],
                           f1_weights: Optional[Sequence[float]] = None) -> Dict:
    """All slice-classification metrics, in percent (AUC as a fraction x 100 too).

    Args:
        labels: (M,) true class ids in [0, C).
        probs: (M, C) class probabilities (or any scores; argmax is the prediction).
        class_names: C names, used in the metric keys.
        f1_weights: C weights of the weighted F1 (normalised to sum 1); ``None``: the classes'
            shares of ``labels`` (the papers' definition).
    Returns:
        Ordered dict: ``accuracy``, ``macro_f1``, ``weighted_f1``, ``macro_auc`` and, per class
        ``name``, ``sensitivity/name``, ``precision/name``, ``specificity/name``, ``f1/name``,
        ``auc/name``; plus non-metric entries ``confusion_matrix`` (list of rows), ``support``
        (per class), ``absent_classes`` (names with no image in the split), ``num_images``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape != (labels.size, num_classes):
        raise ValueError(f"probs must be ({labels.size}, {num_classes}), got {probs.shape}")
    preds = probs.argmax(axis=1) if labels.size else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(labels, preds, num_classes)
    total = int(cm.sum())
    support = cm.sum(axis=1)
    if f1_weights is None:
        weights = support / total if total else np.full(num_classes, float("nan"))
    else:
        weights = np.asarray(f1_weights, dtype=np.float64)
        if weights.shape != (num_classes,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"F1 weights must be {num_classes} non-negative numbers with a "
                             f"positive sum, got {list(f1_weights)}")
        weights = weights / weights.sum()

    per_class = OrderedDict()
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        fn = support[c] - tp
        fp = cm[:, c].sum() - tp
        tn = total - tp - fn - fp
        sens = _ratio(tp, tp + fn)
        prec = _ratio(tp, tp + fp)
        if np.isnan(sens) and np.isnan(prec):
            f1 = float("nan")  # absent and never predicted: nothing to score
        else:
            f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        per_class[name] = dict(sensitivity=sens, precision=prec, specificity=_ratio(tn, tn + fp),
                               f1=f1, auc=roc_auc_binary(labels == c, probs[:, c]))

    f1s = np.array([m["f1"] for m in per_class.values()])
    used = ~np.isnan(f1s) & (weights > 0)
    weighted_f1 = float((weights[used] * f1s[used]).sum() / weights[used].sum()) \
        if used.any() else float("nan")
    res = OrderedDict()
    res["accuracy"] = 100.0 * _ratio(np.trace(cm), total)
    res["macro_f1"] = 100.0 * _nanmean(f1s.tolist())
    res["weighted_f1"] = 100.0 * weighted_f1
    res["macro_auc"] = 100.0 * _nanmean([m["auc"] for m in per_class.values()])
    for metric in ("sensitivity", "precision", "specificity", "f1", "auc"):
        for name, m in per_class.items():
            res[f"{metric}/{name}"] = 100.0 * m[metric]
    res["confusion_matrix"] = cm.tolist()
    res["support"] = {name: int(support[c]) for c, name in enumerate(class_names)}
    res["f1_weights"] = {name: float(weights[c]) for c, name in enumerate(class_names)}
    res["absent_classes"] = [name for c, name in enumerate(class_names) if support[c] == 0]
    res["num_images"] = total
    return res
