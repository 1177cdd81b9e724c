"""DICOM reader: a folder (tree) or file list gives one study per SeriesInstanceUID; each
series is read as HU slices sorted inferior -> superior in display orientation.

CT only, axial (within 5 degrees), one frame and one grey channel per file, RescaleSlope and
RescaleIntercept present; compressed transfer syntaxes need the ``dicom`` extra
(``pip install 'oneshot_d2[dicom]'``: pylibjpeg).

Unless ``ReadOptions.keep_identifiers``, nothing read here identifies the patient: a series is
named ``series-<12 hex digits>`` (a SHA-256 of its StudyInstanceUID and SeriesInstanceUID:
stable across runs, not reversible), its slices ``instance <InstanceNumber>`` (not the file
names, which are often SOPInstanceUIDs), and its metadata holds no PatientID, UID or
SeriesDescription (free text, removed by the DICOM confidentiality profile too).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import StudyError
from ..study import DicomLayout, Study
from .base import ReadOptions, StudyGroup, StudyReader, one_line, safe_name
from .geometry import check_axial, to_display

__all__ = ["DicomReader", "DICOM_EXTENSIONS", "is_dicom_file", "load_dicom_series"]

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
# Tolerances: equal orientations (direction cosines), distinct slice positions (mm).
_ORIENTATION_TOL = 1e-3
_POSITION_TOL = 1e-3
_SPACING_VARIATION = 0.10


def is_dicom_file(path: str) -> bool:
    """Whether ``path`` starts with the DICOM preamble (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def plain(value: Any) -> Any:
    """JSON-serialisable copy of a pydicom value (numbers, strings, lists)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def _read_header(path: str):
    """pydicom dataset without pixels; raises StudyError when unreadable."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError as e:
        raise StudyError(f"{path}: not a DICOM file ({one_line(e)})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            NotImplementedError) as e:
        raise StudyError(f"{path}: unreadable DICOM file ({one_line(e)})") from None


def _is_dicomdir(path: str, ds) -> bool:
    file_meta = getattr(ds, "file_meta", None)
    sop = str(file_meta.get("MediaStorageSOPClassUID", "")) if file_meta is not None else ""
    return (os.path.basename(path).upper() == "DICOMDIR" or sop == _DICOMDIR_SOP
            or str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP)


def _dicom_name(ds, folder: str, keep_identifiers: bool) -> str:
    """``<PatientID>_<SeriesNumber or the UID's last 8 characters>`` (identifiers kept), else
    ``series-<hash>`` of the study and series UIDs (of the folder's path without a UID)."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not keep_identifiers:
        study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        key = f"{study_uid}/{uid}" if uid else f"folder:{os.path.abspath(folder)}"
        return "series-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    pid = str(ds.get("PatientID", "") or "").strip() or os.path.basename(folder)
    number = ds.get("SeriesNumber", None)
    series = str(number).strip() if number not in (None, "") else uid[-8:]
    return f"{pid}_{series}" if series else pid


def _slice_labels(slices: List[Dict[str, Any]], keep_identifiers: bool) -> List[str]:
    """The file names (identifiers kept), else ``instance <InstanceNumber>`` (``slice <k>``,
    the index inferior -> superior, when a number is missing or repeated)."""
    if keep_identifiers:
        return [os.path.basename(s["path"]) for s in slices]
    numbers = [plain(s["instance"]) for s in slices]
    if all(isinstance(n, int) for n in numbers) and len(set(numbers)) == len(numbers):
        return [f"instance {n}" for n in numbers]
    return [f"slice {k}" for k in range(len(slices))]


def _floats(ds, keyword: str, n: int, path: str) -> Optional[np.ndarray]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        out = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise StudyError(f"{path}: malformed {keyword} {value!r}") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise StudyError(f"{path}: malformed {keyword} {plain(value)!r} "
                         f"({n} number(s) expected)")
    return out


def _decode_error(path: str, ds, e: BaseException) -> StudyError:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    text = one_line(e)
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
        raise StudyError(f"{path}: not a DICOM file ({one_line(e)})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            NotImplementedError) as e:
        raise StudyError(f"{path}: unreadable DICOM file ({one_line(e)})") from None
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
            raise StudyError(f"{s['path']}: ImageOrientationPatient {plain(b)} differs from "
                             f"{first['path']} ({plain(a)}); one orientation per series "
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
                      source: Optional[str] = None, keep_identifiers: bool = False) -> Study:
    """Read the DICOM files of one CT series as a :class:`Study` in HU (float32), slices
    sorted inferior -> superior by ImagePositionPatient along the slice normal (InstanceNumber
    when positions are missing), rows / columns flipped or transposed to display orientation.
    ``keep_identifiers``: the patient's identifiers in the name, labels and metadata (module
    docstring); the default keeps none.

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
    check_axial(first["path"], np.stack([row_dir, col_dir, normal], axis=1),
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
    slice_assumed = False
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
            slice_sp, assumed, slice_assumed = 1.0, True, True
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
    pixels, affine, ornt = to_display(stored, ras)
    # display rows / columns: the stored rows or columns, depending on the transposition
    transposed = int(ornt[0, 0]) != 0  # stored columns became canonical y (display rows)
    spacing = (col_sp, row_sp, slice_sp) if transposed else (row_sp, col_sp, slice_sp)
    positions = None if proj is None else np.asarray(proj, dtype=np.float64)

    ds = first["ds"]
    identifiers = {
        "patient_id": plain(ds.get("PatientID", None)),
        "study_uid": plain(ds.get("StudyInstanceUID", None)),
        "series_uid": plain(ds.get("SeriesInstanceUID", None)),
        "series_description": plain(ds.get("SeriesDescription", None)),
    } if keep_identifiers else {}
    meta = {
        "modality": plain(ds.get("Modality", None)),
        **identifiers,
        "identifiers_kept": keep_identifiers,
        "series_number": plain(ds.get("SeriesNumber", None)),
        "manufacturer": plain(ds.get("Manufacturer", None)),
        "transfer_syntax": plain(getattr(getattr(ds, "file_meta", None),
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
        "pixel_spacing_assumed": pixel_spacing is None,
        "slice_spacing_assumed": slice_assumed,
        "n_files": n,
    }
    rescales = {(s["slope"], s["intercept"]) for s in slices}
    if len(rescales) > 1:
        meta["rescale_varies"] = True
    folder = os.path.dirname(os.path.abspath(first["path"]))
    return Study(
        name=name or safe_name(_dicom_name(ds, folder, keep_identifiers)),
        source=source or (first["path"] if keep_identifiers else "DICOM series"), kind="dicom",
        pixels=pixels.astype(np.float32), is_hu=True, spacing=spacing, positions=positions,
        slice_labels=_slice_labels(slices, keep_identifiers), affine=affine, meta=meta,
        dicom_layout=DicomLayout(files=[s["path"] for s in slices], ornt=ornt))


class DicomReader(StudyReader):
    """DICOM CT series: ``.dcm`` / ``.dicom`` files, or any file that starts with the DICM
    preamble (e.g. extension-less ``IM0001``); one study per SeriesInstanceUID."""

    kind = "dicom"
    extensions = DICOM_EXTENSIONS
    description = "DICOM (.dcm, .dicom, or a file with the DICM preamble)"

    def sniff(self, path: str) -> bool:
        return is_dicom_file(path)

    def group(self, files: Sequence[str], source: str, given_directly: bool,
              errors: List[StudyError],
              options: Optional[ReadOptions] = None) -> List[StudyGroup]:
        """One study per SeriesInstanceUID (headers read with ``stop_before_pixels=True``;
        files without the UID group by folder); DICOMDIR files are skipped (an error when given
        directly). Named ``series-<hash>``, or ``<PatientID>_<SeriesNumber or last 8
        characters of the UID>`` with ``options.keep_identifiers`` (module docstring)."""
        keep = options is not None and options.keep_identifiers
        series: "OrderedDict[str, Tuple[Any, str, List[str]]]" = OrderedDict()
        for path in files:
            try:
                ds = _read_header(path)
            except StudyError as e:
                errors.append(e)
                continue
            if _is_dicomdir(path, ds):
                if given_directly:
                    errors.append(StudyError(f"{path}: a DICOMDIR (media directory), not an "
                                             "image; give the folder holding the series "
                                             "instead"))
                else:
                    logger.warning("%s: DICOMDIR skipped (the series files are read directly)",
                                   path)
                continue
            folder = os.path.dirname(os.path.abspath(path))
            uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
            key = uid or f"no-uid:{folder}"
            if key not in series:
                series[key] = (ds, folder, [])
            series[key][2].append(path)
        return [(_dicom_name(ds, folder, keep), source, paths)
                for ds, folder, paths in series.values()]

    def load(self, files: Sequence[str], name: Optional[str] = None,
             source: Optional[str] = None, options: Optional[ReadOptions] = None) -> Study:
        return load_dicom_series(files, name=name, source=source,
                                 keep_identifiers=options is not None and options.keep_identifiers)
