"""The marker of a phantom dataset (written last: the set is complete) and the completeness
check of a set against the counts its marker records."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

__all__ = ["SPEC_FILE", "MARKER_FILE", "MARKER_TOOL", "read_phantom_marker",
           "phantom_incomplete_reason", "phantom_is_complete"]

SPEC_FILE = "phantom.json"
# Written last into every set this module writes; --overwrite deletes nothing without it.
MARKER_FILE = ".oneshot_d2_phantom.json"
MARKER_TOOL = "oneshot_d2 datasets/prepare_phantom.py"



def _read_json(path: str) -> Optional[dict]:
    """The JSON object in ``path``; ``None`` when missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_phantom_marker(root: str) -> Optional[dict]:
    """The marker of a phantom dataset written by this module (``{"tool", "version", "spec",
    "counts", "annotations"}``), or ``None`` when ``root`` holds none. A set written before
    markers existed is recognised by its ``phantom.json`` (``spec`` and ``counts``)."""
    marker = _read_json(os.path.join(root, MARKER_FILE))
    if marker is not None and marker.get("tool") == MARKER_TOOL and "counts" in marker:
        return marker
    legacy = _read_json(os.path.join(root, SPEC_FILE))
    if legacy is not None and isinstance(legacy.get("spec"), dict) \
            and isinstance(legacy.get("counts"), dict):
        return {"tool": MARKER_TOOL, "legacy": True, "annotations": [], **legacy}
    return None


def _split_entries(path: str) -> Optional[List[str]]:
    """First words of the non-empty lines of a split file; ``None`` when it is missing."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return None


def _split_files(root: str, key: str) -> Tuple[str, str, str]:
    """(split file, image folder, mask folder or "") of a ``counts`` key (``seg_train``...)."""
    task, split = key.split("_", 1)
    if task == "seg":
        seg = os.path.join(root, "segmentation")
        return (os.path.join(seg, f"{split}_split_segmentation.txt"), os.path.join(seg, "imgs"),
                os.path.join(seg, "masks"))
    cls = os.path.join(root, "classification")
    return os.path.join(cls, f"{split}_COVIDx_CT.txt"), os.path.join(cls, "images"), ""


def _listing(folder: str) -> set:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def phantom_incomplete_reason(root: str) -> Optional[str]:
    """Why ``root`` is not a complete phantom dataset (``None`` when it is one): no marker
    (written last), or a split file / slice / mask file missing or a count that differs from
    the marker's. Missing COCO annotation files do not count (they are derived from the masks
    and :func:`prepare_phantom_dataset` writes them again)."""
    if not os.path.isdir(root):
        return "no such folder"
    marker = read_phantom_marker(root)
    if marker is None:
        return f"no marker file {MARKER_FILE}"
    listings: Dict[str, set] = {}
    for key, count in marker["counts"].items():
        if not (key.startswith("seg_") or key.startswith("cls_")):
            continue
        split_file, images, masks = _split_files(root, key)
        entries = _split_entries(split_file)
        if entries is None or len(entries) != count:
            found = "missing" if entries is None else f"{len(entries)} entries"
            return f"{split_file}: {found}, the marker says {count}"
        for folder, names in ((images, entries),
                              (masks, [os.path.splitext(n)[0] + ".png" for n in entries])):
            if not folder:
                continue
            listing = listings.setdefault(folder, _listing(folder))
            missing = [n for n in names if n not in listing]
            if missing:
                return (f"{folder}: {len(missing)} of the {len(names)} files of {key} are "
                        f"missing (e.g. {missing[0]})")
    return None


def phantom_is_complete(root: str) -> bool:
    """True when ``root`` holds a complete phantom dataset written by this module: its marker
    (written last) and every split, slice and mask file the marker counts. The COCO annotations
    are derived from those and not part of it: :func:`prepare_phantom_dataset` writes the
    missing ones again."""
    return phantom_incomplete_reason(root) is None
