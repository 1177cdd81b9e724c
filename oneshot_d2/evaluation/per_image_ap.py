"""Per-image mask AP, the papers' segmentation protocol (Ter-Sarkisov 2021), as pure functions.

For every test image and IoU threshold t in 0.50:0.05:0.95: predictions with score >= the
score threshold (papers: 0.75) are sorted by score; each is a true positive when it matches a
not-yet-matched ground-truth mask of the same class with IoU > t (strict, as in the original
code); precision / recall along the ranking give the VOC all-point interpolated AP. Images
without ground truth score 1 with no detection and 0 otherwise; images with ground truth and no
detection score 0. AP@t is the mean over **all** images, mAP the mean over the thresholds.

One deliberate fix: the original matched ground-truth-first and let one prediction match
several ground-truth masks (each counted as a true positive). Here matching is one-to-one and
prediction-first in score order (each prediction takes the unmatched ground truth with the
highest IoU), as in COCO and VOC. The fix can only lower AP.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["IOU_THRESHOLDS", "mask_iou", "match_predictions", "voc_ap", "image_ap",
           "summarize_per_image_ap"]

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


def mask_iou(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """IoU matrix of binary masks.

    Args:
        pred_masks: (P, H, W) bool. gt_masks: (G, H, W) bool.
    Returns:
        (P, G) float64; 0 where both masks are empty (the original divided by zero).
    """
    p = pred_masks.reshape(len(pred_masks), -1).astype(np.float64)
    g = gt_masks.reshape(len(gt_masks), -1).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_predictions(ious: np.ndarray, pred_classes: np.ndarray, gt_classes: np.ndarray,
                      thresh: float) -> np.ndarray:
    """One-to-one matching of score-sorted predictions to ground truth.

    Args:
        ious: (P, G) IoU, rows in descending score order.
        pred_classes: (P,) and gt_classes: (G,) class ids.
        thresh: a match needs IoU > thresh.
    Returns:
        (P,) bool: true positive flags.
    """
    tp = np.zeros(ious.shape[0], dtype=bool)
    taken = np.zeros(ious.shape[1], dtype=bool)
    for i in range(ious.shape[0]):
        ok = (~taken) & (gt_classes == pred_classes[i]) & (ious[i] > thresh)
        if ok.any():
            j = int(np.argmax(np.where(ok, ious[i], -1.0)))
            taken[j] = True
            tp[i] = True
    return tp


def voc_ap(tp: np.ndarray, num_gt: int) -> float:
    """VOC all-point interpolated AP of a ranked list of true-positive flags."""
    if num_gt == 0:
        raise ValueError("voc_ap needs at least one ground truth")
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, len(tp) + 1)
    recall = cum_tp / num_gt
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone non-increasing envelope
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def image_ap(pred_masks: np.ndarray, pred_scores: np.ndarray, pred_classes: np.ndarray,
             gt_masks: np.ndarray, gt_classes: np.ndarray,
             thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """AP of one image at each IoU threshold (papers' rules for empty cases).

    Args:
        pred_masks: (P, H, W) bool, pred_scores: (P,), pred_classes: (P,) -- already filtered by
            the score threshold.
        gt_masks: (G, H, W) bool, gt_classes: (G,).
    Returns:
        (T,) AP per threshold.
    """
    num_pred, num_gt = len(pred_scores), len(gt_classes)
    if num_gt == 0:
        return np.full(len(thresholds), 1.0 if num_pred == 0 else 0.0)
    if num_pred == 0:
        return np.zeros(len(thresholds))
    order = np.argsort(-np.asarray(pred_scores), kind="stable")
    ious = mask_iou(pred_masks[order], gt_masks)
    classes = np.asarray(pred_classes)[order]
    return np.array([voc_ap(match_predictions(ious, classes, np.asarray(gt_classes), t), num_gt)
                     for t in thresholds])


def summarize_per_image_ap(per_image: np.ndarray,
                           thresholds: Sequence[float] = IOU_THRESHOLDS) -> Dict[str, float]:
    """(M, T) per-image APs -> percent ``AP`` (mean over thresholds), ``AP50``, ``AP75`` and
    ``AP@t`` for each threshold; means over all M images."""
    per_t = per_image.mean(axis=0) if len(per_image) else np.full(len(thresholds), np.nan)
    res = {"AP": 100.0 * float(per_t.mean())}
    for t, v in zip(thresholds, per_t):
        if np.isclose(t, 0.5):
            res["AP50"] = 100.0 * float(v)
        if np.isclose(t, 0.75):
            res["AP75"] = 100.0 * float(v)
    for t, v in zip(thresholds, per_t):
        res[f"AP@{t:.2f}"] = 100.0 * float(v)
    return res
