"""The :class:`Study` container of the predict feature: one CT study (a DICOM series, a NIfTI
volume or image slices) as slices in the display orientation of the training data, with its
geometry, and the way back from a label volume to the input's geometry.

Display orientation and its map to RAS+ NIfTI arrays: :mod:`oneshot_d2.data.orientation`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from ..data.orientation import display_to_canonical

if TYPE_CHECKING:  # pragma: no cover
    import nibabel

__all__ = ["Study", "NiftiLayout", "DicomLayout", "KINDS", "OBLIQUE_LIMIT_DEG",
           "axis_angles", "display_positions"]

KINDS = ("dicom", "nifti", "image")
# Largest angle (degrees) between a voxel axis and the nearest patient axis that still counts
# as an axial acquisition; more is refused (the model was trained on axial slices).
OBLIQUE_LIMIT_DEG = 5.0


@dataclass(eq=False)
class NiftiLayout:
    """What :meth:`Study.label_volume_image` needs to write labels in a NIfTI input's layout.

    Attributes:
        shape: the input's array shape (3 or 4 axes, the 4th of length 1).
        affine: (4, 4) the input's affine (``img.affine``).
        header: a copy of the input's header (qform / sform and their codes, units...).
        ornt: (3, 2) ``nib.orientations.io_orientation(affine)``: input axes -> RAS+ axes.
    """

    shape: Tuple[int, ...]
    affine: np.ndarray
    header: Any
    ornt: np.ndarray


@dataclass(eq=False)
class DicomLayout:
    """What a DICOM output (:mod:`.dicom_seg`) needs to put labels back on a series' images.

    Attributes:
        files: the series' files, one per slice, in the order of :attr:`Study.pixels`
            (inferior -> superior).
        ornt: (3, 2) ``nib.orientations.io_orientation`` of the stored images laid out as
            ``array[column, row, slice]``: stored axes -> RAS+ axes.
        headers: the files' headers, read once by :func:`.dicom_sources.source_headers`
            (``None`` until then).
    """

    files: List[str]
    ornt: np.ndarray
    headers: Optional[List[Any]] = field(default=None, repr=False)



def axis_angles(directions: np.ndarray) -> List[float]:
    """Angle (degrees) between each column of ``directions`` (3, n) and its nearest patient
    axis (x, y or z, either sign)."""
    out = []
    for v in np.asarray(directions, dtype=np.float64).T:
        norm = float(np.linalg.norm(v))
        cos = float(np.max(np.abs(v))) / norm if norm > 0 else 0.0
        out.append(math.degrees(math.acos(min(1.0, cos))))
    return out


def display_positions(affine: np.ndarray, n: int) -> np.ndarray:
    """(n,) float64 slice positions (mm) of a display volume: the projection of each slice's
    origin on the unit slice axis of ``affine`` (increasing with k)."""
    a = np.asarray(affine, dtype=np.float64)
    axis = a[:3, 2] / np.linalg.norm(a[:3, 2])
    origins = a[:3, 3][None, :] + np.arange(n)[:, None] * a[:3, 2][None, :]
    return origins @ axis


@dataclass(eq=False)
class Study:
    """One CT study ready for the predictor.

    Attributes:
        name: unique, file-system-safe study name (the output folder name).
        source: the input path (file or folder) it came from.
        kind: ``"dicom"``, ``"nifti"`` or ``"image"``.
        pixels: (N, H, W) slices in display orientation (module docstring): float32 Hounsfield
            units when ``is_hu``, else uint8 already windowed.
        is_hu: whether ``pixels`` holds Hounsfield units.
        spacing: (row spacing, column spacing, slice spacing) in mm; ``None`` when unknown
            (plain image files). Slice spacing: median distance between consecutive slice
            positions, or SliceThickness / pixdim[3] for a single slice.
        positions: (N,) float64 slice positions along the slice normal (oriented inferior ->
            superior, increasing with k) in mm; ``None`` when unknown.
        slice_labels: per slice, its source file name, or ``"slice 12"`` for volumes (the
            0-based slice index in the input file's own voxel order).
        affine: (4, 4) RAS+ affine of the display volume laid out as
            ``pixels.transpose(2, 1, 0)`` (array[column, row, slice]); image files without
            geometry: the identity.
        meta: JSON-serialisable geometry / identity read from the input (modality, ids,
            orientation, rescale, shape, spacing, axis codes...).
        nifti_layout: the NIfTI input's layout (:class:`NiftiLayout`), ``None`` otherwise.
        dicom_layout: the DICOM series' files and stored layout (:class:`DicomLayout`),
            ``None`` otherwise.
    """

    name: str
    source: str
    kind: str
    pixels: np.ndarray
    is_hu: bool
    spacing: Optional[Tuple[float, float, float]]
    positions: Optional[np.ndarray]
    slice_labels: List[str]
    affine: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)
    nifti_layout: Optional[NiftiLayout] = field(default=None, repr=False)
    dicom_layout: Optional[DicomLayout] = field(default=None, repr=False)

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])

    def labels_on_source_images(self, labels: np.ndarray) -> np.ndarray:
        """A DICOM series' labels as its images store them.

        Args:
            labels: (N, H, W) labels in display orientation, the shape of ``pixels``.
        Returns:
            (N, Rows, Columns) array: ``out[k]`` lies on ``dicom_layout.files[k]``'s pixels
            (the display flips / transposition undone).
        Raises:
            ValueError: not a DICOM study, or ``labels`` not of the shape of ``pixels``.
        """
        import nibabel as nib

        if self.dicom_layout is None:
            raise ValueError(f"{self.name}: not a DICOM series ({self.kind} input)")
        labels = np.asarray(labels)
        if labels.shape != self.pixels.shape:
            raise ValueError(f"{self.name}: label volume shape {labels.shape} differs from the "
                             f"study's {self.pixels.shape} (N, H, W)")
        to_stored = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(("R", "A", "S")), self.dicom_layout.ornt)
        stored = nib.orientations.apply_orientation(display_to_canonical(labels), to_stored)
        return np.ascontiguousarray(stored.transpose(2, 1, 0))  # [column, row, slice] -> (N, R, C)

    def label_volume_image(self, labels: np.ndarray) -> "nibabel.Nifti1Image":
        """A label volume as a NIfTI image in the input's geometry (save it with
        ``nibabel.save``).

        Args:
            labels: (N, H, W) integer labels (0..255) in display orientation, the shape of
                ``pixels``.

        Returns:
            uint8 ``Nifti1Image``: for a NIfTI input, the input's array shape, axis order,
            affine and qform / sform codes (the canonical reorientation undone); for DICOM,
            ``labels`` laid out as ``array[column, row, slice]`` with :attr:`affine` (from
            ImagePositionPatient / ImageOrientationPatient / PixelSpacing, LPS -> RAS), qform
            and sform codes 1 (scanner); for images, the same layout with :attr:`affine`.

        Raises:
            ValueError: ``labels`` does not have the shape of ``pixels`` or values outside
                0..255.
        """
        import nibabel as nib

        labels = np.asarray(labels)
        if labels.shape != self.pixels.shape:
            raise ValueError(f"{self.name}: label volume shape {labels.shape} differs from the "
                             f"study's {self.pixels.shape} (N, H, W)")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"{self.name}: labels must be in 0..255, got "
                             f"{labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
        layout = self.nifti_layout
        if layout is not None:
            canonical = display_to_canonical(labels)
            to_input = nib.orientations.ornt_transform(
                nib.orientations.axcodes2ornt(("R", "A", "S")), layout.ornt)
            data = nib.orientations.apply_orientation(canonical, to_input)
            data = np.ascontiguousarray(data).reshape(layout.shape)
            header = layout.header.copy()
            header.set_data_dtype(np.uint8)
            # affine None: the header's own qform / sform (and their codes) stay as they were
            img = nib.Nifti1Image(data, None, header)
            img.header.set_slope_inter(1.0, 0.0)
            img.header["cal_min"], img.header["cal_max"] = 0, 0
            # the input's free text and extensions (names, dates, protocols) are not the labels'
            for key in ("descrip", "aux_file", "db_name", "intent_name"):
                if key in img.header:
                    img.header[key] = b""
            img.header.extensions.clear()
            return img
        img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), self.affine)
        img.header.set_data_dtype(np.uint8)
        img.header.set_xyzt_units("mm")
        if self.kind == "dicom":
            img.set_qform(self.affine, code=1)
            img.set_sform(self.affine, code=1)
        return img
