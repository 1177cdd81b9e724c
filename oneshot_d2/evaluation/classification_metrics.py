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

__all__ = ["confusion_matrix", "roc_auc_binary", "classification_metrics",
           "expected_calibration_error", "brier_score", "choose_threshold", "thresholded_metrics",
           "ECE_BINS"]

# Equal-width confidence bins of the expected calibration error (Guo et al. 2017: 15).
ECE_BINS = 15


def _sklearn_metrics():
    """``sklearn.metrics``, imported on first use: importing scikit-learn (scipy.stats, sympy)
    takes about 1.3 s, which every process that imports the trainer would pay, spawned
    training and prediction workers included."""
    from sklearn import metrics

    return metrics


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class (``sklearn.metrics``)."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    for name, arr in (("label", labels), ("prediction", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes - 1}]: {sorted(set(arr.tolist()))}")
    if labels.size == 0:  # scikit-learn refuses empty inputs
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return _sklearn_metrics().confusion_matrix(labels, preds, labels=np.arange(num_classes)) \
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
    return float(_sklearn_metrics().roc_auc_score(is_positive, scores))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray,
                               num_bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017): the images binned by confidence (their
    highest probability) into ``num_bins`` equal-width bins of (0, 1]; the mean over images of
    |accuracy - mean confidence| of their bin. A fraction in [0, 1]; ``nan`` without images.

    Args:
        labels: (M,) true class ids.
        probs: (M, C) class probabilities.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # bin b holds confidences in (b / n, (b + 1) / n]; a confidence of 0 goes to the first bin
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(error / labels.size)


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Brier score (Brier 1950), multi-class form: the mean over images of the squared distance
    between the probability vector and the one-hot truth, sum_c (p_c - y_c)^2; 0 is perfect,
    2 the worst. (For two classes it is twice the binary form (p_positive - y)^2.) ``nan``
    without images."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold on the positive class's score that maximises the balanced accuracy (the
    mean of sensitivity and specificity, i.e. Youden's J) on these images; a score at or above
    it is called positive. Of the best interval of thresholds, its midpoint (the best split
    between two neighbouring scores). ``nan`` without positives or negatives.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values = np.unique(scores)  # candidate thresholds: each distinct score, and above the max
    candidates = np.append(values, np.inf)
    pos_sorted, neg_sorted = np.sort(scores[is_positive]), np.sort(scores[~is_positive])
    # sensitivity(t) = share of positives >= t; specificity(t) = share of negatives < t
    sens = 1.0 - np.searchsorted(pos_sorted, candidates, side="left") / n_pos
    spec = np.searchsorted(neg_sorted, candidates, side="left") / n_neg
    balanced = (sens + spec) / 2
    best = int(np.argmax(balanced))  # the first (lowest) of equal bests
    if best == 0:
        return float(values[0])
    if best == len(values):
        return float(np.nextafter(values[-1], np.inf))
    return float((values[best - 1] + values[best]) / 2)  # same split, midway between scores


def thresholded_metrics(is_positive: np.ndarray, scores: np.ndarray,
                        threshold: float) -> Dict[str, float]:
    """Binary metrics with "positive" = score >= ``threshold``, in percent: ``sensitivity``,
    ``specificity`` (the negatives' sensitivity), ``balanced_accuracy`` (their mean),
    ``accuracy``; ``nan`` where undefined."""
    is_positive = np.asarray(is_positive, dtype=bool)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    sens = _ratio((called & is_positive).sum(), is_positive.sum())
    spec = _ratio((~called & ~is_positive).sum(), (~is_positive).sum())
    return OrderedDict([("sensitivity", 100.0 * sens), ("specificity", 100.0 * spec),
                        ("balanced_accuracy", 100.0 * _nanmean([sens, spec])
                         if not (np.isnan(sens) or np.isnan(spec)) else float("nan")),
                        ("accuracy", 100.0 * _ratio((called == is_positive).sum(),
                                                    is_positive.size))])


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
        Ordered dict: ``accuracy``, ``balanced_accuracy`` (the mean of the classes'
        sensitivities), ``macro_f1``, ``weighted_f1``, ``macro_auc``, the calibration of the
        probabilities: ``ece`` (expected calibration error, percent), ``brier`` (multi-class
        Brier score, not in percent), ``nll`` (mean negative log-likelihood, nats) and, per
        class ``name``, ``sensitivity/name``, ``precision/name``, ``specificity/name``,
        ``f1/name``, ``auc/name``; plus non-metric entries ``confusion_matrix`` (list of rows),
        ``support`` (per class), ``absent_classes`` (names with no image in the split),
        ``num_images``.
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
    res["balanced_accuracy"] = 100.0 * _nanmean([m["sensitivity"] for m in per_class.values()])
    res["macro_f1"] = 100.0 * _nanmean(f1s.tolist())
    res["weighted_f1"] = 100.0 * weighted_f1
    res["macro_auc"] = 100.0 * _nanmean([m["auc"] for m in per_class.values()])
    res["ece"] = 100.0 * expected_calibration_error(labels, probs)
    res["brier"] = brier_score(labels, probs)
    res["nll"] = (float(-np.log(np.clip(probs[np.arange(labels.size), labels], 1e-12, None))
                        .mean()) if labels.size else float("nan"))
    for metric in ("sensitivity", "precision", "specificity", "f1", "auc"):
        for name, m in per_class.items():
            res[f"{metric}/{name}"] = 100.0 * m[metric]
    res["confusion_matrix"] = cm.tolist()
    res["support"] = {name: int(support[c]) for c, name in enumerate(class_names)}
    res["f1_weights"] = {name: float(weights[c]) for c, name in enumerate(class_names)}
    res["absent_classes"] = [name for c, name in enumerate(class_names) if support[c] == 0]
    res["num_images"] = total
    return res
