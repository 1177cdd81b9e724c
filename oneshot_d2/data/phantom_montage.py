"""A montage of phantom slices (one row per class) with lesion contours, for the README."""
from __future__ import annotations

import cv2
import numpy as np

from ..utils.file_io import atomic_write_bytes
from .phantom import CLASS_NAMES, CONSOLIDATION, GGO, render_slice, sample_anatomy
from .transforms import lung_window

__all__ = ["render_montage", "write_montage"]

_COLOURS = {GGO: (60, 220, 60), CONSOLIDATION: (40, 40, 230)}  # BGR


def render_montage(size: int = 256, per_class: int = 4, seed: int = 0) -> np.ndarray:
    """Render ``per_class`` slices of each class; each tile shows the slice (left) and the
    same slice with GGO (green) / consolidation (red) contours (right).

    Returns:
        (3 * (size + 24), per_class * 2 * size, 3) uint8 BGR image.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(CLASS_NAMES):
        tiles = []
        for k in range(per_class):
            s = render_slice(rng, size, label, sample_anatomy(rng), z=0.35 + 0.12 * k)
            img = cv2.cvtColor(lung_window(s.hu), cv2.COLOR_GRAY2BGR)
            over = img.copy()
            for value, colour in _COLOURS.items():
                contours, _ = cv2.findContours((s.mask == value).astype(np.uint8),
                                               cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(over, contours, -1, colour, 1)
            tiles.append(np.concatenate([img, over], axis=1))
        band = np.full((24, per_class * 2 * size, 3), 255, np.uint8)
        cv2.putText(band, f"{name}: slice | GGO (green) and consolidation (red) contours",
                    (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([band, np.concatenate(tiles, axis=1)], axis=0))
    return np.concatenate(rows, axis=0)


def write_montage(path: str, size: int = 256, per_class: int = 4, seed: int = 0) -> None:
    """Render :func:`render_montage` and write it as PNG (atomically, via a temporary file)."""
    ok, png = cv2.imencode(".png", render_montage(size, per_class, seed))
    if not ok:
        raise OSError(f"could not write {path}")
    atomic_write_bytes(path, png.tobytes())
