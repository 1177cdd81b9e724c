"""Pictures of a study's predictions: one overlay per slice (lesion contours by class, the RoI
batch weighted by the image head's explanation, the slice class) and one summary figure per
study (slice-probability curve, lesion volume per slice, key slices)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["LESION_COLORS", "slice_overlay", "key_slices", "summary_figure"]

# BGR colours of lesion classes 0, 1, ... (GGO yellow, consolidation red, then others).
LESION_COLORS = [(0, 215, 255), (40, 40, 230), (230, 120, 40), (60, 200, 60), (200, 60, 200)]
ROI_COLOR = (255, 200, 0)


def _text(img: np.ndarray, text: str, org, scale: float) -> None:
    """White text with a dark outline (readable on any slice)."""
    thick = max(1, int(round(scale * 2)))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2,
                cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)


def slice_overlay(image: np.ndarray, labels: np.ndarray, lesion_classes: Sequence[str],
                  probs: Optional[np.ndarray] = None, class_names: Sequence[str] = (),
                  roi_boxes: Optional[np.ndarray] = None,
                  roi_weights: Optional[np.ndarray] = None, caption: str = "") -> np.ndarray:
    """One slice's overlay.

    Args:
        image: (H, W) uint8 slice as the model saw it.
        labels: (H, W) uint8 lesion label map (0 background, ``k + 1`` class ``k``).
        probs / class_names: (C,) slice class probabilities and names; the top class is written.
        roi_boxes / roi_weights: the RoI batch (beta, 4) in slice pixels and the head's weight of
            each RoI (beta,); a box's line width and brightness grow with ``|weight|``.
        caption: first text line (e.g. study and slice).
    Returns:
        (H', W', 3) uint8 BGR picture, upscaled to at least 512 px for legibility.
    """
    scale = max(1, int(np.ceil(512 / max(image.shape))))
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    out = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    if roi_boxes is not None and len(roi_boxes):
        w = (np.abs(np.asarray(roi_weights, np.float64)) if roi_weights is not None
             else np.ones(len(roi_boxes)))
        w = w / w.max() if w.max() > 0 else np.ones_like(w)
        for box, wi in sorted(zip(roi_boxes, w), key=lambda t: t[1]):  # strongest drawn last
            x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
            color = tuple(int(c * (0.35 + 0.65 * wi)) for c in ROI_COLOR)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 1 + int(round(3 * wi)))
    lab = cv2.resize(labels, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for k in range(len(lesion_classes)):
        region = (lab == k + 1).astype(np.uint8)
        if region.any():
            contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, LESION_COLORS[k % len(LESION_COLORS)], 2)
    font = 0.5 * out.shape[1] / 512
    line = int(22 * out.shape[1] / 512)
    if caption:
        _text(out, caption, (6, line), font)
    if probs is not None and len(class_names):
        top = int(np.argmax(probs))
        _text(out, f"{class_names[top]} {probs[top]:.2f}", (6, 2 * line), font)
    for k, name in enumerate(lesion_classes):
        y = out.shape[0] - 8 - line * (len(lesion_classes) - 1 - k)
        cv2.putText(out, name, (6, y), cv2.FONT_HERSHEY_SIMPLEX, font,
                    LESION_COLORS[k % len(LESION_COLORS)], max(1, int(round(font * 2))),
                    cv2.LINE_AA)
    return out


def key_slices(probs: Optional[np.ndarray], lesion_area: np.ndarray, positive: Sequence[int],
               count: int = 4) -> List[int]:
    """Indices of the slices worth a look: the highest probabilities of the positive classes,
    then the largest lesion areas; in slice order, at most ``count``."""
    order: List[int] = []
    if probs is not None and len(positive):
        order += list(np.argsort(-probs[:, list(positive)].max(axis=1), kind="stable"))
    order += list(np.argsort(-lesion_area, kind="stable"))
    chosen: List[int] = []
    for i in order:
        if int(i) not in chosen:
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return sorted(chosen)


def summary_figure(path: str, title: str, positions: np.ndarray, position_label: str,
                   probs: Optional[np.ndarray], class_names: Sequence[str],
                   lesion_per_slice: np.ndarray, lesion_classes: Sequence[str], volume_unit: str,
                   key_images: Dict[int, np.ndarray]) -> None:
    """Write the study's summary figure (PNG).

    Args:
        path: output file (written as given; the caller makes the write atomic).
        positions: (N,) x axis: slice position (mm) or index.
        probs: (N, C) slice class probabilities or ``None``.
        lesion_per_slice: (N, K) lesion amount per slice and class, in ``volume_unit``.
        key_images: slice index -> BGR overlay of a key slice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(1, len(key_images))
    fig = plt.figure(figsize=(3.2 * max(ncols, 3), 9.0), dpi=100)
    grid = fig.add_gridspec(3, ncols, height_ratios=[1.0, 0.8, 1.4])
    ax = fig.add_subplot(grid[0, :])
    if probs is not None:
        for c, name in enumerate(class_names):
            ax.plot(positions, probs[:, c], marker=".", label=name)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("slice probability")
    for i in key_images:
        ax.axvline(positions[i], color="0.6", lw=0.8, ls=":")
    ax.set_title(title, fontsize=10)
    ax2 = fig.add_subplot(grid[1, :], sharex=ax)
    bottom = np.zeros(len(positions))
    for k, name in enumerate(lesion_classes):
        b, g, r = LESION_COLORS[k % len(LESION_COLORS)]
        ax2.bar(positions, lesion_per_slice[:, k], bottom=bottom, label=name,
                width=_bar_width(positions), color=(r / 255, g / 255, b / 255))
        bottom = bottom + lesion_per_slice[:, k]
    ax2.set_ylabel(f"lesion ({volume_unit})")
    ax2.set_xlabel(position_label)
    if len(lesion_classes):
        ax2.legend(loc="upper right", fontsize=8)
    for j, (i, img) in enumerate(sorted(key_images.items())):
        axi = fig.add_subplot(grid[2, j])
        axi.imshow(img[:, :, ::-1])
        axi.set_title(f"slice {i}", fontsize=9)
        axi.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _bar_width(positions: np.ndarray) -> float:
    if len(positions) < 2:
        return 0.8
    step = np.median(np.abs(np.diff(positions)))
    return 0.8 * float(step) if step > 0 else 0.8
