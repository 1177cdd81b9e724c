"""Converters for public chest-CT datasets to the project's registered datasets.

Four source layouts, each described by a ``manifest.csv`` (as in the team's shared copies; the
same functions serve users' own copies laid out the same way):

* **MedSeg-style** multiclass slices (``split,image,mask,...``; mask pixel values 0 background,
  1 ground-glass opacity, 2 consolidation; palette or grey PNG) -> COCO JSON per split, in
  ``merge`` (one "lesion" class) and ``separate`` (GGO, consolidation) modes.
* **COVID-19-CT-Seg-style** binary slices (``volume,ct,infection[,lungs]``; infection 0/255 or
  0/1) -> COCO JSON, split **by volume** (never by slice: neighbouring slices are near copies).
  Every record keeps its volume as ``patient_id``.
* **UCSD COVID-CT-style** classification manifest (``path|file_name,label,split,patient_id``;
  labels COVID / NonCOVID) -> registered directly from the manifest.
* **MosMed-style** classification manifest (``image,label,severity,split``; labels Normal /
  COVID, severity CT-0 .. CT-4) -> registered directly, ``severity`` kept in the dataset dicts.

:func:`prepare_public_datasets` writes ``<out>/public/index.json``. The predefined names
(:data:`PREDEFINED_PUBLIC`) are registered at import without reading it
(:func:`register_public_lazily`): the index is read when such a dataset is first loaded;
:func:`register_public_datasets` registers every entry of an index at once. Writers take turns
(a lock file ``index.json.lock``) and merge their entries into the index (read, update, atomic
rewrite under the lock), so two runs for different sources keep both; a corrupt index is an
error naming it when a dataset is loaded, and is replaced (kept aside) by the next
preparation.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...errors import DatasetError
from ...utils.file_io import atomic_write_json
from ...utils.file_lock import file_lock
from ...utils.temp_names import clean_orphans
from ..io import read_manifest
from .covid_ct import (
    load_csv_manifest,
    load_ct_seg_json,
    register_csv_cls,
    register_ct_seg,
)
from .label_masks import label_masks_to_coco
from .lazy import datasets_root, is_lazy, register_lazily, release

__all__ = ["MEDSEG_CATEGORY_VALUES", "BINARY_LESION_VALUES", "UCSD_CLASSES", "MOSMED_CLASSES",
           "read_manifest", "medseg_to_coco", "covid19_ct_seg_to_coco", "split_volumes",
           "prepare_public_datasets", "register_public_datasets", "public_index_path",
           "read_public_index", "PREDEFINED_PUBLIC", "register_public_lazily",
           "public_not_prepared"]

logger = logging.getLogger(__name__)

PREPARE_HINT = "run datasets/prepare_public.py with its source; see datasets/README.md"

MEDSEG_MASK_VALUES = (0, 1, 2)
MEDSEG_CATEGORY_VALUES = {
    "merge": {"lesion": (1, 2)},
    "separate": {"GGO": (1,), "consolidation": (2,)},
}
# Binary infection masks: 255 in the processed PNGs, 1 in the original NIfTI-derived masks.
BINARY_LESION_VALUES = {"lesion": (1, 255)}
BINARY_MASK_VALUES = (0, 1, 255)
# Index order = class ids: 0 NonCOVID, 1 COVID.
UCSD_CLASSES = ("NonCOVID", "COVID")
# MosMed: 0 Normal (CT-0), 1 COVID (CT-1 .. CT-4); the severity grade stays in the dicts.
MOSMED_CLASSES = ("Normal", "COVID")
MOSMED_EXTRA_COLUMNS = ("severity",)


def medseg_to_coco(root: str, out_dir: str, modes: Sequence[str] = ("merge", "separate"),
                   min_area: int = 100, manifest: str = "manifest.csv") -> Dict[str, str]:
    """Convert a MedSeg-style folder to COCO JSON, one file per (split, mode).

    Args:
        root: folder with the manifest; ``image`` / ``mask`` paths are relative to it.
        out_dir: where ``medseg_<split>_<mode>.json`` go (``file_name`` relative to ``root``).
        modes: ``merge`` and/or ``separate``.
        min_area: connected components with at most this many pixels are dropped (papers: 100).
    Returns:
        ``{"<split>_<mode>": json_path}``.
    """
    csv_file = os.path.join(root, manifest)
    rows = read_manifest(csv_file, ("split", "image", "mask"), nonempty=("split", "image", "mask"))
    out = {}
    for split in sorted({r["split"] for r in rows}):
        items = [(os.path.join(root, r["image"]), os.path.join(root, r["mask"]))
                 for r in rows if r["split"] == split]
        for mode in modes:
            if mode not in MEDSEG_CATEGORY_VALUES:
                raise ValueError(f"mode must be one of {sorted(MEDSEG_CATEGORY_VALUES)}, "
                                 f"got {mode!r}")
            path = os.path.join(out_dir, f"medseg_{split}_{mode}.json")
            label_masks_to_coco(items, root, MEDSEG_CATEGORY_VALUES[mode],
                                allowed_values=MEDSEG_MASK_VALUES, min_area=min_area,
                                out_json=path, source=f"MedSeg {csv_file} {split} ({mode})")
            out[f"{split}_{mode}"] = path
    return out


def split_volumes(volumes: Sequence[str], test_volumes: Optional[Sequence[str]] = None,
                  test_fraction: float = 0.25) -> Dict[str, List[str]]:
    """Split volume ids into train / test sets (whole volumes only).

    Args:
        volumes: all volume ids.
        test_volumes: explicit test volumes; default: the last ``ceil(test_fraction * n)``
            volumes in sorted order (deterministic, documented in the output index).
    Raises:
        DatasetError: unknown test volume, or a split that would be empty.
    """
    vols = sorted(set(volumes))
    if test_volumes:
        unknown = sorted(set(test_volumes) - set(vols))
        if unknown:
            raise DatasetError(f"test volumes {unknown} not in the manifest (has {vols})")
        test = sorted(set(test_volumes))
    else:
        test = vols[len(vols) - max(1, math.ceil(test_fraction * len(vols))):]
    train = [v for v in vols if v not in test]
    if not train or not test:
        raise DatasetError(f"cannot split volumes {vols} into non-empty train and test sets")
    return {"train": train, "test": test}


def covid19_ct_seg_to_coco(root: str, out_dir: str, test_volumes: Optional[Sequence[str]] = None,
                           test_fraction: float = 0.25, min_area: int = 100,
                           manifest: str = "manifest.csv") -> Dict[str, str]:
    """Convert a COVID-19-CT-Seg-style folder to COCO JSON, split by volume.

    Image entries carry ``patient_id`` = the volume id (kept in Detectron2's dataset dicts by
    :func:`~oneshot_d2.data.datasets.register_ct_seg`).

    Returns:
        ``{"train": json_path, "test": json_path}``; the volumes of each split are written in
        the JSON's ``info``.
    """
    csv_file = os.path.join(root, manifest)
    rows = read_manifest(csv_file, ("volume", "ct", "infection"),
                         nonempty=("volume", "ct", "infection"))
    splits = split_volumes([r["volume"] for r in rows], test_volumes, test_fraction)
    out = {}
    for split, vols in splits.items():
        chosen = [r for r in rows if r["volume"] in vols]
        items = [(os.path.join(root, r["ct"]), os.path.join(root, r["infection"]))
                 for r in chosen]
        coco = label_masks_to_coco(items, root, BINARY_LESION_VALUES,
                                   allowed_values=BINARY_MASK_VALUES, min_area=min_area,
                                   source=f"COVID-19-CT-Seg {csv_file} {split}")
        for img, row in zip(coco["images"], chosen):
            img["patient_id"] = row["volume"]
        coco["info"]["volumes"] = vols
        path = os.path.join(out_dir, f"covid19_ct_seg_{split}.json")
        atomic_write_json(path, coco)
        logger.info("COVID-19-CT-Seg %s: volumes %s, %d slices, %d instances -> %s", split,
                    vols, len(coco["images"]), len(coco["annotations"]), path)
        out[split] = path
    return out


def public_index_path(out_root: str) -> str:
    """``<out_root>/public/index.json``."""
    return os.path.join(out_root, "public", "index.json")


def prepare_public_datasets(out_root: str, medseg: Optional[str] = None,
                            covid19_ct_seg: Optional[str] = None, ucsd: Optional[str] = None,
                            test_volumes: Optional[Sequence[str]] = None,
                            min_area: int = 100, mosmed: Optional[str] = None) -> Dict[str, Dict]:
    """Convert the given sources and write the registration index.

    Args:
        out_root: ``$DETECTRON2_DATASETS`` (converted files go to ``out_root/public``).
        medseg, covid19_ct_seg, ucsd, mosmed: source folders (with ``manifest.csv``); ``None``
            skips.
        test_volumes: COVID-19-CT-Seg test volumes (default: the last quarter, sorted).
    Returns:
        The index: dataset name -> registration entry. Entries of an earlier run for sources
        not given now are kept.
    """
    out_dir = os.path.join(out_root, "public")
    index_file = public_index_path(out_root)
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        with file_lock(index_file):  # a second writer waits: no mix of two runs' files
            clean_orphans(out_dir, kinds=("tmp",))
            entries = _convert_public(out_dir, medseg, covid19_ct_seg, ucsd, test_volumes,
                                      min_area, mosmed)
            index = _index_for_update(index_file)  # read-merge-write under the lock
            index.update(entries)
            atomic_write_json(index_file, index)
    except BaseException:
        if created:  # a failed first run leaves no empty public/ folder behind
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only if still empty: never removes files
        raise
    logger.info("public datasets index -> %s: %s", index_file, sorted(index))
    return index


def _cls_entries(prefix: str, folder: str, classes: Sequence[str],
                 extra_columns: Sequence[str] = ()) -> Dict[str, Dict]:
    """Index entries ``<prefix>_<split>`` of a classification manifest, one per split."""
    csv_file = os.path.abspath(os.path.join(folder, "manifest.csv"))
    rows = read_manifest(csv_file, ("label", "split") + tuple(extra_columns),
                         nonempty=("label", "split"))
    entries = {}
    for split in sorted({r["split"] for r in rows}):
        entries[f"{prefix}_{split}"] = {"type": "cls", "manifest": csv_file, "split": split,
                                        "classes": list(classes)}
        if extra_columns:
            entries[f"{prefix}_{split}"]["extra_columns"] = list(extra_columns)
    return entries


def _convert_public(out_dir: str, medseg: Optional[str], covid19_ct_seg: Optional[str],
                    ucsd: Optional[str], test_volumes: Optional[Sequence[str]],
                    min_area: int, mosmed: Optional[str] = None) -> Dict[str, Dict]:
    """Convert the given sources into ``out_dir``; returns their new index entries."""
    index: Dict[str, Dict] = {}
    if medseg:
        root = os.path.abspath(medseg)
        for key, path in medseg_to_coco(root, out_dir, min_area=min_area).items():
            split, mode = key.rsplit("_", 1)
            name = f"medseg_seg_{split}" if mode == "merge" else f"medseg_seg_sep_{split}"
            index[name] = {"type": "seg", "json": os.path.abspath(path), "image_root": root,
                           "classes": list(MEDSEG_CATEGORY_VALUES[mode])}
    if covid19_ct_seg:
        root = os.path.abspath(covid19_ct_seg)
        for split, path in covid19_ct_seg_to_coco(root, out_dir, test_volumes,
                                                  min_area=min_area).items():
            index[f"covid19_ct_seg_{split}"] = {
                "type": "seg", "json": os.path.abspath(path), "image_root": root,
                "classes": list(BINARY_LESION_VALUES)}
    if ucsd:
        index.update(_cls_entries("ucsd_cls", ucsd, UCSD_CLASSES))
    if mosmed:
        index.update(_cls_entries("mosmed_cls", mosmed, MOSMED_CLASSES, MOSMED_EXTRA_COLUMNS))
    return index


def read_public_index(index_file: str) -> Dict[str, Dict]:
    """The registration index (dataset name -> entry); ``{}`` when there is none.

    Raises:
        DatasetError: unreadable, not JSON, or not an object of entries; names the file.
    """
    if not os.path.isfile(index_file):
        return {}
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{index_file}: unreadable dataset index ({e})") from e
    if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.values()):
        raise DatasetError(f"{index_file}: not a dataset index (expected a JSON object of "
                           "dataset name -> entry)")
    return index


def _index_for_update(index_file: str) -> Dict[str, Dict]:
    """The current index, to merge new entries into; a corrupt one is kept aside as
    ``index.json.corrupt-<time>`` (with a warning) and replaced by a new one."""
    try:
        return read_public_index(index_file)
    except DatasetError as e:
        aside = f"{index_file}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(index_file, aside)
        logger.warning("%s; kept it as %s and writing a new index (entries of other sources "
                       "must be prepared again)", e, aside)
        return {}


def _entry_error(index_file: str, name: str, e: BaseException) -> BaseException:
    """A bad index entry's exception as the one-line DatasetError naming the index."""
    if isinstance(e, DatasetError):
        return e
    if isinstance(e, KeyError):
        return DatasetError(f"{index_file}: entry {name!r} lacks the field {e}")
    if isinstance(e, (TypeError, ValueError, AttributeError)):
        return DatasetError(f"{index_file}: entry {name!r} has a field of the wrong type ({e})")
    return e


def _register_entry(index_file: str, name: str, entry: Mapping) -> None:
    """Register one index entry (in place of the predefined lazy registration of ``name``, if
    any); on failure nothing of it stays registered.

    Raises:
        DatasetError: unknown type, missing fields or fields of the wrong type (names the index
            and the entry).
    """
    release(name)
    existed = name in DatasetCatalog.list() or name in MetadataCatalog.list()
    try:
        if entry.get("type") == "seg":
            register_ct_seg(name, entry["json"], entry["image_root"], entry["classes"])
        elif entry.get("type") == "cls":
            register_csv_cls(name, entry["manifest"], entry["classes"], split=entry["split"],
                             extra_columns=tuple(entry.get("extra_columns", ())))
        else:
            raise DatasetError(f"{index_file}: entry {name!r} has unknown type "
                               f"{entry.get('type')!r}")
    except BaseException as e:
        if not existed:  # registered before a later field failed: undo
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)
        error = _entry_error(index_file, name, e)
        if error is e:
            raise
        raise error from None


# The names datasets/prepare_public.py writes index entries for (their classes fixed by the
# converters above); registered lazily at import (:func:`register_public_lazily`). Splits of a
# classification manifest other than train / val / test need :func:`register_public_datasets`.
PREDEFINED_PUBLIC: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    **{f"medseg_seg_{s}": ("seg", tuple(MEDSEG_CATEGORY_VALUES["merge"]))
       for s in ("train", "test")},
    **{f"medseg_seg_sep_{s}": ("seg", tuple(MEDSEG_CATEGORY_VALUES["separate"]))
       for s in ("train", "test")},
    **{f"covid19_ct_seg_{s}": ("seg", tuple(BINARY_LESION_VALUES)) for s in ("train", "test")},
    **{f"ucsd_cls_{s}": ("cls", UCSD_CLASSES) for s in ("train", "val", "test")},
    **{f"mosmed_cls_{s}": ("cls", MOSMED_CLASSES) for s in ("train", "val", "test")},
}


def _indexed_entry(out_root: Optional[str], name: str) -> Tuple[str, Mapping]:
    """(index file, entry) of a predefined public name, read now; DatasetError when it is not
    prepared or its entry does not fit the name."""
    index_file = public_index_path(out_root or datasets_root())
    try:
        index = read_public_index(index_file)
        reason = _missing_entry(index_file, index, name)
    except DatasetError as e:
        reason = str(e)
    if reason is not None:
        raise DatasetError(f"dataset {name!r} is not prepared: {reason} ({PREPARE_HINT})")
    entry = index[name]
    kind, classes = PREDEFINED_PUBLIC[name]
    try:
        if entry.get("type") != kind or tuple(entry["classes"]) != tuple(classes):
            raise DatasetError(f"{index_file}: entry {name!r} is a {entry.get('type')!r} set of "
                               f"classes {entry.get('classes')}, expected {kind!r} with "
                               f"{list(classes)}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _entry_error(index_file, name, e) from None
    return index_file, entry


def _indexed_fields(out_root: Optional[str], name: str) -> Dict[str, str]:
    """The metadata file fields of a predefined public name (what ``register_ct_seg`` /
    ``register_csv_cls`` set)."""
    index_file, entry = _indexed_entry(out_root, name)
    try:
        if entry["type"] == "seg":
            return {"json_file": entry["json"], "image_root": entry["image_root"]}
        return {"manifest": entry["manifest"]}
    except (KeyError, TypeError) as e:
        raise _entry_error(index_file, name, e) from None


def _load_indexed(out_root: Optional[str], name: str) -> List[Dict]:
    """The dataset dicts of a predefined public name, its index entry read now."""
    index_file, entry = _indexed_entry(out_root, name)
    try:
        if entry["type"] == "seg":
            return load_ct_seg_json(entry["json"], entry["image_root"], name)
        return load_csv_manifest(entry["manifest"], list(entry["classes"]), None, entry["split"],
                                 extra_columns=tuple(entry.get("extra_columns", ())))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _entry_error(index_file, name, e) from None


def public_not_prepared(out_root: Optional[str], name: str) -> Optional[str]:
    """Why the public dataset ``name`` cannot be loaded from ``out_root`` (default: the dataset
    root of this moment): no index, a corrupt one, no entry for it; else ``None``. Reads the
    index: a run-time check, not for import."""
    index_file = public_index_path(out_root or datasets_root())
    try:
        return _missing_entry(index_file, read_public_index(index_file), name)
    except DatasetError as e:
        return str(e)


def _missing_entry(index_file: str, index: Mapping, name: str) -> Optional[str]:
    """Why ``index`` (read from ``index_file``) has no entry ``name``, or ``None``."""
    if name in index:
        return None
    return (f"no entry {name!r} in {index_file}" if os.path.isfile(index_file)
            else f"{index_file} not found")


def register_public_lazily(out_root: Optional[str] = None) -> List[str]:
    """Register every :data:`PREDEFINED_PUBLIC` name not registered yet, reading nothing: the
    index under ``out_root`` (default: ``$DETECTRON2_DATASETS`` when the dataset is loaded) is
    read at the first load. Returns the names registered now."""
    names = []
    registered = set(DatasetCatalog.list())
    for name, (kind, classes) in PREDEFINED_PUBLIC.items():
        if name in registered:
            continue
        register_lazily(name, functools.partial(_indexed_fields, out_root, name),
                        functools.partial(_load_indexed, out_root, name),
                        functools.partial(public_not_prepared, out_root, name), classes,
                        slice_classes=kind == "cls")
        names.append(name)
    return names


def register_public_datasets(out_root: str, registered: Sequence[str] = (),
                             replace: bool = False, strict: bool = True) -> List[str]:
    """Register the datasets listed in ``out_root/public/index.json`` (if present), skipping
    names in ``registered`` unless they still have their predefined (lazy) registration, which
    an entry replaces. With ``replace``, names already in Detectron2's catalogs (e.g. from an
    earlier index) are dropped and registered again from the current index. Returns the names
    registered now.

    Args:
        strict: raise :class:`DatasetError` for a corrupt index or a bad entry; ``False`` warns
            and skips it instead (for a tool that must go on, e.g. the one that rewrites it).
    """
    index_file = public_index_path(out_root)
    try:
        index = read_public_index(index_file)
    except DatasetError as e:
        if strict:
            raise
        logger.warning("%s; its datasets are not registered (run datasets/prepare_public.py "
                       "to write it again)", e)
        return []
    names = []
    for name, entry in index.items():
        if name in registered and not is_lazy(name):
            continue
        if replace and name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        try:
            _register_entry(index_file, name, entry)
        except DatasetError as e:
            if strict:
                raise
            logger.warning("%s; skipped", e)
            continue
        names.append(name)
    return names
