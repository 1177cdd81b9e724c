"""Small, checked readers (images, label masks, CSV manifests, annotation masks) and an atomic
writer for dataset and report files: the one place for each of these jobs."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import polygons_to_bitmask

from .errors import DatasetError

__all__ = ["read_gray", "read_label_image", "read_manifest", "decode_mask", "atomic_write_json",
           "atomic_write_text", "atomic_write_bytes"]


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


def read_manifest(csv_file: str, required: Sequence[Union[str, Sequence[str]]] = (),
                  expected: str = "", allow_empty: bool = False) -> List[Dict[str, str]]:
    """Rows of a CSV manifest as dicts, values stripped (a value missing from a short row: "").

    Args:
        csv_file: the manifest (first line: column names).
        required: columns that must be present. An entry that is a sequence of names accepts any
            of them: the first one present is copied, in every row, to the entry's first name
            (e.g. ``("file_name", "path")``: rows get ``file_name`` even from a ``path`` column).
        expected: a description of the expected columns, added to the missing-column message.
        allow_empty: return ``[]`` for a manifest without rows instead of raising.

    Raises:
        DatasetError: missing file, missing columns, or no rows; the message names the file.
    """
    if not os.path.isfile(csv_file):
        raise DatasetError(f"{csv_file}: manifest not found")
    with open(csv_file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        missing, copies = set(), []
        for entry in required:
            names = (entry,) if isinstance(entry, str) else tuple(entry)
            present = next((n for n in names if n in fields), None)
            if present is None:
                missing.add(names[0])
            elif present != names[0]:
                copies.append((names[0], present))
        if missing:
            raise DatasetError(f"{csv_file}: manifest lacks column(s) {sorted(missing)} "
                               f"(has {reader.fieldnames})"
                               + (f"; expected {expected}" if expected else ""))
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None}
                for row in reader]
    for row in rows:
        for name, present in copies:
            row[name] = row[present]
    if not rows and not allow_empty:
        raise DatasetError(f"{csv_file}: manifest has no rows")
    return rows


def decode_mask(seg: Any, height: int, width: int) -> Optional[np.ndarray]:
    """The (H, W) bool mask of an annotation's ``segmentation`` (Detectron2 / COCO formats:
    RLE dict, compressed or with a list of counts, or a list of polygons); ``None`` when there
    is no mask (missing, empty or of another type). Errors of a malformed mask propagate."""
    if isinstance(seg, dict):
        rle = dict(seg)
        if isinstance(rle.get("counts"), list):
            rle = mask_util.frPyObjects(rle, height, width)  # keeps the RLE's own "size"
        return mask_util.decode(rle).astype(bool)
    if isinstance(seg, list) and seg:
        return polygons_to_bitmask(seg, height, width)
    return None


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
