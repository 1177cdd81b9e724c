"""Label masks -> COCO instance JSON (the format Detectron2's ``register_coco_instances`` reads).

Instances are the connected components (8-connectivity) of each category's pixels whose area
exceeds ``min_area`` pixels (default 100: the papers' "lesions smaller than 10x10 pixels are merged
with the background"; strictly greater, as in the original code). Masks are stored as compressed
RLE, so lesions with holes stay exact; train with ``INPUT.MASK_FORMAT: bitmask``.

The CNCB-NCOV encoding (0 background, 1 lung field, 2 GGO, 3 consolidation) has two modes:

* ``merge``: one category "lesion" = GGO + consolidation; lungs are background (affinity paper);
* ``separate``: categories "GGO" and "consolidation".

Other label-image encodings (MedSeg, COVID-19-CT-Seg, any folder of label images) use
:func:`label_masks_to_coco` with their own category -> pixel-values map.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ...errors import DatasetError
from ...utils.file_io import atomic_write_json
from ..io import read_gray, read_label_image

__all__ = [
    "CNCB_MASK_VALUES", "CNCB_CATEGORY_VALUES", "mask_to_instances", "read_split_file",
    "label_masks_to_coco", "cncb_masks_to_coco",
]

logger = logging.getLogger(__name__)

CNCB_MASK_VALUES = {0: "background", 1: "lung field", 2: "GGO", 3: "consolidation"}
# category name -> mask values, per mode
CNCB_CATEGORY_VALUES: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "merge": {"lesion": (2, 3)},
    "separate": {"GGO": (2,), "consolidation": (3,)},
}


def mask_to_instances(mask: np.ndarray, category_values: Mapping[str, Sequence[int]],
                      min_area: int = 100) -> List[Tuple[int, np.ndarray]]:
    """Split a label mask into instances.

    Args:
        mask: (H, W) integer label image.
        category_values: ordered map category name -> the pixel values that form it.
        min_area: keep components with strictly more pixels than this.

    Returns:
        ``[(category_index, instance_mask)]``, category_index 0-based in the map's order,
        instance_mask (H, W) uint8 in {0, 1}; components ordered top-to-bottom, left-to-right.
    """
    out = []
    for cat, values in enumerate(category_values.values()):
        binary = np.isin(mask, np.asarray(values)).astype(np.uint8)
        if not binary.any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for comp in range(1, n):
            if stats[comp, cv2.CC_STAT_AREA] > min_area:
                out.append((cat, (labels == comp).astype(np.uint8)))
    return out


def read_split_file(path: str) -> List[str]:
    """Read a split list (one file name per line; the first whitespace-separated field is used).

    Raises:
        DatasetError: missing file or no entries.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: split file not found")
    with open(path, encoding="utf-8") as f:
        names = [line.split()[0] for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise DatasetError(f"{path}: empty split (no image listed)")
    return names


def _annotation(ann_id: int, image_id: int, category_id: int, inst: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(inst))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": float(mask_util.area(rle)), "bbox": [x, y, w, h], "iscrowd": 0}


def label_masks_to_coco(items: Iterable[Tuple[str, str]], image_root: str,
                        category_values: Mapping[str, Sequence[int]],
                        allowed_values: Optional[Iterable[int]] = None, min_area: int = 100,
                        out_json: Optional[str] = None, source: str = "") -> dict:
    """Convert (image, label mask) pairs to a COCO instance-segmentation dict.

    Args:
        items: ``(image_path, mask_path)`` pairs.
        image_root: folder that ``file_name`` entries are made relative to.
        category_values: ordered map category name -> pixel values (category ids 1..K).
        allowed_values: every pixel value a mask may contain; others raise. None: no check.
        min_area: connected components with at most this many pixels are dropped.
        out_json: when given, the dict is also written there (atomically).
        source: a description stored in the JSON's ``info``.

    Returns:
        The COCO dict (``images``, ``annotations``, ``categories``, ``info``).

    Raises:
        DatasetError: missing/unreadable image or mask, size mismatch, out-of-range mask values,
            no items.
    """
    allowed = None if allowed_values is None else np.asarray(sorted(set(allowed_values)))
    images, annotations = [], []
    for image_id, (img_path, mask_path) in enumerate(items, start=1):
        img = read_gray(img_path)
        mask = read_label_image(mask_path)
        if mask.shape != img.shape:
            raise DatasetError(
                f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its "
                f"image {img_path} ({img.shape[1]}x{img.shape[0]})")
        if allowed is not None:
            bad = np.setdiff1d(np.unique(mask), allowed)
            if bad.size:
                raise DatasetError(
                    f"{mask_path}: mask values {bad.tolist()} outside the encoding "
                    f"{allowed.tolist()}")
        images.append({"id": image_id, "file_name": os.path.relpath(img_path, image_root),
                       "height": int(img.shape[0]), "width": int(img.shape[1])})
        for cat, inst in mask_to_instances(mask, category_values, min_area):
            annotations.append(_annotation(len(annotations) + 1, image_id, cat + 1, inst))
    if not images:
        raise DatasetError(f"{source or image_root}: no images to convert (empty split)")
    coco = {
        "info": {"description": source, "min_area": min_area},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(category_values)],
    }
    if out_json:
        atomic_write_json(out_json, coco)
        logger.info("%s: %d images, %d instances -> %s", source, len(images), len(annotations),
                    out_json)
    return coco


def cncb_masks_to_coco(root: str, split_file: str, mode: str = "merge", min_area: int = 100,
                       out_json: Optional[str] = None) -> dict:
    """Convert a CNCB-NCOV lesion split (``imgs/*.jpg`` + ``masks/*.png``) to COCO.

    Args:
        root: folder with ``imgs/`` and ``masks/`` (mask = image stem + ``.png``).
        split_file: list of image file names (e.g. ``train_split_segmentation.txt``); a relative
            path is taken relative to ``root``.
        mode: ``"merge"`` (one "lesion" class) or ``"separate"`` (GGO, consolidation).
        min_area: see :func:`mask_to_instances`.
        out_json: optional output path.

    Returns:
        The COCO dict; ``file_name`` entries are relative to ``root/imgs``.
    """
    if mode not in CNCB_CATEGORY_VALUES:
        raise ValueError(f"mode must be one of {sorted(CNCB_CATEGORY_VALUES)}, got {mode!r}")
    split_path = split_file if os.path.isabs(split_file) else os.path.join(root, split_file)
    image_dir, mask_dir = os.path.join(root, "imgs"), os.path.join(root, "masks")
    items = [(os.path.join(image_dir, name),
              os.path.join(mask_dir, os.path.splitext(name)[0] + ".png"))
             for name in read_split_file(split_path)]
    source = f"CNCB-NCOV {split_path} ({mode})"
    coco = label_masks_to_coco(items, image_dir, CNCB_CATEGORY_VALUES[mode],
                               allowed_values=CNCB_MASK_VALUES, min_area=min_area,
                               source=source)
    for img in coco["images"]:  # CNCB names are <patient>_<slice>
        stem = os.path.splitext(os.path.basename(img["file_name"]))[0]
        img["patient_id"] = stem.rsplit("_", 1)[0] if "_" in stem else None
    if out_json:
        atomic_write_json(out_json, coco)
        logger.info("%s: %d images, %d instances -> %s", source, len(coco["images"]),
                    len(coco["annotations"]), out_json)
    return coco
