"""Geometry shared by the DICOM and NIfTI readers: the axial check and the way from a stored
volume with a RAS+ affine to display-oriented slices."""
from __future__ import annotations

import math

import numpy as np

from ...data.orientation import canonical_to_display, display_affine
from ...errors import StudyError
from ..study import OBLIQUE_LIMIT_DEG, axis_angles

__all__ = ["check_axial", "to_display"]


def check_axial(where: str, directions: np.ndarray, what: str) -> None:
    """Refuse directions (3, 3 columns: column axis, row axis, slice axis) more than
    OBLIQUE_LIMIT_DEG from the patient axes, or whose slice axis is not z."""
    angles = axis_angles(directions)
    unit = directions / np.linalg.norm(directions, axis=0, keepdims=True)
    tilt = math.degrees(math.acos(min(1.0, abs(float(unit[2, 2])))))
    if tilt > OBLIQUE_LIMIT_DEG:
        raise StudyError(f"{where}: not an axial acquisition: the slice normal is {tilt:.1f} "
                         f"degrees from the patient z axis (more than {OBLIQUE_LIMIT_DEG:g}) "
                         f"({what}); only axial CT is supported")
    worst = max(angles[:2])
    if worst > OBLIQUE_LIMIT_DEG:
        raise StudyError(f"{where}: oblique acquisition: the row / column directions are "
                         f"{worst:.1f} degrees from the patient x / y axes (more than "
                         f"{OBLIQUE_LIMIT_DEG:g}) ({what}); only axial CT is supported")


def to_display(stored: np.ndarray, ras_affine: np.ndarray):
    """Array (X', Y', N) with RAS affine -> (display pixels (N, H, W), display affine,
    ornt of the stored axes)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(ras_affine)
    canonical = nib.orientations.apply_orientation(stored, ornt)
    can_affine = ras_affine @ nib.orientations.inv_ornt_aff(ornt, stored.shape[:3])
    return canonical_to_display(canonical), display_affine(can_affine, canonical.shape), ornt
