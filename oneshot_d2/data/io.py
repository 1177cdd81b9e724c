"""Small, checked readers and an atomic writer for dataset files."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import cv2
import numpy as np

from .errors import DatasetError

__all__ = ["read_gray", "read_label_image", "atomic_write_json", "atomic_write_text",
           "atomic_write_bytes"]


def read_gray(path: str) -> np.ndarray:
    """Read an image as (H, W) uint8 grayscale.

    Raises:
        DatasetError: the file is missing or cannot be decoded.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DatasetError(f"{path}: unreadable image (not a decodable PNG/JPEG)")
    return img


def _read_palette_indices(path: str):
    """The index image of a palette ("P" mode) PNG, or ``None`` for any other image. OpenCV
    would expand the palette to colours; label masks store class ids as palette indices."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            return np.array(im, dtype=np.uint8)
    except (OSError, ValueError):
        return None  # let OpenCV report the unreadable file


def read_label_image(path: str) -> np.ndarray:
    """Read a label mask (H, W) without any colour conversion or rescaling (palette PNGs give
    their palette indices).

    Raises:
        DatasetError: missing, unreadable, or not a single-channel integer image.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: mask file not found")
    palette = _read_palette_indices(path)
    if palette is not None:
        return palette
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DatasetError(f"{path}: unreadable mask (not a decodable PNG)")
    if mask.ndim == 3:
        if not (np.all(mask[..., 0] == mask[..., 1]) and np.all(mask[..., 1] == mask[..., 2])):
            raise DatasetError(f"{path}: mask has colour channels that differ; expected a "
                               "single-channel label image")
        mask = mask[..., 0]
    if not np.issubdtype(mask.dtype, np.integer):
        raise DatasetError(f"{path}: mask dtype {mask.dtype} is not an integer label image")
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    that ``path`` is either the old file or the complete new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj))
