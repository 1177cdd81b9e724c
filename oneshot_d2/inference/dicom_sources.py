"""What the DICOM objects predict writes (:mod:`.dicom_seg`, :mod:`.dicom_sr`) share: the
codes of the lesion classes and the source series' headers."""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..errors import StudyError
from .study import Study

__all__ = ["LESION_CODES", "lesion_code", "source_headers", "highdicom_errors"]

# lesion class name (lower case, letters and digits only) -> (code value, scheme, meaning)
LESION_CODES: Dict[str, Tuple[str, str, str]] = {
    "ggo": ("112120", "DCM", "Ground glass opacity"),
    "groundglassopacity": ("112120", "DCM", "Ground glass opacity"),
    "consolidation": ("95436008", "SCT", "Lung consolidation"),
}
LESION = ("52988006", "SCT", "Lesion")
# Type 2 attributes of the patient / study modules that highdicom copies from the source: a
# CT image must have them (possibly empty); a source lacking one gets it empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
# what a derived object must reference; a SEG also needs the images' place in space
_REFERENCES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_GEOMETRY = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
             "PixelSpacing")
# highdicom's refusals of a source it cannot derive from (turned into one-line StudyErrors)
highdicom_errors = (ValueError, TypeError, AttributeError, KeyError, IndexError)


def lesion_code(name: str) -> Tuple[str, str, str]:
    """The coded concept (value, scheme designator, meaning) of a lesion class."""
    key = "".join(c for c in name.lower() if c.isalnum())
    return LESION_CODES.get(key, LESION)


def source_headers(study: Study, what: str, geometry: bool = False) -> List:
    """The headers (no pixels) of a DICOM study's source images, in slice order (read once per
    study, then reused), made ready for highdicom: empty type 2 patient / study attributes
    where the files lack them; with ``geometry``, one ImageOrientationPatient for all (the
    first image's: the reader accepted differences within its tolerance) and SliceThickness,
    when absent or empty, set to the study's slice spacing.

    Raises:
        StudyError: not a DICOM study (``what`` names the output asked for), or an image
            without an attribute the object must reference (its UIDs; with ``geometry``, its
            frame of reference, position, orientation and pixel spacing).
    """
    import pydicom

    if study.dicom_layout is None:
        raise StudyError(f"{study.source}: {what} needs a DICOM series (this is a "
                         f"{study.kind} input)")
    layout = study.dicom_layout
    if layout.headers is None:
        layout.headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in layout.files]
    headers = layout.headers
    required = _REFERENCES + (_GEOMETRY if geometry else ())
    for path, ds in zip(study.dicom_layout.files, headers):
        missing = [k for k in required if ds.get(k, None) in (None, "")]
        if missing:
            raise StudyError(f"{path}: no {', '.join(missing)}: {what} cannot reference this "
                             "image")
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        if geometry:
            ds.ImageOrientationPatient = headers[0].ImageOrientationPatient
            if ds.get("SliceThickness", None) in (None, "") and study.spacing is not None:
                ds.SliceThickness = float(study.spacing[2])
    return headers
