"""The lesion labels of a DICOM series as a DICOM Segmentation object (``--output-type
dicom-seg``), written with highdicom: one segment per lesion class, coded (ground-glass opacity:
DCM 112120; consolidation: SNOMED CT 95436008; any other class: SNOMED CT 52988006 "Lesion"),
each frame on its source image (the source series' SOP instances, frame of reference, position
and orientation). Like any DICOM SEG it carries the source's patient and study attributes (it
joins the patient's study in PACS), so predict writes it only with ``--keep-identifiers``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import numpy as np

from .. import __version__
from ..errors import StudyError
from .study import Study

if TYPE_CHECKING:  # pragma: no cover
    import highdicom

__all__ = ["LESION_CODES", "SEG_FILE", "lesion_segment_code", "dicom_seg"]

SEG_FILE = "lesions_seg.dcm"
# lesion class name (lower case, "-" / "_" / " " ignored) -> (code value, scheme, meaning)
LESION_CODES: Dict[str, Tuple[str, str, str]] = {
    "ggo": ("112120", "DCM", "Ground glass opacity"),
    "groundglassopacity": ("112120", "DCM", "Ground glass opacity"),
    "consolidation": ("95436008", "SCT", "Lung consolidation"),
}
_LESION = ("52988006", "SCT", "Lesion")
# Type 2 attributes of the patient / study modules that highdicom copies from the source: a
# CT image must have them (possibly empty); a source lacking one gets it empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def lesion_segment_code(name: str) -> Tuple[str, str, str]:
    """The coded concept (value, scheme designator, meaning) of a lesion class."""
    key = "".join(c for c in name.lower() if c.isalnum())
    return LESION_CODES.get(key, _LESION)


def dicom_seg(study: Study, labels: np.ndarray, lesion_classes: Sequence[str],
              model_name: str) -> "highdicom.seg.Segmentation":
    """The DICOM SEG of a DICOM study's lesion labels.

    Args:
        study: a DICOM study (its :attr:`~.study.Study.dicom_layout` names the source files).
        labels: (N, H, W) uint8 lesion labels in display orientation (0 background, k + 1 lesion
            class k), the shape of ``study.pixels``.
        lesion_classes: the model's lesion class names (segment k + 1 is class k).
        model_name: the algorithm's name recorded in each segment.
    Returns:
        a ``highdicom.seg.Segmentation`` (a pydicom Dataset: ``.save_as(path)``), BINARY, one
        segment per lesion class, empty frames omitted.
    Raises:
        StudyError: not a DICOM study, or no lesion class.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if study.dicom_layout is None:
        raise StudyError(f"{study.source}: --output-type dicom-seg needs a DICOM series "
                         f"(this is a {study.kind} input)")
    if not lesion_classes:
        raise StudyError(f"{study.name}: --output-type dicom-seg needs a model with lesion "
                         "classes")
    sources = [pydicom.dcmread(path, stop_before_pixels=True)
               for path in study.dicom_layout.files]
    for path, ds in zip(study.dicom_layout.files, sources):
        if not str(ds.get("FrameOfReferenceUID", "") or "").strip():
            raise StudyError(f"{path}: no FrameOfReferenceUID: a DICOM SEG cannot be placed on "
                             "this series")
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], version=__version__,
        family=codes.cid7162.ArtificialIntelligence)
    segments: List["hd.seg.SegmentDescription"] = []
    for k, name in enumerate(lesion_classes):
        value, scheme, meaning = lesion_segment_code(name)
        segments.append(hd.seg.SegmentDescription(
            segment_number=k + 1, segment_label=str(name)[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept(value, scheme, meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Lung]))
    stored = study.labels_on_source_images(labels).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=stored,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="oneshot_d2",
        manufacturer_model_name=model_name[:64], software_versions=__version__,
        device_serial_number="n/a", series_description="oneshot_d2 lesions",
        content_label="LESIONS", omit_empty_frames=bool(stored.any()))
