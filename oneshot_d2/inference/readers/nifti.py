"""NIfTI reader: one 3-D CT volume in HU per ``.nii`` / ``.nii.gz`` file (a 4th axis of length
1 is accepted), axial within 5 degrees, reoriented to display orientation."""
from __future__ import annotations

import logging
import os
import zlib
from typing import List, Optional, Sequence

import numpy as np

from ...data.orientation import canonical_to_display, display_affine
from ...errors import StudyError
from ..study import NiftiLayout, Study, display_positions
from .base import ReadOptions, StudyGroup, StudyReader, one_line, safe_name
from .geometry import check_axial

__all__ = ["NiftiReader", "NIFTI_EXTENSIONS", "load_nifti"]

logger = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def _nifti_stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def load_nifti(path: str, name: Optional[str] = None, source: Optional[str] = None,
               keep_identifiers: bool = False) -> Study:
    """Read a NIfTI CT volume (HU, scl_slope / scl_inter applied) as a :class:`Study`: the
    volume is reoriented to RAS+ (``nib.as_closest_canonical``) and its axial slices put in
    display orientation; the input's layout is kept for :meth:`Study.label_volume_image`.

    Raises:
        StudyError: unreadable / truncated file, not 3-D (a 4th axis of length 1 is accepted),
            degenerate or oblique affine.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    readable = (OSError, EOFError, ValueError, ImageFileError, zlib.error, MemoryError)
    if not os.path.isfile(path):
        raise StudyError(f"{path}: NIfTI file not found")
    if os.path.getsize(path) == 0:
        raise StudyError(f"{path}: empty NIfTI file (0 bytes)")
    try:
        img = nib.load(path)
    except readable as e:
        raise StudyError(f"{path}: unreadable NIfTI file ({one_line(e)})") from None
    shape = tuple(int(v) for v in img.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise StudyError(f"{path}: {len(shape)}-D volume (shape {shape}): one 3-D CT volume "
                         "expected")
    if min(shape[:3]) < 1:
        raise StudyError(f"{path}: empty volume (shape {shape})")
    affine = np.asarray(img.affine, dtype=np.float64)
    m = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(m)) < 1e-12:
        raise StudyError(f"{path}: degenerate affine (not invertible): {np.round(m, 4).tolist()}")
    ornt = nib.orientations.io_orientation(affine)
    # directions in canonical axis order (x, y, z) to check the obliquity
    canonical_dirs = np.zeros((3, 3))
    for axis in range(3):
        canonical_dirs[:, int(ornt[axis, 0])] = m[:, axis] * ornt[axis, 1]
    check_axial(path, canonical_dirs, f"axis codes {''.join(nib.aff2axcodes(affine))}")
    try:
        canon = nib.as_closest_canonical(img)
        data = canon.get_fdata(dtype=np.float32)
    except readable as e:
        raise StudyError(f"{path}: unreadable NIfTI data, truncated or corrupt "
                         f"({one_line(e)})") from None
    if data.ndim == 4:
        data = data[..., 0]
    bad = ~np.isfinite(data)
    if bad.any():
        logger.warning("%s: %d NaN / infinite voxel(s) set to -1024 HU", path, int(bad.sum()))
        data = np.where(bad, np.float32(-1024.0), data)
    lo, hi = (float(data.min()), float(data.max()))
    if lo > -500.0:
        logger.warning("%s: values %.4g..%.4g do not look like CT Hounsfield units (no air "
                       "below -500 HU)", path, lo, hi)
    pixels = canonical_to_display(data)
    aff = display_affine(np.asarray(canon.affine, dtype=np.float64), data.shape)
    zooms = [float(z) for z in canon.header.get_zooms()[:3]]
    spacing = (zooms[1], zooms[0], zooms[2])
    # slice labels: the slice's index along the input's own slice axis
    slice_axis = int(np.nonzero(ornt[:, 0] == 2)[0][0])
    flipped = ornt[slice_axis, 1] < 0
    n = data.shape[2]
    labels = [f"slice {n - 1 - k if flipped else k}" for k in range(n)]
    hdr = img.header
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    slope, inter = hdr.get_slope_inter()
    meta = {
        "modality": "CT",
        "shape": [int(v) for v in shape],
        "display_shape": [int(v) for v in pixels.shape],
        "axis_codes": list(nib.aff2axcodes(affine)),
        "affine": affine.tolist(),
        "zooms": [float(z) for z in hdr.get_zooms()],
        "qform_code": qcode,
        "sform_code": scode,
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "datatype": str(hdr.get_data_dtype()),
        # free text (converters write names, dates, protocol there): kept only when asked
        "description": hdr["descrip"].item().decode("latin-1", "replace").strip("\x00 ")
        if "descrip" in hdr and keep_identifiers else "",
        "hu_range": [lo, hi],
    }
    layout = NiftiLayout(shape=shape, affine=affine, header=hdr.copy(), ornt=ornt)
    return Study(name=name or safe_name(_nifti_stem(path)), source=source or path, kind="nifti",
                 pixels=pixels, is_hu=True, spacing=spacing,
                 positions=display_positions(aff, n), slice_labels=labels, affine=aff,
                 meta=meta, nifti_layout=layout)


class NiftiReader(StudyReader):
    """NIfTI CT volumes: one study per ``.nii`` / ``.nii.gz`` file, named after the file."""

    kind = "nifti"
    extensions = NIFTI_EXTENSIONS
    description = "NIfTI (.nii, .nii.gz)"

    def group(self, files: Sequence[str], source: str, given_directly: bool,
              errors: List[StudyError],
              options: Optional[ReadOptions] = None) -> List[StudyGroup]:
        return [(_nifti_stem(path), path, [path]) for path in files]

    def load(self, files: Sequence[str], name: Optional[str] = None,
             source: Optional[str] = None, options: Optional[ReadOptions] = None) -> Study:
        return load_nifti(files[0], name=name, source=source,
                          keep_identifiers=options is not None and options.keep_identifiers)
