"""The scale the model sees a scan at, against the scale it was trained at.

The model resizes every slice to its input size (``INPUT.MIN_SIZE_TEST``), so what matters is
the field of view: a slice covering 500 mm shows the lungs at 70 % of their size in a model
trained on 350 mm slices. ``PREDICT.TRAINED_FIELD_OF_VIEW_MM`` records the training slices'
field of view (0: unknown, no check). A study whose mm per model pixel differs from the
training's by more than ``PREDICT.SPACING_TOLERANCE`` (a factor) has its slices cropped
around the centre or padded with air to the training's field of view before the model's resize,
the model's outputs put back on the study's own pixels (``PREDICT.SPACING_MISMATCH``
``"resample"``, the default), or is predicted as it is with a warning (``"warn"``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from detectron2.config import CfgNode

__all__ = ["FieldOfView", "scale_check"]

logger = logging.getLogger(__name__)


def _model_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Detectron2's ResizeShortestEdge factor at test time (model pixels per slice pixel)."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


@dataclass
class FieldOfView:
    """A centred crop (``top``, ``left`` >= 0) or air padding (< 0) of the slices to
    ``size`` = (H', W') pixels, and the way back."""

    top: int
    left: int
    size: Tuple[int, int]
    original: Tuple[int, int]

    def to_model(self, images: np.ndarray, fill: int) -> np.ndarray:
        """(N, H, W) uint8 slices -> (N, H', W'), padding with ``fill``."""
        n = images.shape[0]
        out = np.full((n, *self.size), fill, dtype=images.dtype)
        src, dst = self._windows()
        out[(slice(None),) + dst] = images[(slice(None),) + src]
        return out

    def back(self, labels: np.ndarray) -> np.ndarray:
        """(H', W') labels of a model slice -> (H, W) on the study's pixels (0 where the
        crop cut the slice)."""
        out = np.zeros(self.original, dtype=labels.dtype)
        src, dst = self._windows()
        out[src] = labels[dst]
        return out

    def boxes_back(self, boxes: np.ndarray) -> np.ndarray:
        """(R, 4) ``x0, y0, x1, y1`` boxes of a model slice -> the study's pixels (clipped to
        the slice: a box in the padding ends on its border)."""
        shift = np.array([self.left, self.top, self.left, self.top], dtype=np.float64)
        out = np.asarray(boxes, dtype=np.float64) + shift
        out[:, 0::2] = out[:, 0::2].clip(0, self.original[1])
        out[:, 1::2] = out[:, 1::2].clip(0, self.original[0])
        return out

    def _windows(self):
        """(study window, model window): the pixels both have."""
        (h, w), (hh, ww) = self.original, self.size
        y0, x0 = max(self.top, 0), max(self.left, 0)  # in the study
        v0, u0 = max(-self.top, 0), max(-self.left, 0)  # in the model slice
        rows, cols = min(h - y0, hh - v0), min(w - x0, ww - u0)
        return ((slice(y0, y0 + rows), slice(x0, x0 + cols)),
                (slice(v0, v0 + rows), slice(u0, u0 + cols)))


def scale_check(cfg: CfgNode, shape: Tuple[int, int],
                spacing: Optional[Tuple[float, float, float]]
                ) -> Tuple[Dict, Optional[FieldOfView]]:
    """The study's mm per model pixel against the training's, and what to do about it.

    Args:
        cfg: the model's config (``INPUT.MIN/MAX_SIZE_TEST``, ``PREDICT.TRAINED_FIELD_OF_VIEW_MM``,
            ``PREDICT.SPACING_TOLERANCE``, ``PREDICT.SPACING_MISMATCH``).
        shape: the slices' (H, W).
        spacing: (row, column, slice) spacing in mm, or ``None``.
    Returns:
        (``report.json``'s ``geometry.model_scale``, a :class:`FieldOfView` when the slices
        are to be resampled else ``None``).
    """
    p, (h, w) = cfg.PREDICT, shape
    fov = float(p.TRAINED_FIELD_OF_VIEW_MM)
    info: Dict = {"trained_field_of_view_mm": fov or None, "action": "none"}
    if fov <= 0 or spacing is None:
        info["reason"] = ("the model's training field of view is unknown" if fov <= 0
                          else "the study has no (known) pixel spacing")
        return info, None
    min_size, max_size = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
    pixel = (float(spacing[0]) + float(spacing[1])) / 2.0
    study_mm = pixel / _model_scale(h, w, min_size, max_size)  # mm per model pixel
    trained_mm = fov / min_size
    ratio = study_mm / trained_mm
    info.update(study_mm_per_model_pixel=study_mm, trained_mm_per_model_pixel=trained_mm,
                ratio=ratio, tolerance=float(p.SPACING_TOLERANCE))
    if max(ratio, 1.0 / ratio) <= float(p.SPACING_TOLERANCE):
        return info, None
    if p.SPACING_MISMATCH == "warn":
        info["action"] = "warned"
        logger.warning("the study's slices are at %.2f mm per model pixel, the model was "
                       "trained at %.2f (x%.2f): lesions and lungs look %s than in training; "
                       "PREDICT.SPACING_MISMATCH resample crops / pads them to the training's "
                       "field of view", study_mm, trained_mm, ratio,
                       "smaller" if ratio > 1 else "larger")
        return info, None
    size = (max(1, int(round(h / ratio))), max(1, int(round(w / ratio))))
    view = FieldOfView(top=(h - size[0]) // 2, left=(w - size[1]) // 2, size=size,
                       original=(h, w))
    info.update(action="resampled", model_slice_size=list(size),
                crop_or_pad=[view.top, view.left])
    return info, view
