"""Classification (slice-label) datasets and the public registration API.

Dataset dicts of classification sets carry ``file_name``, ``image_id``, ``image_label`` (int class
index) and, when known, ``patient_id``. Their metadata carries ``image_classes`` (class names in
index order) and ``evaluator_type = "ct_cls"``. Segmentation sets are COCO JSON registered through
Detectron2's ``load_coco_json`` (``evaluator_type = "coco"``).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ...errors import DatasetError
from ..io import read_manifest

__all__ = [
    "COVIDX_CLASSES", "CT_CLS_EVALUATOR", "parse_label", "parse_covidx_name", "load_covidx_split",
    "load_csv_manifest", "register_ct_seg", "register_ct_cls", "register_covidx_cls",
    "register_csv_cls",
]

logger = logging.getLogger(__name__)

# COVIDx-CT class ids: 0 normal, 1 common pneumonia, 2 COVID-19 (NCP).
COVIDX_CLASSES = ("Normal", "CP", "COVID-19")
CT_CLS_EVALUATOR = "ct_cls"


def parse_label(value: str, class_names: Sequence[str], where: str = "") -> int:
    """Parse a class given as an index (``"2"``) or a name (``"COVID-19"``, case-insensitive).

    Raises:
        DatasetError: unknown label; the message names ``where`` (file and line).
    """
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if 0 <= idx < len(class_names):
            return idx
    else:
        lowered = [c.lower() for c in class_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    raise DatasetError(f"{where}: unknown label {text!r}; expected one of "
                       f"{list(class_names)} or an index 0..{len(class_names) - 1}")


def parse_covidx_name(file_name: str) -> Optional[str]:
    """Patient id of a COVIDx-CT style name ``<cls>_<patient>_<scan>_<slice>.png``, else None."""
    parts = os.path.splitext(os.path.basename(file_name))[0].split("_")
    return parts[1] if len(parts) >= 4 else None


def _check_image(path: str, where: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(f"{where}: image file {path} not found")


def load_covidx_split(split_file: str, image_root: str,
                      class_names: Sequence[str] = COVIDX_CLASSES,
                      check_files: bool = True) -> List[Dict]:
    """Load a COVIDx-CT split file (``<file> <class> <x1> <y1> <x2> <y2>`` per line).

    The boxes (body crops) are kept as ``body_box`` and otherwise unused, as in the papers.

    Args:
        split_file: the split list.
        image_root: folder holding the images.
        class_names: names of class ids 0..C-1.
        check_files: raise if a listed image is missing.

    Returns:
        Detectron2 dataset dicts with ``image_label`` and ``patient_id``.

    Raises:
        DatasetError: missing/empty split file, malformed line, unknown class, missing image.
    """
    if not os.path.isfile(split_file):
        raise DatasetError(f"{split_file}: split file not found")
    dicts = []
    with open(split_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{split_file}:{lineno}"
            if len(fields) not in (2, 6):
                raise DatasetError(f"{where}: expected '<file> <class> [x1 y1 x2 y2]', "
                                   f"got {line.strip()!r}")
            path = os.path.join(image_root, fields[0])
            if check_files:
                _check_image(path, where)
            record = {"file_name": path, "image_id": os.path.splitext(fields[0])[0],
                      "image_label": parse_label(fields[1], class_names, where),
                      "patient_id": parse_covidx_name(fields[0])}
            if len(fields) == 6:
                try:
                    record["body_box"] = [int(v) for v in fields[2:]]
                except ValueError:
                    raise DatasetError(f"{where}: box values must be integers") from None
            dicts.append(record)
    if not dicts:
        raise DatasetError(f"{split_file}: empty split (no image listed)")
    return dicts


# Accepted names of the image-path column of a CSV manifest, in order of preference.
FILE_COLUMNS = ("file_name", "path", "image", "filename")


def _read_manifest(csv_file: str) -> List[Dict[str, str]]:
    """Rows of a classification manifest (may be empty), each with ``file_name`` and ``label``."""
    return read_manifest(csv_file, ("label", FILE_COLUMNS), allow_empty=True,
                         expected="file_name (or path),label[,patient_id][,split]",
                         nonempty=("file_name", "label"))


def manifest_classes(csv_file: str) -> List[str]:
    """Sorted distinct non-numeric labels of a manifest (used when no class names are given)."""
    labels = sorted({row["label"].strip() for row in _read_manifest(csv_file)})
    if any(lab.isdigit() for lab in labels):
        raise DatasetError(f"{csv_file}: numeric labels need explicit class names")
    return labels


def load_csv_manifest(csv_file: str, class_names: Sequence[str], image_root: Optional[str] = None,
                      split: Optional[str] = None, check_files: bool = True,
                      extra_columns: Sequence[str] = ()) -> List[Dict]:
    """Load a generic CSV manifest ``file_name,label[,patient_id][,split]``.

    Args:
        csv_file: the manifest; ``file_name`` is relative to ``image_root`` (default: the CSV's
            folder) unless absolute.
        class_names: class names in index order; labels may be names or indices.
        split: keep only rows whose ``split`` column equals this (requires the column).
        check_files: raise if a listed image is missing.
        extra_columns: further columns copied into every dict under their own name (e.g.
            MosMed's ``severity``), as strings.

    Raises:
        DatasetError: missing file/columns, unknown label, missing image, no rows for the split.
    """
    rows = _read_manifest(csv_file)
    absent = [c for c in extra_columns if rows and c not in rows[0]]
    if absent:
        raise DatasetError(f"{csv_file}: no column {absent[0]!r} (columns: {sorted(rows[0])})")
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(csv_file))
    dicts = []
    for lineno, row in enumerate(rows, start=2):
        where = f"{csv_file}:{lineno}"
        if split is not None:
            if "split" not in row:
                raise DatasetError(f"{csv_file}: split={split!r} requested but the manifest has "
                                   "no 'split' column")
            if not row["split"]:
                raise DatasetError(f"{where}: empty 'split' cell")
            if row["split"] != split:
                continue
        path = os.path.join(root, row["file_name"].strip())
        if check_files:
            _check_image(path, where)
        record = {"file_name": path,
                  "image_id": os.path.splitext(row["file_name"].strip())[0],
                  "image_label": parse_label(row["label"], class_names, where),
                  "patient_id": (row.get("patient_id") or "").strip() or None}
        record.update({c: (row.get(c) or "").strip() for c in extra_columns})
        dicts.append(record)
    if not dicts:
        raise DatasetError(f"{csv_file}: empty split"
                           + (f" (no row with split == {split!r})" if split else ""))
    return dicts


def register_ct_cls(name: str, loader: Callable[[], List[Dict]], class_names: Sequence[str],
                    **metadata) -> None:
    """Register a classification dataset.

    Args:
        name: dataset name, e.g. ``"mylab_cls_train"``.
        loader: returns the dataset dicts (called lazily by ``DatasetCatalog.get``).
        class_names: names of the image classes in index order.
        metadata: extra ``MetadataCatalog`` fields.
    """
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(image_classes=list(class_names),
                                  evaluator_type=CT_CLS_EVALUATOR, **metadata)


def register_covidx_cls(name: str, split_file: str, image_root: str,
                        class_names: Sequence[str] = COVIDX_CLASSES) -> None:
    """Register a COVIDx-CT split file as a classification dataset."""
    register_ct_cls(name, lambda: load_covidx_split(split_file, image_root, class_names),
                    class_names, split_file=split_file, image_root=image_root)


def register_csv_cls(name: str, csv_file: str, class_names: Optional[Sequence[str]] = None,
                     image_root: Optional[str] = None, split: Optional[str] = None,
                     extra_columns: Sequence[str] = ()) -> None:
    """Register a CSV manifest (optionally one ``split`` of it) as a classification dataset.

    ``class_names`` defaults to the manifest's sorted distinct labels (read now);
    ``extra_columns`` are kept in the dataset dicts (:func:`load_csv_manifest`).
    """
    names = list(class_names) if class_names is not None else manifest_classes(csv_file)
    extra = tuple(extra_columns)
    register_ct_cls(name, lambda: load_csv_manifest(csv_file, names, image_root, split,
                                                    extra_columns=extra), names,
                    manifest=csv_file)


def _check_categories(json_file: str, dataset_name: str, categories: List[Dict]) -> None:
    """Raise when the JSON's category names (in id order, as ``load_coco_json`` reads them)
    differ from the class names the dataset was registered with."""
    registered = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    if registered is not None and list(registered) != names:
        raise DatasetError(
            f"{json_file}: categories {names} differ from the class names {list(registered)} "
            f"that dataset {dataset_name!r} was registered with (register_ct_seg class_names)")


def _check_images_exist(json_file: str, dataset_name: str, dicts: List[Dict]) -> None:
    """Raise naming the first image file of ``dicts`` that is missing, and how many are."""
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise DatasetError(
            f"{missing[0]}: image file not found ({len(missing)} of {len(dicts)} images of "
            f"dataset {dataset_name!r} missing; annotations {json_file}; wrong image_root?)")


def load_ct_seg_json(json_file: str, image_root: str, dataset_name: str) -> List[Dict]:
    """Detectron2's ``load_coco_json`` plus the images' ``patient_id`` (when the JSON has it),
    with a clear error for a missing or malformed file, category names that differ from the
    registered class names, or missing images."""
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: COCO annotation file not found (dataset "
                           f"{dataset_name!r})")
    try:
        with open(json_file, encoding="utf-8") as f:
            coco = json.load(f)
        images = coco["images"]
        _check_categories(json_file, dataset_name, coco["categories"])
        dicts = load_coco_json(json_file, image_root, dataset_name)
    except DatasetError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{json_file}: not a valid COCO instance file ({e})") from e
    _check_images_exist(json_file, dataset_name, dicts)
    patients = {img["id"]: img.get("patient_id") for img in images}
    for d in dicts:
        d["patient_id"] = patients.get(d["image_id"])
    return dicts


def register_ct_seg(name: str, json_file: str, image_root: str,
                    class_names: Optional[Sequence[str]] = None) -> None:
    """Register a COCO instance JSON (e.g. from :func:`cncb_masks_to_coco`) as a lesion
    segmentation dataset: what Detectron2's ``register_coco_instances`` does, keeping the
    images' ``patient_id`` in the dataset dicts (used by the dataset checker)."""
    DatasetCatalog.register(name, lambda: load_ct_seg_json(json_file, image_root, name))
    metadata = {"thing_classes": list(class_names)} if class_names else {}
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **metadata)
