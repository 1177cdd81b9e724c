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
does (:mod:`.lazy`): the files (COCO JSON, split file, ``public/index.json``) are found under
``$DETECTRON2_DATASETS`` when the dataset is loaded, so a dataset prepared after import needs
nothing more, and a missing one is a one-line :class:`~oneshot_d2.errors.DatasetError` naming
the file and how to prepare it; :func:`builtin_not_prepared` checks that before a run. A user's
own registration under a predefined name (:func:`register_cncb_layout`,
:func:`~oneshot_d2.data.datasets.public_ct.register_public_datasets`) replaces the predefined
one. Public splits other than train / val / test: call ``register_public_datasets``.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog

from ...errors import DatasetError
from .covid_ct import (
    COVIDX_CLASSES,
    load_covidx_split,
    load_ct_seg_json,
    register_covidx_cls,
    register_ct_seg,
)
from .label_masks import CNCB_CATEGORY_VALUES, cncb_masks_to_coco
from .lazy import datasets_root, is_lazy, not_prepared, register_lazily, release
from .public_ct import register_public_lazily

__all__ = ["BUILTIN_LAYOUTS", "prepare_cncb_layout", "register_cncb_layout",
           "register_all_builtin", "builtin_not_prepared", "datasets_root", "seg_json_path"]

logger = logging.getLogger(__name__)

# source folder name under $DETECTRON2_DATASETS -> dataset name prefix
BUILTIN_LAYOUTS = {"phantom": "phantom", "cncb": "cncb"}
PREPARE_HINTS = {
    "phantom": "run `python datasets/prepare_phantom.py`",
    "cncb": "prepare the CNCB-NCOV copy as datasets/README.md says",
}
SEG_SPLITS = ("train", "test")
CLS_SPLITS = ("train", "val", "test")


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


def register_cncb_layout(root: str, prefix: str) -> List[str]:
    """Register the splits of a prepared CNCB-NCOV layout folder that exist, as
    ``<prefix>_seg_<split>``, ``<prefix>_seg_sep_<split>``, ``<prefix>_cls_<split>``. Returns the
    names registered now: names already in the catalog are skipped, except the predefined
    ones (``phantom_*``, ``cncb_*``), whose lazy registration this one replaces."""
    names = []
    registered = set(DatasetCatalog.list())
    seg_images = os.path.join(root, "segmentation", "imgs")
    cls_images = os.path.join(root, "classification", "images")
    for suffix, (kind, path) in _layout_files(root).items():
        name = prefix + suffix
        if (name in registered and not is_lazy(name)) or not os.path.isfile(path):
            continue
        release(name)
        if kind == "cls":
            register_covidx_cls(name, path, cls_images, COVIDX_CLASSES)
        else:
            register_ct_seg(name, path, seg_images, class_names=list(CNCB_CATEGORY_VALUES[kind]))
        names.append(name)
    return names


def _layout_paths(folder: str, suffix: str, root: Optional[str]) -> Tuple[str, str, str]:
    """(kind, source file, image folder) of a predefined layout split, under ``root`` or the
    dataset root of this moment."""
    base = os.path.join(root or datasets_root(), folder)
    kind, path = _layout_files(base)[suffix]
    images = os.path.join(base, *(("classification", "images") if kind == "cls"
                                  else ("segmentation", "imgs")))
    return kind, path, images


def _layout_fields(folder: str, suffix: str, root: Optional[str]) -> Dict[str, str]:
    """The metadata file fields of a predefined layout split (what ``register_ct_seg`` /
    ``register_covidx_cls`` set)."""
    kind, path, images = _layout_paths(folder, suffix, root)
    key = "split_file" if kind == "cls" else "json_file"
    return {key: path, "image_root": images}


def _load_layout(name: str, folder: str, suffix: str, root: Optional[str]) -> List[Dict]:
    """The dataset dicts of a predefined layout split, its files found now."""
    kind, path, images = _layout_paths(folder, suffix, root)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset {name!r} is not prepared: {path} not found "
                           f"({PREPARE_HINTS[folder]})")
    if kind == "cls":
        return load_covidx_split(path, images, COVIDX_CLASSES)
    return load_ct_seg_json(path, images, name)


def _layout_missing(folder: str, suffix: str, root: Optional[str]) -> Optional[str]:
    _, path, _ = _layout_paths(folder, suffix, root)
    return None if os.path.isfile(path) else f"{path} not found ({PREPARE_HINTS[folder]})"


def register_all_builtin(root: Optional[str] = None) -> List[str]:
    """Register every predefined dataset name (module docstring) without reading anything, as
    Detectron2's ``builtin.py`` does: the files are found when a dataset is loaded, under
    ``root`` (default: ``$DETECTRON2_DATASETS`` at that moment). Names already registered are
    skipped. Returns the names registered now."""
    names = []
    registered = set(DatasetCatalog.list())
    for folder, prefix in BUILTIN_LAYOUTS.items():
        for suffix, (kind, _) in _layout_files("").items():
            name = prefix + suffix
            if name in registered:
                continue
            classes = COVIDX_CLASSES if kind == "cls" else CNCB_CATEGORY_VALUES[kind]
            register_lazily(name, functools.partial(_layout_fields, folder, suffix, root),
                            functools.partial(_load_layout, name, folder, suffix, root),
                            functools.partial(_layout_missing, folder, suffix, root), classes,
                            slice_classes=kind == "cls")
            names.append(name)
    names += register_public_lazily(root)
    return names


def builtin_not_prepared(name: str) -> Optional[str]:
    """For a name that still has its predefined registration: why it cannot be loaded now (its
    file missing, with how to prepare it), else ``None``; ``None`` for other names. Touches the
    disk: a run-time check (e.g. before training), not for import."""
    return not_prepared(name)
