"""Study readers of the predict feature: find the studies under the given files / folders
(:func:`find_studies`, headers only) and load each one as a :class:`~.volume.Study` in display
orientation and Hounsfield units (:meth:`StudyRef.load`).

Inputs:

* **DICOM** (``.dcm``, ``.dicom`` or any other name whose file starts with the DICM preamble):
  a file is a one-slice study; a folder (tree) gives one study per SeriesInstanceUID. CT only,
  axial (within 5 degrees), one frame and one grey channel per file, RescaleSlope and
  RescaleIntercept present; compressed transfer syntaxes need the ``dicom`` extra
  (``pip install 'oneshot_d2[dicom]'``: pylibjpeg).
* **NIfTI** (``.nii``, ``.nii.gz``): one 3-D CT volume in HU per file (a 4th axis of length 1
  is accepted), axial within 5 degrees.
* **Images** (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``): 8-bit slices
  (grey, RGB, RGBA, palette: converted to grey) are taken as already windowed; 16-bit grey
  slices hold HU + :data:`PNG_HU_OFFSET` (the phantom's ``hu/`` PNGs). A single file is a
  one-slice study, a folder of images one study (slices in natural name order).

Every problem with an input is a :class:`~oneshot_d2.errors.StudyError` whose one-line message
names the file (or folder) and the problem.
"""
from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..data.io import WIDE_MODES, open_image, strict_decoding
from ..data.orientation import canonical_to_display, display_affine
from ..errors import DatasetError, StudyError
from .volume import OBLIQUE_LIMIT_DEG, NiftiLayout, Study, axis_angles, display_positions

__all__ = ["SUPPORTED", "DICOM_EXTENSIONS", "NIFTI_EXTENSIONS", "IMAGE_EXTENSIONS",
           "PNG_HU_OFFSET", "StudyRef", "find_studies", "load_dicom_series", "load_nifti",
           "load_images", "natural_key", "safe_name", "is_dicom_file"]

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The documented input extensions; besides them, any file that starts with the DICOM "DICM"
# preamble (e.g. extension-less "IM0001") is read as DICOM.
SUPPORTED = DICOM_EXTENSIONS + NIFTI_EXTENSIONS + IMAGE_EXTENSIONS
_SUPPORTED_TEXT = ("DICOM (.dcm, .dicom, or a file with the DICM preamble), NIfTI (.nii, "
                   ".nii.gz), images (" + ", ".join(IMAGE_EXTENSIONS) + ")")
# 16-bit grey slices store HU + 1024 (the CT rescale intercept; the phantom's hu/ PNGs).
PNG_HU_OFFSET = 1024
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
# Tolerances: equal orientations (direction cosines), distinct slice positions (mm).
_ORIENTATION_TOL = 1e-3
_POSITION_TOL = 1e-3
_SPACING_VARIATION = 0.10


# ---------------------------------------------------------------------------------------------
# names and file kinds
def natural_key(name: str) -> Tuple[Any, ...]:
    """Sort key in natural order: ``img2`` before ``img10`` (case-insensitive)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


def safe_name(name: str, fallback: str = "study") -> str:
    """A file-system-safe name: characters other than ``[A-Za-z0-9._-]`` become ``_``; no
    leading dot; ``fallback`` when nothing is left."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(name).strip()).lstrip(".")
    return safe or fallback


def _nifti_stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _extension(path: str) -> str:
    """Lower-case extension, ``.nii.gz`` as one."""
    low = os.path.basename(path).lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(low)[1]


def is_dicom_file(path: str) -> bool:
    """Whether ``path`` starts with the DICOM preamble (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _classify(path: str) -> Optional[str]:
    """``"dicom"``, ``"nifti"``, ``"image"`` or ``None`` (unsupported) for a file."""
    ext = _extension(path)
    if ext in NIFTI_EXTENSIONS:
        return "nifti"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in DICOM_EXTENSIONS or is_dicom_file(path):
        return "dicom"
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


# ---------------------------------------------------------------------------------------------
@dataclass
class StudyRef:
    """A study found by :func:`find_studies`, not read yet.

    Attributes:
        name: unique, file-system-safe study name (the output folder name).
        source: the input path (file or folder) it was found under.
        kind: ``"dicom"``, ``"nifti"`` or ``"image"``.
        files: the files that make the study (DICOM: the series' files; NIfTI: one file;
            images: the slices in natural name order).
    """

    name: str
    source: str
    kind: str
    files: List[str] = field(default_factory=list)

    def load(self, png_hu_offset: float = PNG_HU_OFFSET) -> Study:
        """Read the study (pixels and geometry).

        Args:
            png_hu_offset: 16-bit grey image slices hold HU + this offset.

        Raises:
            StudyError: an unreadable or unsupported input; one line naming the file and the
                problem.
        """
        if self.kind == "dicom":
            return load_dicom_series(self.files, name=self.name, source=self.source)
        if self.kind == "nifti":
            return load_nifti(self.files[0], name=self.name, source=self.source)
        if self.kind == "image":
            return load_images(self.files, name=self.name, source=self.source,
                               png_hu_offset=png_hu_offset)
        raise StudyError(f"{self.source}: unknown study kind {self.kind!r}")


class _Names:
    """Unique study names within one :func:`find_studies` call (case-insensitive, so that
    output folders do not collide on macOS / Windows either): ``-2``, ``-3``... suffixes."""

    def __init__(self) -> None:
        self.used: Set[str] = set()

    def __call__(self, name: str) -> str:
        base = safe_name(name)
        out, n = base, 1
        while out.lower() in self.used:
            n += 1
            out = f"{base}-{n}"
        self.used.add(out.lower())
        return out


def _walk(folder: str) -> List[str]:
    """Files under ``folder`` (recursive, hidden entries skipped), sorted in natural order by
    folder then name."""
    out = []
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        for name in sorted(files, key=natural_key):
            if not name.startswith("."):
                out.append(os.path.join(root, name))
    return out


def _read_header(path: str):
    """pydicom dataset without pixels; raises StudyError when unreadable."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError as e:
        raise StudyError(f"{path}: not a DICOM file ({_one_line(e)})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            NotImplementedError) as e:
        raise StudyError(f"{path}: unreadable DICOM file ({_one_line(e)})") from None


def _is_dicomdir(path: str, ds) -> bool:
    file_meta = getattr(ds, "file_meta", None)
    sop = str(file_meta.get("MediaStorageSOPClassUID", "")) if file_meta is not None else ""
    return (os.path.basename(path).upper() == "DICOMDIR" or sop == _DICOMDIR_SOP
            or str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP)


def _dicom_name(ds, folder: str) -> str:
    pid = str(ds.get("PatientID", "") or "").strip() or os.path.basename(folder)
    number = ds.get("SeriesNumber", None)
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    series = str(number).strip() if number not in (None, "") else uid[-8:]
    return f"{pid}_{series}" if series else pid


def _dicom_studies(source: str, files: Sequence[str], names: _Names,
                   errors: List[StudyError], given_directly: bool) -> List[StudyRef]:
    """Group DICOM files by SeriesInstanceUID (headers only)."""
    series: "OrderedDict[str, Tuple[Any, str, List[str]]]" = OrderedDict()
    for path in files:
        try:
            ds = _read_header(path)
        except StudyError as e:
            errors.append(e)
            continue
        if _is_dicomdir(path, ds):
            if given_directly:
                errors.append(StudyError(f"{path}: a DICOMDIR (media directory), not an image; "
                                         "give the folder holding the series instead"))
            else:
                logger.warning("%s: DICOMDIR skipped (the series files are read directly)", path)
            continue
        folder = os.path.dirname(os.path.abspath(path))
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        key = uid or f"no-uid:{folder}"
        if key not in series:
            series[key] = (ds, folder, [])
        series[key][2].append(path)
    refs = []
    for ds, folder, paths in series.values():
        refs.append(StudyRef(names(_dicom_name(ds, folder)), source, "dicom", paths))
    return refs


def find_studies(paths: Sequence[str]) -> Tuple[List[StudyRef], List[StudyError]]:
    """Every study under the given files / folders, in input order, without reading pixels.

    * a DICOM file, or a folder (tree) holding DICOM files: one study per SeriesInstanceUID
      (headers read with ``stop_before_pixels=True``; a folder mixing series gives several);
    * a NIfTI file: one study; a folder holding NIfTI files: one study per file;
    * an image file given directly: one study; a folder of image files: one study per folder
      (its slices in natural name order: ``img2`` before ``img10``).

    Study names are unique within the call and file-system safe: DICOM
    ``<PatientID>_<SeriesNumber or last 8 characters of SeriesInstanceUID>`` (the folder name
    without PatientID), NIfTI the file name without ``.nii`` / ``.nii.gz``, an image folder its
    name, a single image its stem; repeats get ``-2``, ``-3``... suffixes.

    Returns:
        ``(studies, errors)``: problems found here (missing path, empty folder, unsupported
        file given directly, unreadable DICOM header...) are returned as :class:`StudyError`
        entries, never raised, so that the other studies still run. Unsupported files met
        while walking a folder (e.g. ``DICOMDIR``, ``.txt``) are skipped with a warning.
    """
    names = _Names()
    studies: List[StudyRef] = []
    errors: List[StudyError] = []
    for path in paths:
        path = str(path)
        if os.path.isdir(path):
            _find_in_folder(path, names, studies, errors)
        elif os.path.isfile(path):
            _find_file(path, names, studies, errors)
        elif os.path.exists(path):
            errors.append(StudyError(f"{path}: not a regular file or folder"))
        else:
            errors.append(StudyError(f"{path}: no such file or folder"))
    return studies, errors


def _find_file(path: str, names: _Names, studies: List[StudyRef],
               errors: List[StudyError]) -> None:
    kind = _classify(path)
    if kind is None:
        errors.append(StudyError(f"{path}: unsupported file type "
                                 f"'{_extension(path) or '(no extension)'}' and no DICM "
                                 f"preamble; supported: {_SUPPORTED_TEXT}"))
    elif kind == "dicom":
        studies.extend(_dicom_studies(path, [path], names, errors, given_directly=True))
    elif kind == "nifti":
        studies.append(StudyRef(names(_nifti_stem(path)), path, "nifti", [path]))
    else:
        stem = os.path.splitext(os.path.basename(path))[0]
        studies.append(StudyRef(names(stem), path, "image", [path]))


def _find_in_folder(folder: str, names: _Names, studies: List[StudyRef],
                    errors: List[StudyError]) -> None:
    try:
        files = _walk(folder)
    except OSError as e:  # pragma: no cover - os.walk swallows errors by default
        errors.append(StudyError(f"{folder}: cannot list the folder ({_one_line(e)})"))
        return
    dicom, nifti, images = [], [], OrderedDict()
    skipped = []
    for path in files:
        kind = _classify(path)
        if kind == "dicom":
            dicom.append(path)
        elif kind == "nifti":
            nifti.append(path)
        elif kind == "image":
            images.setdefault(os.path.dirname(path), []).append(path)
        else:
            skipped.append(path)
    for path in skipped:
        logger.warning("%s: skipped, not a supported input (%s)", path, _SUPPORTED_TEXT)
    found = len(studies)
    n_errors = len(errors)
    if dicom:
        studies.extend(_dicom_studies(folder, dicom, names, errors, given_directly=False))
    for path in nifti:
        studies.append(StudyRef(names(_nifti_stem(path)), path, "nifti", [path]))
    for sub, paths in images.items():
        label = os.path.basename(os.path.abspath(sub))
        studies.append(StudyRef(names(label), sub, "image", sorted(paths, key=natural_key)))
    if len(studies) == found and len(errors) == n_errors:
        what = "empty folder" if not files else \
            f"no supported file among its {len(files)} file(s)"
        errors.append(StudyError(f"{folder}: {what}; expected {_SUPPORTED_TEXT}"))


# ---------------------------------------------------------------------------------------------
# geometry shared by the DICOM and NIfTI readers
def _check_axial(where: str, directions: np.ndarray, what: str) -> None:
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


def _to_display(stored: np.ndarray, ras_affine: np.ndarray):
    """Array (X', Y', N) with RAS affine -> (display pixels (N, H, W), display affine,
    ornt of the stored axes)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(ras_affine)
    canonical = nib.orientations.apply_orientation(stored, ornt)
    can_affine = ras_affine @ nib.orientations.inv_ornt_aff(ornt, stored.shape[:3])
    return canonical_to_display(canonical), display_affine(can_affine, canonical.shape), ornt


def _plain(value: Any) -> Any:
    """JSON-serialisable copy of a pydicom value (numbers, strings, lists)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# DICOM
def _floats(ds, keyword: str, n: int, path: str) -> Optional[np.ndarray]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        out = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise StudyError(f"{path}: malformed {keyword} {value!r}") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise StudyError(f"{path}: malformed {keyword} {_plain(value)!r} "
                         f"({n} number(s) expected)")
    return out


def _decode_error(path: str, ds, e: BaseException) -> StudyError:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    text = _one_line(e)
    if ts is not None and ts.is_compressed:
        name = getattr(ts, "name", str(ts))
        no_decoder = any(w in text.lower() for w in (
            "missing", "require", "not supported", "no pixel", "plugin", "handler", "available"))
        if no_decoder and "JPEG" in name.upper():
            return StudyError(f"{path}: compressed DICOM ({name}) cannot be decoded here "
                              f"({text}); needs pylibjpeg: pip install 'oneshot_d2[dicom]'")
        if no_decoder:
            return StudyError(f"{path}: compressed DICOM ({name}) that pydicom cannot decode "
                              f"({text}); convert the series to an uncompressed transfer "
                              "syntax first (e.g. dcmdjpeg / gdcmconv --raw)")
        return StudyError(f"{path}: cannot decode the compressed pixel data ({name}): {text}")
    return StudyError(f"{path}: cannot read the pixel data ({text})")


def _read_slice(path: str) -> Dict[str, Any]:
    """One DICOM CT slice: HU pixels (H, W) float32 and its geometry; refuses what the project
    cannot use."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError as e:
        raise StudyError(f"{path}: not a DICOM file ({_one_line(e)})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            NotImplementedError) as e:
        raise StudyError(f"{path}: unreadable DICOM file ({_one_line(e)})") from None
    if "PixelData" not in ds:
        raise StudyError(f"{path}: no PixelData (a DICOM file without an image, e.g. a "
                         "report or presentation state)")
    modality = str(ds.get("Modality", "") or "").strip()
    if modality and modality.upper() != "CT":
        raise StudyError(f"{path}: modality {modality}, expected CT")
    frames = ds.get("NumberOfFrames", None)
    try:
        n_frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:
        raise StudyError(f"{path}: multi-frame DICOM ({n_frames} frames, e.g. enhanced CT); "
                         "one slice per file expected")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise StudyError(f"{path}: colour DICOM (SamplesPerPixel {samples}, "
                         f"PhotometricInterpretation {ds.get('PhotometricInterpretation', '?')});"
                         " a grey-level CT slice expected")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if ds.get(keyword, None) in (None, ""):
            raise StudyError(f"{path}: {keyword} missing: cannot convert the stored values "
                             "to Hounsfield units (the HU offset cannot be guessed)")
    slope = float(_floats(ds, "RescaleSlope", 1, path)[0])
    intercept = float(_floats(ds, "RescaleIntercept", 1, path)[0])
    try:
        raw = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError,
            KeyError, OSError, EOFError) as e:
        raise _decode_error(path, ds, e) from None
    if raw.ndim != 2:
        raise StudyError(f"{path}: pixel data of shape {raw.shape}; one grey-level slice "
                         "(rows, columns) expected")
    hu = (raw.astype(np.float64) * slope + intercept).astype(np.float32)
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if spacing is None:
        spacing = _floats(ds, "ImagerPixelSpacing", 2, path)
    return {
        "path": path, "ds": ds, "hu": hu, "slope": slope, "intercept": intercept,
        "iop": _floats(ds, "ImageOrientationPatient", 6, path),
        "ipp": _floats(ds, "ImagePositionPatient", 3, path),
        "spacing": spacing,
        "thickness": _floats(ds, "SliceThickness", 1, path),
        "between": _floats(ds, "SpacingBetweenSlices", 1, path),
        "instance": ds.get("InstanceNumber", None),
    }


def _check_same(slices: List[Dict[str, Any]]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if s["hu"].shape != first["hu"].shape:
            (h1, w1), (h2, w2) = first["hu"].shape, s["hu"].shape
            raise StudyError(f"{s['path']}: slice size {h2}x{w2} (rows x columns) differs from "
                             f"{first['path']} ({h1}x{w1}); one series must have one size")
        a, b = first["iop"], s["iop"]
        if (a is None) != (b is None) or (a is not None and np.abs(a - b).max() > _ORIENTATION_TOL):
            raise StudyError(f"{s['path']}: ImageOrientationPatient {_plain(b)} differs from "
                             f"{first['path']} ({_plain(a)}); one orientation per series "
                             "expected")


def _order(slices: List[Dict[str, Any]], normal: np.ndarray, where: str):
    """Sort slices inferior -> superior; returns (slices, positions or None)."""
    if all(s["ipp"] is not None for s in slices):
        proj = np.array([float(s["ipp"] @ normal) for s in slices])
        order = np.argsort(proj, kind="stable")
        slices = [slices[i] for i in order]
        proj = proj[order]
        for i in range(1, len(slices)):
            if proj[i] - proj[i - 1] < _POSITION_TOL:
                raise StudyError(f"{slices[i]['path']}: same slice position ({proj[i]:.3f} mm "
                                 f"along the slice normal) as {slices[i - 1]['path']}; "
                                 "duplicate slices (two acquisitions in one series?)")
        return slices, proj
    missing = sum(s["ipp"] is None for s in slices)
    if len(slices) > 1:
        logger.warning("%s: ImagePositionPatient missing in %d of %d file(s): slices ordered "
                       "by InstanceNumber (increasing = superior assumed)", where, missing,
                       len(slices))
    numbers = []
    for s in slices:
        try:
            numbers.append(int(s["instance"]))
        except (TypeError, ValueError):
            if len(slices) == 1:
                return slices, None
            raise StudyError(f"{s['path']}: no ImagePositionPatient and no InstanceNumber: "
                             "cannot order the slices") from None
    order = np.argsort(numbers, kind="stable")
    slices = [slices[i] for i in order]
    numbers = [numbers[i] for i in order]
    for i in range(1, len(slices)):
        if numbers[i] == numbers[i - 1]:
            raise StudyError(f"{slices[i]['path']}: same InstanceNumber {numbers[i]} as "
                             f"{slices[i - 1]['path']} and no ImagePositionPatient: cannot "
                             "order the slices")
    return slices, None


def load_dicom_series(files: Sequence[str], name: Optional[str] = None,
                      source: Optional[str] = None) -> Study:
    """Read the DICOM files of one CT series as a :class:`Study` in HU (float32), slices
    sorted inferior -> superior by ImagePositionPatient along the slice normal (InstanceNumber
    when positions are missing), rows / columns flipped or transposed to display orientation.

    Raises:
        StudyError: unreadable / non-DICOM file, no PixelData, modality other than CT, missing
            RescaleSlope / RescaleIntercept, multi-frame or colour data, compressed data
            without its decoder, slices of different sizes or orientations, duplicate
            positions, oblique or non-axial acquisition.
    """
    files = list(files)
    if not files:
        raise StudyError(f"{source or name or '?'}: no DICOM file")
    where = source or os.path.dirname(os.path.abspath(files[0]))
    slices = [_read_slice(p) for p in files]
    _check_same(slices)
    first = slices[0]
    iop = first["iop"]
    if iop is None:
        logger.warning("%s: ImageOrientationPatient missing: standard axial orientation "
                       "(1,0,0,0,1,0) assumed", first["path"])
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
    row_dir, col_dir = iop[:3], iop[3:]  # along a row (column index), along a column (rows)
    if np.linalg.norm(row_dir) < 1e-6 or np.linalg.norm(col_dir) < 1e-6:
        raise StudyError(f"{first['path']}: malformed ImageOrientationPatient {iop.tolist()}")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-6:
        raise StudyError(f"{first['path']}: malformed ImageOrientationPatient {iop.tolist()} "
                         "(parallel row and column directions)")
    normal = normal / np.linalg.norm(normal)
    _check_axial(first["path"], np.stack([row_dir, col_dir, normal], axis=1),
                 f"ImageOrientationPatient {np.round(iop, 4).tolist()}")
    up = normal if normal[2] >= 0 else -normal  # slice axis oriented to superior (+z LPS)
    slices, proj = _order(slices, up, where)
    first = slices[0]
    n = len(slices)

    pixel_spacing = first["spacing"]
    if pixel_spacing is None:
        logger.warning("%s: PixelSpacing missing: 1 mm assumed", first["path"])
    row_sp, col_sp = (float(pixel_spacing[0]), float(pixel_spacing[1])) \
        if pixel_spacing is not None else (1.0, 1.0)
    assumed = pixel_spacing is None
    if proj is not None and n > 1:
        steps = np.diff(proj)
        slice_sp = float(np.median(steps))
        if steps.max() - steps.min() > _SPACING_VARIATION * slice_sp:
            logger.warning("%s: slice spacing varies from %.3g to %.3g mm (median %.3g used): "
                           "missing slices or a variable-spacing scan?", where,
                           float(steps.min()), float(steps.max()), slice_sp)
        step_vec = (slices[-1]["ipp"] - slices[0]["ipp"]) / (n - 1)
    else:
        # no positions: SpacingBetweenSlices first for a series, SliceThickness for one slice
        candidates = [first["between"], first["thickness"]]
        given = next((float(c[0]) for c in (candidates if n > 1 else candidates[::-1])
                      if c is not None and float(c[0]) > 0), None)
        if given is None:
            logger.warning("%s: no slice spacing (no positions, SliceThickness or "
                           "SpacingBetweenSlices): 1 mm assumed", first["path"])
            slice_sp, assumed = 1.0, True
        else:
            slice_sp = given
        step_vec = up * slice_sp

    # stored volume laid out as [column, row, slice] (slices inferior -> superior), LPS affine
    stored = np.stack([s["hu"] for s in slices], axis=0).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_sp
    lps[:3, 1] = col_dir * row_sp
    lps[:3, 2] = step_vec
    lps[:3, 3] = first["ipp"] if first["ipp"] is not None else 0.0
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    pixels, affine, ornt = _to_display(stored, ras)
    # display rows / columns: the stored rows or columns, depending on the transposition
    transposed = int(ornt[0, 0]) != 0  # stored columns became canonical y (display rows)
    spacing = (col_sp, row_sp, slice_sp) if transposed else (row_sp, col_sp, slice_sp)
    positions = None if proj is None else np.asarray(proj, dtype=np.float64)

    ds = first["ds"]
    meta = {
        "modality": _plain(ds.get("Modality", None)),
        "patient_id": _plain(ds.get("PatientID", None)),
        "study_uid": _plain(ds.get("StudyInstanceUID", None)),
        "series_uid": _plain(ds.get("SeriesInstanceUID", None)),
        "series_number": _plain(ds.get("SeriesNumber", None)),
        "series_description": _plain(ds.get("SeriesDescription", None)),
        "manufacturer": _plain(ds.get("Manufacturer", None)),
        "transfer_syntax": _plain(getattr(getattr(ds, "file_meta", None),
                                          "TransferSyntaxUID", None)),
        "orientation": [float(v) for v in iop],
        "rescale_slope": first["slope"],
        "rescale_intercept": first["intercept"],
        "pixel_spacing": [row_sp, col_sp] if pixel_spacing is not None else None,
        "slice_thickness": float(first["thickness"][0]) if first["thickness"] is not None
        else None,
        "stored_shape": [n, int(first["hu"].shape[0]), int(first["hu"].shape[1])],
        "shape": [int(v) for v in pixels.shape],
        "display_flips": {"transposed": transposed},
        "spacing_assumed": assumed,
        "n_files": n,
    }
    rescales = {(s["slope"], s["intercept"]) for s in slices}
    if len(rescales) > 1:
        meta["rescale_varies"] = True
    return Study(
        name=name or safe_name(_dicom_name(ds, os.path.dirname(os.path.abspath(first["path"])))),
        source=source or first["path"], kind="dicom", pixels=pixels.astype(np.float32),
        is_hu=True, spacing=spacing, positions=positions,
        slice_labels=[os.path.basename(s["path"]) for s in slices], affine=affine, meta=meta)


# ---------------------------------------------------------------------------------------------
# NIfTI
def load_nifti(path: str, name: Optional[str] = None, source: Optional[str] = None) -> Study:
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
        raise StudyError(f"{path}: unreadable NIfTI file ({_one_line(e)})") from None
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
    _check_axial(path, canonical_dirs, f"axis codes {''.join(nib.aff2axcodes(affine))}")
    try:
        canon = nib.as_closest_canonical(img)
        data = canon.get_fdata(dtype=np.float32)
    except readable as e:
        raise StudyError(f"{path}: unreadable NIfTI data, truncated or corrupt "
                         f"({_one_line(e)})") from None
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
        "description": hdr["descrip"].item().decode("latin-1", "replace").strip("\x00 ")
        if "descrip" in hdr else "",
        "hu_range": [lo, hi],
    }
    layout = NiftiLayout(shape=shape, affine=affine, header=hdr.copy(), ornt=ornt)
    return Study(name=name or safe_name(_nifti_stem(path)), source=source or path, kind="nifti",
                 pixels=pixels, is_hu=True, spacing=spacing,
                 positions=display_positions(aff, n), slice_labels=labels, affine=aff,
                 meta=meta, nifti_layout=layout)


# ---------------------------------------------------------------------------------------------
# image slices
def _read_wide(path: str, offset: float) -> np.ndarray:
    """A 16-bit grey slice (PIL mode I;16* / I) as HU = value - offset, float32."""
    from PIL import Image

    try:
        with strict_decoding(), Image.open(path) as im:
            mode = im.mode
            im.load()
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise StudyError(f"{path}: unreadable 16-bit image, truncated or corrupt "
                         f"({_one_line(e)})") from None
    if mode == "F" or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise StudyError(f"{path}: unsupported image (PIL mode {mode}, {arr.dtype}); 8-bit "
                         "slices or 16-bit grey slices holding HU + "
                         f"{offset:g} expected")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise StudyError(f"{path}: 32-bit image with values {int(arr.min())}..{int(arr.max())}"
                         f"; 16-bit grey slices holding HU + {offset:g} expected")
    return (arr.astype(np.float64) - offset).astype(np.float32)


def _image_mode(path: str) -> str:
    """PIL mode from the header; raises StudyError for a missing / empty / unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise StudyError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise StudyError(f"{path}: empty image file (0 bytes)")
    try:
        with Image.open(path) as im:
            return im.mode
    except UnidentifiedImageError:
        raise StudyError(f"{path}: unreadable image (not a decodable "
                         f"{'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise StudyError(f"{path}: unreadable image ({_one_line(e)})") from None


def load_images(files: Sequence[str], name: Optional[str] = None, source: Optional[str] = None,
                png_hu_offset: float = PNG_HU_OFFSET) -> Study:
    """Read image slices (in the given order) as a :class:`Study`: 8-bit slices (grey, RGB,
    RGBA, palette -> grey) as already-windowed uint8 (``is_hu`` False); 16-bit grey slices as
    HU = value - ``png_hu_offset`` (float32, ``is_hu`` True). No geometry: ``spacing`` and
    ``positions`` are ``None``, ``affine`` the identity.

    Raises:
        StudyError: missing, empty, truncated or undecodable file; slices of different sizes;
            8-bit and 16-bit slices mixed.
    """
    files = list(files)
    if not files:
        raise StudyError(f"{source or name or '?'}: no image file")
    slices, wide_of = [], []
    for path in files:
        wide = _image_mode(path) in WIDE_MODES
        if wide_of and wide != wide_of[0][1]:
            eight, sixteen = (wide_of[0][0], path) if wide else (path, wide_of[0][0])
            raise StudyError(f"{path}: 8-bit and 16-bit slices mixed in one study ({eight} is "
                             f"8-bit, {sixteen} 16-bit); one kind per folder expected")
        wide_of.append((path, wide))
        if wide:
            slices.append(_read_wide(path, png_hu_offset))
        else:
            try:
                slices.append(np.asarray(open_image(path).convert("L"), dtype=np.uint8))
            except StudyError:
                raise
            except DatasetError as e:
                raise StudyError(str(e)) from None
        if slices[-1].shape != slices[0].shape:
            (h1, w1), (h2, w2) = slices[0].shape, slices[-1].shape
            raise StudyError(f"{path}: slice size {h2}x{w2} (rows x columns) differs from "
                             f"{files[0]} ({h1}x{w1}); one study must have one slice size")
    is_hu = wide_of[0][1]
    pixels = np.stack(slices, axis=0)
    meta: Dict[str, Any] = {"shape": [int(v) for v in pixels.shape], "bits": 16 if is_hu else 8}
    if is_hu:
        meta["hu_offset"] = float(png_hu_offset)
    if name is None:
        base = files[0] if len(files) == 1 else os.path.dirname(os.path.abspath(files[0]))
        name = safe_name(os.path.splitext(os.path.basename(base))[0] if len(files) == 1
                         else os.path.basename(base))
    return Study(name=name, source=source or (files[0] if len(files) == 1 else
                                              os.path.dirname(files[0])),
                 kind="image", pixels=pixels.astype(np.float32) if is_hu else pixels,
                 is_hu=is_hu, spacing=None, positions=None,
                 slice_labels=[os.path.basename(p) for p in files], affine=np.eye(4),
                 meta=meta)
