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

Every name is registered at import without touching the disk, as Detectron2's ``builtin.py``
does: the files (COCO JSON, split file, ``public/index.json``) are read when the dataset is
loaded, so a dataset prepared after import needs nothing more, and a missing one is a one-line
:class:`~oneshot_d2.errors.DatasetError` naming the file. :func:`builtin_not_prepared` checks
that before a run. Public splits other than train / val / test: call
:func:`~oneshot_d2.data.datasets.public_ct.register_public_datasets`.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog

from .covid_ct import COVIDX_CLASSES, register_covidx_cls, register_ct_seg
from .label_masks import CNCB_CATEGORY_VALUES, cncb_masks_to_coco
from .public_ct import PREDEFINED_PUBLIC, public_not_prepared, register_public_lazily

__all__ = ["BUILTIN_LAYOUTS", "prepare_cncb_layout", "register_cncb_layout",
           "register_all_builtin", "builtin_not_prepared", "datasets_root", "seg_json_path"]

logger = logging.getLogger(__name__)

# source folder name under $DETECTRON2_DATASETS -> dataset name prefix
BUILTIN_LAYOUTS = {"phantom": "phantom", "cncb": "cncb"}
PREPARE_HINTS = {
    "phantom": "run `python datasets/prepare_phantom.py`",
    "cncb": "prepare the CNCB-NCOV copy as datasets/README.md says",
    "public": "run datasets/prepare_public.py with its source; see datasets/README.md",
}
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


def _layout_files(root: str) -> Dict[str, Tuple[str, str]]:
    """Dataset name suffix -> (kind ``merge`` / ``separate`` / ``cls``, source file) of every
    split of a CNCB-NCOV layout folder (path strings only: no disk access)."""
    files = {}
    for split in SEG_SPLITS:
        for mode in CNCB_CATEGORY_VALUES:
            files[_seg_name("", split, mode)] = (mode, seg_json_path(root, split, mode))
    for split in CLS_SPLITS:
        files[f"_cls_{split}"] = ("cls", os.path.join(root, "classification",
                                                      f"{split}_COVIDx_CT.txt"))
    return files


def register_cncb_layout(root: str, prefix: str, only_prepared: bool = True) -> List[str]:
    """Register the splits of a CNCB-NCOV layout folder as ``<prefix>_seg_<split>``,
    ``<prefix>_seg_sep_<split>``, ``<prefix>_cls_<split>``. Returns the names registered now
    (names already in the catalog are skipped).

    Args:
        only_prepared: register only the splits whose file exists (COCO JSON, split file);
            ``False`` registers every split without touching the disk (a missing file is then
            a :class:`~oneshot_d2.errors.DatasetError` naming it when the dataset is loaded).
    """
    names = []
    registered = set(DatasetCatalog.list())
    seg_images = os.path.join(root, "segmentation", "imgs")
    cls_images = os.path.join(root, "classification", "images")
    for suffix, (kind, path) in _layout_files(root).items():
        name = prefix + suffix
        if name in registered or (only_prepared and not os.path.isfile(path)):
            continue
        if kind == "cls":
            register_covidx_cls(name, path, cls_images, COVIDX_CLASSES)
        else:
            register_ct_seg(name, path, seg_images, class_names=list(CNCB_CATEGORY_VALUES[kind]))
        names.append(name)
    return names


def register_all_builtin(root: Optional[str] = None) -> List[str]:
    """Register every predefined dataset name (module docstring) under ``root`` (default
    :func:`datasets_root`) without reading anything, as Detectron2's ``builtin.py`` does: the
    files are opened when a dataset is loaded. Names already registered are skipped. Returns
    the names registered now."""
    root = root or datasets_root()
    names = []
    for folder, prefix in BUILTIN_LAYOUTS.items():
        names += register_cncb_layout(os.path.join(root, folder), prefix, only_prepared=False)
    names += register_public_lazily(root)
    return names


def builtin_not_prepared(name: str, root: Optional[str] = None) -> Optional[str]:
    """For a predefined dataset name: why it cannot be loaded yet (its file missing, with how
    to prepare it), else ``None``; ``None`` for other names too. Touches the disk: a run-time
    check (e.g. before training), not for import."""
    root = root or datasets_root()
    for folder, prefix in BUILTIN_LAYOUTS.items():
        if not name.startswith(prefix + "_"):
            continue
        entry = _layout_files(os.path.join(root, folder)).get(name[len(prefix):])
        if entry is not None and not os.path.isfile(entry[1]):
            return f"{entry[1]} not found ({PREPARE_HINTS[folder]})"
        return None
    if name in PREDEFINED_PUBLIC:
        reason = public_not_prepared(root, name)
        if reason is not None:
            return f"{reason} ({PREPARE_HINTS['public']})"
    return None
