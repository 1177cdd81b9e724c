"""Write a synthetic phantom dataset in the CNCB-NCOV / COVIDx-CT on-disk layouts.

Layout under ``root`` (the same as a prepared copy of the real data, see ``datasets/README.md``)::

    segmentation/                       # CNCB-NCOV lesion-segmentation layout
        imgs/<patient>_<slice>.jpg      # lung-window 8-bit slices
        masks/<patient>_<slice>.png     # 0 background, 1 lung, 2 GGO, 3 consolidation
        train_split_segmentation.txt    # one image file name per line
        test_split_segmentation.txt
        hu/<patient>_<slice>.png        # optional: uint16 = HU + 1024 (CT rescale intercept)
        nifti/<patient>_{ct,mask}.nii.gz  # optional: per-patient volumes, spacing in mm
    classification/                     # COVIDx-CT layout
        images/{NCP,CP,Normal}_<patient>_<scan>_<slice>.png
        {train,val,test}_COVIDx_CT.txt  # "<file> <class> <x1> <y1> <x2> <y2>",
                                        # class 0 normal, 1 CP, 2 COVID
    annotations/seg_{train,test}_{merge,separate}.json  # COCO (see write_annotations)
    phantom.json                        # the generation parameters
    .oneshot_d2_phantom.json            # marker: tool, version, spec, counts (written last)

Patients never span two splits. The dataset is written into a temporary sibling folder and
renamed into place, so an interrupted run never leaves a half-written dataset; ``--overwrite``
only ever deletes a folder that holds the marker (or an older set's ``phantom.json``), and only
once the new set is in place. See :func:`write_phantom_dataset`. The files hold no absolute
path (the COCO ``info.description`` names the split file relative to ``root``), so a seed gives
byte-identical files wherever the set is written.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import DatasetError
from ..utils.file_io import atomic_write_json
from ..utils.managed_folder import foreign_entry, locked_folder, new_folder_version
from ..utils.testing import kill_point
from .phantom_annotations import restore_annotations, write_annotations
from .phantom_layout import COVIDX_PREFIX, PhantomSpec, write_classification, write_segmentation
from .phantom_marker import (
    MARKER_FILE,
    MARKER_TOOL,
    SPEC_FILE,
    phantom_incomplete_reason,
    phantom_is_complete,
    read_phantom_marker,
)

__all__ = ["PhantomSpec", "write_phantom_dataset", "prepare_phantom_dataset", "COVIDX_PREFIX",
           "phantom_is_complete", "phantom_incomplete_reason", "read_phantom_marker",
           "MARKER_FILE"]

logger = logging.getLogger(__name__)


def _write_tree(out: str, spec: PhantomSpec, min_area: Optional[int]) -> Dict[str, int]:
    """Render the whole dataset into the (new, empty) folder ``out``: slices, split files,
    ``phantom.json``, the COCO annotations (unless ``min_area`` is None) and, last, the
    marker."""
    from ..version import __version__

    rng = np.random.default_rng(spec.seed)
    seg_rng, cls_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**31, 2))
    stats = write_segmentation(seg_rng, spec, out)
    kill_point("phantom-writing")
    stats.update(write_classification(cls_rng, spec, out))
    with open(os.path.join(out, SPEC_FILE), "w") as f:
        json.dump({"spec": asdict(spec), "counts": stats}, f, indent=2)
    annotations = [] if min_area is None else write_annotations(out, min_area)
    atomic_write_json(os.path.join(out, MARKER_FILE), {
        "tool": MARKER_TOOL, "version": __version__, "spec": asdict(spec), "counts": stats,
        "min_area": min_area, "annotations": annotations})
    return stats


def _check_replaceable(root: str) -> None:
    """Raise unless ``root`` may be deleted to make room for a new set: a phantom dataset
    written by this module (complete or not), or an empty folder."""
    what = foreign_entry(root, lambda folder: read_phantom_marker(folder) is not None)
    if what is not None:
        raise DatasetError(
            f"{root}: refusing to overwrite this {what}: it is not a phantom dataset written by "
            f"prepare_phantom (no {MARKER_FILE}); move it away or choose another --root")


def _write_locked(root: str, spec: PhantomSpec, overwrite: bool,
                  min_area: Optional[int]) -> Dict[str, int]:
    """:func:`write_phantom_dataset` once the lock is held."""
    if os.path.lexists(root):
        if not overwrite:
            reason = phantom_incomplete_reason(root)
            state = ("holds a complete phantom dataset" if reason is None else
                     f"exists and is not a complete phantom dataset ({reason})")
            raise FileExistsError(f"{root} {state}; pass overwrite=True (--overwrite) to "
                                  "replace it")
        _check_replaceable(root)
    with new_folder_version(root, kill_stage="phantom") as tmp:
        stats = _write_tree(tmp, spec, min_area)
    logger.info("phantom dataset written to %s: %s", root, stats)
    return stats


def write_phantom_dataset(root: str, spec: PhantomSpec | None = None, overwrite: bool = False,
                          min_area: Optional[int] = 100) -> Dict[str, int]:
    """Render and write a phantom dataset (deterministic for a given ``spec``).

    The set is built in a temporary sibling folder ``<root>.tmp-<host>-<pid>-<random>``, marked
    complete (:data:`MARKER_FILE`, written last) and then renamed into place; an old set is
    deleted only after the new one is in place. Two processes writing the same ``root`` take
    turns (a lock file ``<root>.lock``); leftovers of a killed run are cleaned up first.

    Args:
        root: destination folder (created; its parent must be writable).
        spec: generation parameters; defaults to :class:`PhantomSpec()`.
        overwrite: replace an existing dataset at ``root`` (only one this module wrote, or an
            empty folder).
        min_area: also write the COCO annotations (``annotations/seg_*.json``, lesion
            components of at most this many pixels dropped); ``None`` skips them.

    Returns:
        Slice counts per split, e.g. ``{"seg_train": 120, ..., "cls_test": 60}``.

    Raises:
        FileExistsError: ``root`` exists and ``overwrite`` is False.
        DatasetError: ``overwrite`` is True but ``root`` is not a phantom dataset (nothing is
            deleted).
    """
    spec = spec or PhantomSpec()
    root = os.path.abspath(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with locked_folder(root, phantom_is_complete, "phantom dataset"):
        return _write_locked(root, spec, overwrite, min_area)


def prepare_phantom_dataset(root: str, spec: PhantomSpec | None = None, overwrite: bool = False,
                            min_area: int = 100) -> Tuple[bool, Dict[str, int]]:
    """What ``datasets/prepare_phantom.py`` does, under the lock of ``root``: keep a complete
    dataset (writing again those of its COCO annotation files that are missing, atomically,
    with the ``min_area`` its marker records) unless ``overwrite``, else
    :func:`write_phantom_dataset`. Returns ``(written, slice counts)``.

    Raises:
        FileExistsError: ``root`` exists, is not a complete dataset and ``overwrite`` is False.
        DatasetError: see :func:`write_phantom_dataset`.
    """
    spec = spec or PhantomSpec()
    root = os.path.abspath(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with locked_folder(root, phantom_is_complete, "phantom dataset"):
        if not overwrite and phantom_is_complete(root):
            restore_annotations(root, min_area)
            return False, dict(read_phantom_marker(root)["counts"])
        return True, _write_locked(root, spec, overwrite, min_area)
