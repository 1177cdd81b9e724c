"""Rendering a phantom dataset's slices and writing them in the CNCB-NCOV (segmentation) and
COVIDx-CT (classification) layouts; the layout is drawn in
:mod:`oneshot_d2.data.phantom_dataset`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .phantom import COVID, CP, NORMAL, render_slice, sample_anatomy
from .transforms import lung_window

__all__ = ["PhantomSpec", "COVIDX_PREFIX", "write_segmentation", "write_classification",
           "write_patient_nifti"]

# COVIDx-CT file-name prefixes by class id.
COVIDX_PREFIX = {NORMAL: "Normal", CP: "CP", COVID: "NCP"}
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


def write_segmentation(rng, spec: PhantomSpec, out: str) -> Dict[str, int]:
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
                write_patient_nifti(seg, pid, slices, spec)
            first_id = max(first_id, pid + 1)
        with open(os.path.join(seg, f"{split}_split_segmentation.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        stats[f"seg_{split}"] = len(names)
    return stats


def write_patient_nifti(seg: str, pid: int, slices, spec: PhantomSpec) -> None:
    import nibabel as nib

    # NIfTI is (x, y, z) in RAS+: transpose rows/cols and flip to map the radiological display.
    ct = np.stack([s.hu.T[::-1, ::-1] for s in slices], axis=-1).astype(np.int16)
    mask = np.stack([s.mask.T[::-1, ::-1] for s in slices], axis=-1).astype(np.uint8)
    sp = spec.spacing()
    affine = np.diag([sp, sp, spec.slice_thickness_mm, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), os.path.join(seg, "nifti", f"{pid}_ct.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), os.path.join(seg, "nifti", f"{pid}_mask.nii.gz"))


def write_classification(rng, spec: PhantomSpec, out: str) -> Dict[str, int]:
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
