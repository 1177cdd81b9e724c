"""One study through the predictor: windowing, batched prediction, lesion label volume, per-slice
rows, patient-level result, lesion burden and the report dictionary."""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
from detectron2.config import CfgNode

from ..data.transforms import lung_window
from ..version import __version__
from .field_of_view import scale_check
from .lesions3d import lesions_3d
from .lung_mask import lung_mask
from .predictor import SlicePrediction, SlicePredictor
from .report import lesion_burden, lesion_label_map, patient_result, slice_row
from .study import Study

__all__ = ["StudyPrediction", "model_slices", "predict_study", "study_report", "REPORT_TOOL"]

REPORT_TOOL = "oneshot_d2 tools/predict.py"


def model_slices(study: Study, hu_window) -> np.ndarray:
    """The study's slices as the model's 8-bit input: Hounsfield units through the training
    window (``INPUT.HU_WINDOW`` = (width, level)); 8-bit slices as they are.

    Returns:
        (N, H, W) uint8.
    """
    if study.is_hu:
        width, level = (float(v) for v in hu_window)
        return lung_window(study.pixels, width=width, level=level)
    return np.asarray(study.pixels, dtype=np.uint8)


EXPLANATION_KEYS = ("roi_weights", "attention_pos")  # affinity head, LSTM head


def _explanation_weights(pred: SlicePrediction) -> Optional[np.ndarray]:
    """The image head's weight of each RoI of the batch (affinity ``roi_weights``, LSTM
    ``attention_pos``), or ``None``."""
    expl = pred.get("image_cls_explanation") or {}
    for key in EXPLANATION_KEYS:
        if key in expl:
            return np.asarray(expl[key], dtype=np.float32).reshape(-1)
    return None


def explanation_report(pred: "StudyPrediction", image_head: str) -> Optional[Dict]:
    """``report.json``'s ``explanation``: per slice, the RoI batch the slice classifier read
    (boxes ``[x0, y0, x1, y1]`` in the slice's pixels, display orientation) and the head's
    weight of each box (the affinity head's RoI weights or the LSTM's attention); ``None``
    for a model without a slice classifier."""
    if not pred.roi_boxes or all(b is None for b in pred.roi_boxes):
        return None
    weights = ("affinity roi_weights" if image_head == "AffinityHead"
               else "lstm attention_pos" if image_head.startswith("LSTM") else image_head)
    return {"weights": weights, "slices": [
        {"boxes": None if b is None else np.round(np.asarray(b, np.float64), 2).tolist(),
         "weights": None if w is None else np.round(np.asarray(w, np.float64), 6).tolist()}
        for b, w in zip(pred.roi_boxes, pred.roi_weights)]}


@dataclass
class StudyPrediction:
    """A study's predictions.

    Attributes:
        study: the input study.
        images: (N, H, W) uint8 slices the model saw (before its own resize).
        probs: (N, C) slice class probabilities, ``None`` for a model without slice classes.
        labels: (N, H, W) uint8 lesion label volume (0 background, ``k + 1`` class ``k``).
        lesion_counts: (N, K) lesions kept per slice and lesion class.
        roi_boxes / roi_weights: per slice, the RoI batch (beta, 4) and the head's weight of
            each RoI (beta,) (``None`` when the model has no RoI batch).
        lung: (N, H, W) bool classical lung mask (HU inputs), else ``None``.
        seconds: wall time per stage.
        scale: the study's scale at the model against the training's
            (:func:`.field_of_view.scale_check`), ``report.json``'s ``geometry.model_scale``.
    """

    study: Study
    images: np.ndarray
    probs: Optional[np.ndarray]
    labels: np.ndarray
    lesion_counts: np.ndarray
    roi_boxes: List[Optional[np.ndarray]] = field(default_factory=list)
    roi_weights: List[Optional[np.ndarray]] = field(default_factory=list)
    lung: Optional[np.ndarray] = None
    seconds: Dict[str, float] = field(default_factory=dict)
    scale: Dict = field(default_factory=dict)


def predict_study(predictor: SlicePredictor, study: Study,
                  progress: Optional[Callable[[int], None]] = None) -> StudyPrediction:
    """Run ``predictor`` over every slice of ``study``.

    Args:
        predictor: the model (its config's ``INPUT.HU_WINDOW``, ``PREDICT.*`` apply).
        study: slices in display orientation.
        progress: called with 1 after each slice (e.g. ``tqdm.update``).
    """
    cfg = predictor.cfg
    t0 = time.perf_counter()
    images = model_slices(study, cfg.INPUT.HU_WINDOW)
    n, height, width = images.shape
    pixel_known = not study.meta.get("pixel_spacing_assumed", False)  # not a guessed 1 mm
    scale, view = scale_check(cfg, (height, width), study.spacing if pixel_known else None)
    if view is not None:  # the training's field of view: air where the slice had none
        air = int(lung_window(np.array([[-1000.0]]), *map(float, cfg.INPUT.HU_WINDOW))[0, 0]) \
            if study.is_hu else 0
        # slice by slice: a padded volume would hold the whole study again, larger
        model_images = (view.to_model(images[k:k + 1], air)[0] for k in range(n))
    else:
        model_images = images
    num_lesion = len(predictor.lesion_classes)
    labels = np.zeros((n, height, width), np.uint8)
    counts = np.zeros((n, num_lesion), np.int64)
    probs: List[np.ndarray] = []
    boxes: List[Optional[np.ndarray]] = []
    weights: List[Optional[np.ndarray]] = []
    thresh = cfg.PREDICT.LESION_SCORE_THRESH
    t1 = time.perf_counter()
    for i, pred in enumerate(predictor.predict(model_images)):
        if "image_cls" in pred:
            probs.append(pred["image_cls"])
        inst = pred.get("instances")
        if inst is not None and len(inst) and inst.has("pred_masks"):
            scores = inst.scores.numpy()
            classes = inst.pred_classes.numpy()
            label_map = lesion_label_map(inst.pred_masks.numpy().astype(bool), classes, scores,
                                         thresh)
            labels[i] = label_map if view is None else view.back(label_map)
            kept = classes[scores >= thresh]
            counts[i] = np.bincount(kept, minlength=num_lesion)[:num_lesion]
        roi_boxes = pred.get("image_cls_boxes")
        if view is not None and roi_boxes is not None:
            roi_boxes = view.boxes_back(np.asarray(roi_boxes))
        boxes.append(roi_boxes)
        weights.append(_explanation_weights(pred))
        if progress is not None:
            progress(1)
    t2 = time.perf_counter()
    lung = (lung_mask(study.pixels, cfg.PREDICT.LUNG_HU_THRESH)
            if study.is_hu and num_lesion else None)
    t3 = time.perf_counter()
    return StudyPrediction(
        study=study, images=images, probs=np.stack(probs) if probs else None, labels=labels,
        lesion_counts=counts, roi_boxes=boxes, roi_weights=weights, lung=lung,
        seconds={"window": t1 - t0, "model": t2 - t1, "lung_mask": t3 - t2}, scale=scale)


def _jsonable(value):
    """NumPy scalars / arrays and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def study_report(pred: StudyPrediction, predictor: SlicePredictor,
                 config_file: str = "", fingerprint: Optional[Dict] = None) -> Dict:
    """The ``report.json`` dictionary of a study (docs/predict.md); ``fingerprint``: what the
    result depends on (:mod:`.fingerprint`), recorded for ``--skip-existing``."""
    cfg: CfgNode = predictor.cfg
    study = pred.study
    spacing = study.spacing
    pixel_area = spacing[0] * spacing[1] if spacing is not None else None
    positions = study.positions
    rows = [slice_row(study.name, i, study.slice_labels[i],
                      None if positions is None else positions[i],
                      None if pred.probs is None else pred.probs[i], predictor.image_classes,
                      pred.labels[i], pred.lesion_counts[i], predictor.lesion_classes,
                      pixel_area)
            for i in range(len(pred.labels))]
    patient = None
    if pred.probs is not None:
        p = cfg.PREDICT
        patient = patient_result(pred.probs, predictor.image_classes, p.PATIENT_RULE,
                                 p.PATIENT_TOP_K, p.PATIENT_THRESH, p.PATIENT_MIN_FRACTION,
                                 p.NEGATIVE_CLASS, p.PATIENT_TOP_K_MM,
                                 None if spacing is None
                                 or study.meta.get("slice_spacing_assumed") else spacing[2])
    burden = None
    if predictor.lesion_classes:
        burden = lesion_burden(pred.labels, predictor.lesion_classes, spacing, pred.lung)
        burden["lesion_score_thresh"] = cfg.PREDICT.LESION_SCORE_THRESH
        burden["lung_mask"] = (
            f"classical: HU < {cfg.PREDICT.LUNG_HU_THRESH}, outside air removed, largest "
            "components, holes filled; plus lesion voxels" if pred.lung is not None
            else "none: the input has no Hounsfield units")
        burden["per_slice_ml"] = (
            None if spacing is None else
            [float(np.count_nonzero(s)) * spacing[0] * spacing[1] * spacing[2] / 1000.0
             for s in pred.labels])
    return _jsonable({
        "tool": REPORT_TOOL, "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "study": study.name, "source": study.source, "kind": study.kind,
        "geometry": {"slices": int(study.pixels.shape[0]),
                     "rows": int(study.pixels.shape[1]), "columns": int(study.pixels.shape[2]),
                     "spacing_mm": None if spacing is None else list(spacing),
                     "hounsfield_units": bool(study.is_hu),
                     "hu_window": list(cfg.INPUT.HU_WINDOW) if study.is_hu else None,
                     "affine_ras": study.affine, "read": study.meta,
                     "model_scale": pred.scale},
        "model": {"config_file": config_file, "weights": cfg.MODEL.WEIGHTS,
                  "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
                  "image_head": cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME,
                  "backend": getattr(predictor, "backend", None),
                  "device": cfg.MODEL.DEVICE, "batch_size": predictor.batch_size,
                  "input_size": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
                  "image_classes": predictor.image_classes,
                  "lesion_classes": predictor.lesion_classes,
                  "trained_on": list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.get("TRAIN_CLS",
                                                                                  ()))},
        "patient": patient,
        "burden": burden,
        "lesions_3d": (lesions_3d(pred.labels, predictor.lesion_classes, spacing,
                                  study.positions) if predictor.lesion_classes else None),
        "explanation": explanation_report(pred, cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME),
        "seconds": pred.seconds,
        "fingerprint": fingerprint,
        "slices": rows,
    })
