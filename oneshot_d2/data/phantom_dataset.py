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
    annotations/seg_{train,test}_{merge,separate}.json  # COCO (see _write_annotations)
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
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import DatasetError
from ..utils.file_io import (
    atomic_write_json,
    file_mode,
    fsync_dir,
    recover_replaced_folder,
    replace_folder,
)
from ..utils.file_lock import file_lock
from ..utils.temp_names import tmp_prefix
from ..utils.testing import kill_point
from .phantom import COVID, CP, NORMAL, render_slice, sample_anatomy
from .transforms import lung_window

__all__ = ["PhantomSpec", "write_phantom_dataset", "prepare_phantom_dataset", "COVIDX_PREFIX",
           "phantom_is_complete", "phantom_incomplete_reason", "read_phantom_marker",
           "MARKER_FILE"]

logger = logging.getLogger(__name__)

# COVIDx-CT file-name prefixes by class id.
COVIDX_PREFIX = {NORMAL: "Normal", CP: "CP", COVID: "NCP"}
SPEC_FILE = "phantom.json"
# Written last into every set this module writes; --overwrite deletes nothing without it.
MARKER_FILE = ".oneshot_d2_phantom.json"
MARKER_TOOL = "oneshot_d2 datasets/prepare_phantom.py"


@dataclass
class PhantomSpec:
    """Parameters of a phantom dataset (all counts are slices).

    Class shares are (normal, CP, COVID-19). The segmentation set is lesion-rich like CNCB-NCOV's
    (mostly COVID-19-like slices, some CP-like, a few normal).
    """

    size: int = 256
    seg_train: int = 120
    seg_test: int = 40
    cls_train: int = 150
    cls_val: int = 30
    cls_test: int = 60
    seg_class_shares: Tuple[float, float, float] = (0.1, 0.3, 0.6)
    cls_class_shares: Tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    slices_per_patient: int = 4
    slice_thickness_mm: float = 5.0
    pixel_spacing_mm: float = 0.0  # 0 = 350 mm field of view / size
    save_hu: bool = False
    seed: int = 0
    extra: Dict[str, str] = field(default_factory=dict)

    def spacing(self) -> float:
        return self.pixel_spacing_mm or 350.0 / self.size


def _class_counts(total: int, shares: Sequence[float]) -> List[int]:
    shares = np.asarray(shares, dtype=np.float64)
    if total < 0 or len(shares) != 3 or (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"bad phantom counts/shares: total={total}, shares={list(shares)}")
    raw = total * shares / shares.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _patients(rng: np.random.Generator, counts: Sequence[int], per_patient: int,
              first_id: int) -> List[Tuple[int, int, int]]:
    """Group slices into patients: returns [(patient_id, class, n_slices)]."""
    out, pid = [], first_id
    for label, n in enumerate(counts):
        while n > 0:
            k = min(n, per_patient)
            out.append((pid, label, k))
            pid += 1
            n -= k
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _render_patient(rng: np.random.Generator, spec: PhantomSpec, label: int, n: int):
    anatomy = sample_anatomy(rng)
    z0 = rng.uniform(0.25, 0.55)
    zs = np.clip(z0 + np.arange(n) * rng.uniform(0.04, 0.08), 0.05, 0.95)
    return [render_slice(rng, spec.size, label, anatomy, float(z)) for z in zs]


def _write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")


def _write_segmentation(rng, spec: PhantomSpec, out: str) -> Dict[str, int]:
    seg = os.path.join(out, "segmentation")
    for sub in ("imgs", "masks") + (("hu", "nifti") if spec.save_hu else ()):
        os.makedirs(os.path.join(seg, sub), exist_ok=True)
    stats = {}
    first_id = 1000
    for split, total in (("train", spec.seg_train), ("test", spec.seg_test)):
        names = []
        for pid, label, n in _patients(rng, _class_counts(total, spec.seg_class_shares),
                                       spec.slices_per_patient, first_id):
            slices = _render_patient(rng, spec, label, n)
            for k, s in enumerate(slices):
                stem = f"{pid}_{k:03d}"
                img = lung_window(s.hu)
                if not cv2.imwrite(os.path.join(seg, "imgs", stem + ".jpg"), img,
                                   [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise OSError(f"could not write {stem}.jpg")
                _write_png(os.path.join(seg, "masks", stem + ".png"), s.mask)
                if spec.save_hu:
                    hu16 = np.clip(np.rint(s.hu + 1024.0), 0, 65535).astype(np.uint16)
                    _write_png(os.path.join(seg, "hu", stem + ".png"), hu16)
                names.append(stem + ".jpg")
            if spec.save_hu:
                _write_nifti(seg, pid, slices, spec)
            first_id = max(first_id, pid + 1)
        with open(os.path.join(seg, f"{split}_split_segmentation.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        stats[f"seg_{split}"] = len(names)
    return stats


def _write_nifti(seg: str, pid: int, slices, spec: PhantomSpec) -> None:
    import nibabel as nib

    # NIfTI is (x, y, z) in RAS+: transpose rows/cols and flip to map the radiological display.
    ct = np.stack([s.hu.T[::-1, ::-1] for s in slices], axis=-1).astype(np.int16)
    mask = np.stack([s.mask.T[::-1, ::-1] for s in slices], axis=-1).astype(np.uint8)
    sp = spec.spacing()
    affine = np.diag([sp, sp, spec.slice_thickness_mm, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), os.path.join(seg, "nifti", f"{pid}_ct.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), os.path.join(seg, "nifti", f"{pid}_mask.nii.gz"))


def _write_classification(rng, spec: PhantomSpec, out: str) -> Dict[str, int]:
    cls = os.path.join(out, "classification")
    os.makedirs(os.path.join(cls, "images"), exist_ok=True)
    stats = {}
    first_id = 1
    for split, total in (("train", spec.cls_train), ("val", spec.cls_val),
                         ("test", spec.cls_test)):
        lines = []
        for pid, label, n in _patients(rng, _class_counts(total, spec.cls_class_shares),
                                       spec.slices_per_patient, first_id):
            scan = int(rng.integers(100, 9999))
            for k, s in enumerate(_render_patient(rng, spec, label, n)):
                name = f"{COVIDX_PREFIX[label]}_{pid}_{scan}_{k:04d}.png"
                _write_png(os.path.join(cls, "images", name), lung_window(s.hu))
                x1, y1, x2, y2 = s.body_box
                lines.append(f"{name} {label} {x1} {y1} {x2} {y2}")
            first_id = max(first_id, pid + 1)
        with open(os.path.join(cls, f"{split}_COVIDx_CT.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        stats[f"cls_{split}"] = len(lines)
    return stats


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


ANNOTATION_SPLITS = ("train", "test")
ANNOTATION_MODES = ("merge", "separate")


def _annotation_files() -> List[Tuple[str, str, str]]:
    """``(split, mode, path relative to the dataset root)`` of every COCO annotation file."""
    from .datasets.builtin import seg_json_path

    return [(split, mode, seg_json_path("", split, mode))
            for split in ANNOTATION_SPLITS for mode in ANNOTATION_MODES]


def _missing_annotations(root: str) -> List[str]:
    """The annotation files (relative to ``root``) that ``root`` lacks."""
    return [rel for _, _, rel in _annotation_files() if not os.path.isfile(os.path.join(root, rel))]


def _write_annotations(root: str, min_area: int, only: Optional[Sequence[str]] = None
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


def _restore_annotations(root: str, min_area: int) -> None:
    """Write again the annotation files that the complete set in ``root`` lacks (the caller
    holds its lock), with the ``min_area`` the marker records (so they equal the lost ones),
    and record them in the marker."""
    missing = _missing_annotations(root)
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
    _write_annotations(root, min_area, only=missing)
    if os.path.isfile(os.path.join(root, MARKER_FILE)) and not marker.get("legacy"):
        recorded_files = list(marker.get("annotations") or [])
        if not set(missing) <= set(recorded_files) or marker.get("min_area") != min_area:
            marker["annotations"] = sorted(set(recorded_files) | set(missing))
            marker["min_area"] = min_area
            atomic_write_json(os.path.join(root, MARKER_FILE), marker)


def _write_tree(out: str, spec: PhantomSpec, min_area: Optional[int]) -> Dict[str, int]:
    """Render the whole dataset into the (new, empty) folder ``out``: slices, split files,
    ``phantom.json``, the COCO annotations (unless ``min_area`` is None) and, last, the
    marker."""
    from ..version import __version__

    rng = np.random.default_rng(spec.seed)
    seg_rng, cls_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**31, 2))
    stats = _write_segmentation(seg_rng, spec, out)
    kill_point("phantom-writing")
    stats.update(_write_classification(cls_rng, spec, out))
    with open(os.path.join(out, SPEC_FILE), "w") as f:
        json.dump({"spec": asdict(spec), "counts": stats}, f, indent=2)
    annotations = [] if min_area is None else _write_annotations(out, min_area)
    atomic_write_json(os.path.join(out, MARKER_FILE), {
        "tool": MARKER_TOOL, "version": __version__, "spec": asdict(spec), "counts": stats,
        "min_area": min_area, "annotations": annotations})
    return stats


def _recover_interrupted(root: str) -> None:
    """Undo what a killed run left next to ``root``
    (:func:`~oneshot_d2.utils.file_io.recover_replaced_folder` with phantom datasets)."""
    recover_replaced_folder(root, phantom_is_complete, "phantom dataset")


def _check_replaceable(root: str) -> None:
    """Raise unless ``root`` may be deleted to make room for a new set: a phantom dataset
    written by this module (complete or not), or an empty folder."""
    if os.path.isdir(root) and not os.path.islink(root) and not os.listdir(root):
        return
    if os.path.isdir(root) and read_phantom_marker(root) is not None:
        return
    what = "folder" if os.path.isdir(root) else "file"
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
    parent, base = os.path.split(root)
    tmp = tempfile.mkdtemp(prefix=tmp_prefix(base), dir=parent)
    try:
        os.chmod(tmp, file_mode(folder=True))
        stats = _write_tree(tmp, spec, min_area)
        replace_folder(tmp, root, kill_stage="phantom")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
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
    with file_lock(root):
        _recover_interrupted(root)
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
    with file_lock(root):
        _recover_interrupted(root)
        if not overwrite and phantom_is_complete(root):
            _restore_annotations(root, min_area)
            return False, dict(read_phantom_marker(root)["counts"])
        return True, _write_locked(root, spec, overwrite, min_area)
