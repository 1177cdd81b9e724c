"""The COCO annotation files of a phantom dataset, derived from its lesion masks: writing them
and writing again those a complete set lacks."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Tuple

from ..utils.file_io import atomic_write_json
from .phantom_marker import MARKER_FILE, read_phantom_marker

__all__ = ["ANNOTATION_SPLITS", "ANNOTATION_MODES", "write_annotations", "restore_annotations",
           "missing_annotations"]

logger = logging.getLogger(__name__)


ANNOTATION_SPLITS = ("train", "test")
ANNOTATION_MODES = ("merge", "separate")


def _annotation_files() -> List[Tuple[str, str, str]]:
    """``(split, mode, path relative to the dataset root)`` of every COCO annotation file."""
    from .datasets.builtin import seg_json_path

    return [(split, mode, seg_json_path("", split, mode))
            for split in ANNOTATION_SPLITS for mode in ANNOTATION_MODES]


def missing_annotations(root: str) -> List[str]:
    """The annotation files (relative to ``root``) that ``root`` lacks."""
    return [rel for _, _, rel in _annotation_files() if not os.path.isfile(os.path.join(root, rel))]


def write_annotations(root: str, min_area: int, only: Optional[Sequence[str]] = None
                       ) -> List[str]:
    """Convert the segmentation splits of the set in ``root`` to COCO JSON under
    ``root/annotations`` (each file written atomically). Same content as
    :func:`~oneshot_d2.data.datasets.builtin.prepare_cncb_layout`, except that
    ``info.description`` names the split file relative to ``root``: the set may be written in
    a temporary folder, and a seed must give the same bytes wherever the set lives.

    Args:
        root: the dataset folder (``segmentation/`` in it).
        min_area: lesion components of at most this many pixels are dropped.
        only: write only these files (paths relative to ``root``); ``None``: all of them.

    Returns:
        The written files, relative to ``root``.
    """
    from .datasets.label_masks import cncb_masks_to_coco

    seg = os.path.join(root, "segmentation")
    written = []
    for split, mode, rel in _annotation_files():
        if only is not None and rel not in only:
            continue
        split_file = f"{split}_split_segmentation.txt"
        coco = cncb_masks_to_coco(seg, split_file, mode, min_area)
        coco["info"]["description"] = f"CNCB-NCOV phantom segmentation/{split_file} ({mode})"
        atomic_write_json(os.path.join(root, rel), coco)
        logger.info("%s: %d images, %d instances -> %s", coco["info"]["description"],
                    len(coco["images"]), len(coco["annotations"]), os.path.join(root, rel))
        written.append(rel)
    return written


def restore_annotations(root: str, min_area: int) -> None:
    """Write again the annotation files that the complete set in ``root`` lacks (the caller
    holds its lock), with the ``min_area`` the marker records (so they equal the lost ones),
    and record them in the marker."""
    missing = missing_annotations(root)
    if not missing:
        return
    marker = read_phantom_marker(root)
    recorded = marker.get("min_area")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        if recorded != min_area:
            logger.warning("%s: writing the missing annotations with the set's min_area %d "
                           "(not %d) so that they match the others; pass overwrite=True "
                           "(--overwrite) to rebuild the set with another one", root, recorded,
                           min_area)
        min_area = recorded
    logger.info("%s: annotation files missing (%s): converting", root, ", ".join(missing))
    write_annotations(root, min_area, only=missing)
    if os.path.isfile(os.path.join(root, MARKER_FILE)) and not marker.get("legacy"):
        recorded_files = list(marker.get("annotations") or [])
        if not set(missing) <= set(recorded_files) or marker.get("min_area") != min_area:
            marker["annotations"] = sorted(set(recorded_files) | set(missing))
            marker["min_area"] = min_area
            atomic_write_json(os.path.join(root, MARKER_FILE), marker)
