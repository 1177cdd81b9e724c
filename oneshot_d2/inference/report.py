"""From slice predictions to a study's report: lesion label maps, per-slice rows, the patient-level
result (``PREDICT.PATIENT_RULE``) and the lesion burden (mL, % of lung).

Pure functions on NumPy arrays, so the arithmetic is tested on ground truth (phantom masks).
"""
from __future__ import annotations

import math
import re
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..config import PATIENT_RULES
from ..errors import ConfigError
from .lung_mask import lung_sides

__all__ = ["PATIENT_RULES", "NEGATIVE_NAMES", "lesion_label_map", "negative_class_index",
           "patient_result", "lesion_burden", "voxel_volume_ml", "slice_row"]

# Class names taken as the negative ("no disease") class when PREDICT.NEGATIVE_CLASS is "":
# compared lower-case with everything but letters removed.
NEGATIVE_NAMES = ("normal", "noncovid", "negative", "healthy", "nonpneumonia")


def lesion_label_map(masks: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                     score_thresh: float) -> np.ndarray:
    """One slice's lesion label map from its instances.

    Args:
        masks: (n, H, W) bool instance masks.
        classes: (n,) lesion class ids (0-based).
        scores: (n,) detection scores.
        score_thresh: instances scoring below it are left out.
    Returns:
        (H, W) uint8: 0 background, ``k + 1`` for lesion class ``k``; where instances overlap,
        the highest-scoring one's class.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (n, H, W), got shape {masks.shape}")
    labels = np.zeros(masks.shape[1:], np.uint8)
    for i in np.argsort(scores, kind="stable"):  # ascending: the best is painted last
        if scores[i] >= score_thresh:
            labels[masks[i]] = int(classes[i]) + 1
    return labels


def negative_class_index(class_names: Sequence[str], negative: str = "") -> Optional[int]:
    """Index of the negative class: ``negative`` when given (it must be a class name), else the
    first class named like :data:`NEGATIVE_NAMES`; ``None`` when there is none."""
    if negative:
        if negative not in class_names:
            raise ConfigError(f"PREDICT.NEGATIVE_CLASS: {negative!r} is not one of the model's "
                              f"classes {list(class_names)}")
        return list(class_names).index(negative)
    for i, name in enumerate(class_names):
        if re.sub(r"[^a-z]", "", name.lower()) in NEGATIVE_NAMES:
            return i
    return None


def patient_result(probs: np.ndarray, class_names: Sequence[str], rule: str = "top_k_mean",
                   top_k: int = 5, thresh: float = 0.5, min_fraction: float = 0.1,
                   negative: str = "", top_k_mm: float = 0.0,
                   slice_spacing: Optional[float] = None) -> Dict:
    """The study's result from its slices' class probabilities (``PREDICT.PATIENT_*``).

    Args:
        probs: (N, C) slice class probabilities, N >= 1.
        class_names: the C class names.
        rule: ``top_k_mean`` (each class: mean of its ``top_k`` highest slice probabilities;
            positive when the best non-negative class reaches ``thresh``) or ``fraction``
            (each class: fraction of slices predicted as it; positive when the best
            non-negative class reaches ``min_fraction``).
        negative: name of the negative class, "" = found by name (:func:`negative_class_index`).
        top_k_mm / slice_spacing: with ``top_k_mm > 0`` and a known slice spacing (mm), k is
            ``round(top_k_mm / slice_spacing)`` slices (at least 1) instead of ``top_k``.
    Returns:
        dict with ``class`` (name), ``class_id``, ``rule``, ``scores`` (per class name) and the
        rule's parameters. Without a negative class the result is the top-scoring class.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must be (N >= 1, {len(class_names)}), got {probs.shape}")
    n, num_classes = probs.shape
    if rule == "top_k_mean":
        if top_k < 1:
            raise ConfigError(f"PREDICT.PATIENT_TOP_K must be >= 1, got {top_k}")
        if top_k_mm < 0:
            raise ConfigError(f"PREDICT.PATIENT_TOP_K_MM must be >= 0, got {top_k_mm}")
        by_mm = top_k_mm > 0 and slice_spacing is not None and slice_spacing > 0
        # halves round up (Python's round() would make 12.5 mm / 5 mm 2 slices, 17.5 mm 4)
        k = min(max(1, int(math.floor(top_k_mm / slice_spacing + 0.5))) if by_mm else top_k, n)
        scores = np.sort(probs, axis=0)[n - k:].mean(axis=0)
        bar, params = thresh, {"top_k": k, "thresh": thresh}
        if top_k_mm > 0:
            params["top_k_mm"] = top_k_mm if by_mm else None  # None: no slice spacing
    elif rule == "fraction":
        counts = np.bincount(probs.argmax(axis=1), minlength=num_classes)
        scores = counts / n
        bar, params = min_fraction, {"min_fraction": min_fraction}
    else:
        raise ConfigError(f"PREDICT.PATIENT_RULE must be one of {PATIENT_RULES}, got {rule!r}")
    neg = negative_class_index(class_names, negative)
    if neg is None:
        best = int(np.argmax(scores))
    else:
        positive = [c for c in range(num_classes) if c != neg]
        best = max(positive, key=lambda c: scores[c]) if positive else neg
        if scores[best] < bar:
            best = neg
    return {"class": class_names[best], "class_id": best, "rule": rule, **params,
            "negative_class": None if neg is None else class_names[neg],
            "scores": {name: float(s) for name, s in zip(class_names, scores)}}


def voxel_volume_ml(spacing: Tuple[float, float, float]) -> float:
    """Volume of one voxel in mL of a (row, column, slice) spacing in mm."""
    return float(spacing[0]) * float(spacing[1]) * float(spacing[2]) / 1000.0


def lesion_burden(labels: np.ndarray, lesion_classes: Sequence[str],
                  spacing: Optional[Tuple[float, float, float]],
                  lung: Optional[np.ndarray] = None) -> Dict:
    """Lesion volume per class and in all, and as a percentage of the lung.

    Args:
        labels: (N, H, W) uint8 lesion label volume (0 background, ``k + 1`` class ``k``).
        lesion_classes: names of the lesion classes.
        spacing: (row, column, slice) spacing in mm; ``None``: volumes in voxels only.
        lung: (N, H, W) bool lung mask (HU inputs) or ``None``. The lung is the mask **plus**
            the lesion voxels (dense lesions at the pleura fall outside an air threshold).
    Returns:
        dict: ``voxels`` per class and ``total``; with spacing ``ml`` likewise and
        ``voxel_ml``; with a lung mask ``lung_voxels``, ``lung_ml`` and ``percent_of_lung``
        per class and ``total``, and ``per_lung``: the same for the ``right`` and the ``left``
        lung (:func:`~.lung_mask.lung_sides`; a lesion voxel outside both lungs' masks goes
        to the side of the midline between them), or ``None`` when the mask is not two lungs.
    """
    out = _volumes(labels, lesion_classes, spacing, lung)
    if lung is not None:
        out["per_lung"] = _per_lung(labels, lesion_classes, lung, spacing)
    return out


def _volumes(labels: np.ndarray, lesion_classes: Sequence[str],
             spacing: Optional[Tuple[float, float, float]],
             lung: Optional[np.ndarray]) -> Dict:
    """:func:`lesion_burden` without ``per_lung``."""
    top = int(labels.max()) if labels.size else 0
    if top > len(lesion_classes):
        raise ValueError(f"label {top} but only {len(lesion_classes)} lesion classes")
    # a count per class (np.bincount would first copy a study's labels to int64)
    counts = np.array([0] + [np.count_nonzero(labels == k + 1)
                             for k in range(len(lesion_classes))], np.int64)
    voxels = {name: int(counts[k + 1]) for k, name in enumerate(lesion_classes)}
    voxels["total"] = int(counts[1:].sum())
    out: Dict = {"voxels": voxels}
    unit = voxel_volume_ml(spacing) if spacing is not None else None
    if unit is not None:
        out["voxel_ml"] = unit
        out["ml"] = {k: v * unit for k, v in voxels.items()}
    if lung is not None:
        if lung.shape != labels.shape:
            raise ValueError(f"lung mask {lung.shape} and labels {labels.shape} differ")
        lung_voxels = int(np.count_nonzero(lung | (labels > 0)))
        out["lung_voxels"] = lung_voxels
        if unit is not None:
            out["lung_ml"] = lung_voxels * unit
        out["percent_of_lung"] = {
            k: (100.0 * v / lung_voxels if lung_voxels else math.nan) for k, v in voxels.items()}
    return out


def _per_lung(labels: np.ndarray, lesion_classes: Sequence[str], lung: np.ndarray,
              spacing: Optional[Tuple[float, float, float]]) -> Optional[Dict]:
    """The burden of the right and the left lung (:func:`lesion_burden`)."""
    sides = lung_sides(lung)
    if sides is None:
        return None
    right, left, midline = sides
    outside = (labels > 0) & ~right & ~left
    columns = np.arange(labels.shape[2])[None, None, :]
    out = {}
    for name, mask, side_of_midline in (("right", right, columns < midline),
                                        ("left", left, columns >= midline)):
        side_labels = np.where(mask | (outside & side_of_midline), labels, 0)
        side = _volumes(side_labels, lesion_classes, spacing, mask)
        side.pop("voxel_ml", None)
        out[name] = side
    return out


def slice_row(study: str, index: int, label: str, position: Optional[float],
              probs: Optional[np.ndarray], class_names: Sequence[str], labels: np.ndarray,
              lesion_counts: Sequence[int], lesion_classes: Sequence[str],
              pixel_area_mm2: Optional[float]) -> Dict:
    """One row of ``slices.csv``.

    Args:
        study / index / label / position: the study's name, the slice's index in display order,
            its source label (file name or "slice k") and position along the body axis (mm).
        probs: (C,) class probabilities or ``None`` (a model without a slice classifier).
        labels: (H, W) lesion label map of the slice.
        lesion_counts: number of lesions (instances kept) per lesion class.
        pixel_area_mm2: area of one pixel, ``None`` when the spacing is unknown.
    """
    row: Dict = {"study": study, "slice_index": index, "slice": label,
                 "position_mm": "" if position is None else round(float(position), 3)}
    if probs is not None:
        for name, p in zip(class_names, probs):
            row[f"prob_{name}"] = round(float(p), 6)
        row["predicted_class"] = class_names[int(np.argmax(probs))]
    areas = np.bincount(labels.ravel(), minlength=len(lesion_classes) + 1)
    for k, name in enumerate(lesion_classes):
        row[f"lesions_{name}"] = int(lesion_counts[k])
        row[f"area_px_{name}"] = int(areas[k + 1])
        row[f"area_mm2_{name}"] = ("" if pixel_area_mm2 is None
                                   else round(float(areas[k + 1]) * pixel_area_mm2, 3))
    return row
