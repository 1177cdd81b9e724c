"""Predefined datasets found under ``$DETECTRON2_DATASETS`` (default ``datasets/``).

Names (``<source>_<task>[_sep]_<split>``; see ``datasets/README.md`` for layouts):

============================  ==========================================================
``phantom_seg_{train,test}``  phantom lesion segmentation, one "lesion" class (merge)
``phantom_seg_sep_{..}``      phantom lesion segmentation, GGO + consolidation (separate)
``phantom_cls_{train,val,test}``  phantom slice classification (Normal, CP, COVID-19)
``cncb_seg_{train,test}``     CNCB-NCOV lesion segmentation (merge), ``cncb_seg_sep_*``
``cncb_cls_{train,val,test}`` CNCB-NCOV slices with COVIDx-CT splits
``medseg_seg[_sep]_{..}``     MedSeg-style multiclass slices (``public/index.json``)
``covid19_ct_seg_{..}``       COVID-19-CT-Seg-style binary slices, split by volume
``ucsd_cls_{train,val}``      UCSD COVID-CT-style 2-class slices (NonCOVID, COVID)
============================  ==========================================================

A name is registered when its source file (COCO JSON / split file) exists at import time, so a
dataset prepared after import needs :func:`register_all_builtin` to be called again (it skips
names already registered).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

from detectron2.data import DatasetCatalog

from .covid_ct import COVIDX_CLASSES, register_covidx_cls, register_ct_seg
from .label_masks import CNCB_CATEGORY_VALUES, cncb_masks_to_coco
from .public_ct import register_public_datasets

__all__ = ["BUILTIN_LAYOUTS", "prepare_cncb_layout", "register_cncb_layout",
           "register_all_builtin", "datasets_root", "seg_json_path"]

logger = logging.getLogger(__name__)

# source folder name under $DETECTRON2_DATASETS -> dataset name prefix
BUILTIN_LAYOUTS = {"phantom": "phantom", "cncb": "cncb"}
SEG_SPLITS = ("train", "test")
CLS_SPLITS = ("train", "val", "test")


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` or ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def seg_json_path(root: str, split: str, mode: str) -> str:
    """Where :func:`prepare_cncb_layout` writes a segmentation split's COCO JSON."""
    return os.path.join(root, "annotations", f"seg_{split}_{mode}.json")


def prepare_cncb_layout(root: str, modes=("merge", "separate"), min_area: int = 100) -> List[str]:
    """Convert every segmentation split of a CNCB-NCOV layout folder (real or phantom) to COCO
    JSON under ``root/annotations``. Returns the written paths."""
    seg = os.path.join(root, "segmentation")
    written = []
    for split in SEG_SPLITS:
        for mode in modes:
            out = seg_json_path(root, split, mode)
            cncb_masks_to_coco(seg, f"{split}_split_segmentation.txt", mode, min_area, out)
            written.append(out)
    return written


def _seg_name(prefix: str, split: str, mode: str) -> str:
    return f"{prefix}_seg_{split}" if mode == "merge" else f"{prefix}_seg_sep_{split}"


def register_cncb_layout(root: str, prefix: str) -> List[str]:
    """Register the splits of a prepared CNCB-NCOV layout folder that exist. Returns the names
    registered now (names already in the catalog are skipped)."""
    names = []
    seg_images = os.path.join(root, "segmentation", "imgs")
    for split in SEG_SPLITS:
        for mode, categories in CNCB_CATEGORY_VALUES.items():
            name, json_file = _seg_name(prefix, split, mode), seg_json_path(root, split, mode)
            if os.path.isfile(json_file) and name not in DatasetCatalog.list():
                register_ct_seg(name, json_file, seg_images, class_names=list(categories))
                names.append(name)
    cls = os.path.join(root, "classification")
    for split in CLS_SPLITS:
        name, split_file = f"{prefix}_cls_{split}", os.path.join(cls, f"{split}_COVIDx_CT.txt")
        if os.path.isfile(split_file) and name not in DatasetCatalog.list():
            register_covidx_cls(name, split_file, os.path.join(cls, "images"), COVIDX_CLASSES)
            names.append(name)
    return names


def register_all_builtin(root: Optional[str] = None) -> List[str]:
    """Register every predefined dataset found under ``root`` (default :func:`datasets_root`)."""
    root = root or datasets_root()
    names = []
    for folder, prefix in BUILTIN_LAYOUTS.items():
        path = os.path.join(root, folder)
        if os.path.isdir(path):
            names += register_cncb_layout(path, prefix)
    # a corrupt public index is reported and skipped: never fatal to `import oneshot_d2`
    names += register_public_datasets(root, registered=DatasetCatalog.list(), strict=False)
    if names:
        logger.debug("registered builtin datasets under %s: %s", root, names)
    return names
