"""The lesion labels of a DICOM series as a DICOM Segmentation object (``--output-type
dicom-seg``), written with highdicom: one segment per lesion class, coded
(:data:`.dicom_sources.LESION_CODES`), each frame on its source image (the source series' SOP
instances, frame of reference, position and orientation). Like any DICOM SEG it carries the
source's patient and study attributes (it joins the patient's study in PACS), so predict writes
it only with ``--keep-identifiers``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

import numpy as np

from ..errors import StudyError
from ..version import __version__
from .dicom_sources import highdicom_errors, lesion_code, source_headers
from .readers.base import one_line
from .study import Study

if TYPE_CHECKING:  # pragma: no cover
    import highdicom

__all__ = ["SEG_FILE", "dicom_seg"]

SEG_FILE = "lesions_seg.dcm"


def dicom_seg(study: Study, labels: np.ndarray, lesion_classes: Sequence[str],
              model_name: str) -> "highdicom.seg.Segmentation":
    """The DICOM SEG of a DICOM study's lesion labels (:func:`_segmentation`), a refusal by
    highdicom as a one-line :class:`StudyError`."""
    try:
        return _segmentation(study, labels, lesion_classes, model_name)
    except highdicom_errors as e:
        raise StudyError(f"{study.source}: --output-type dicom-seg: highdicom refused the "
                         f"series ({one_line(e)})") from None


def _segmentation(study: Study, labels: np.ndarray, lesion_classes: Sequence[str],
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
    from pydicom.sr.codedict import codes

    sources = source_headers(study, "--output-type dicom-seg", geometry=True)
    if not lesion_classes:
        raise StudyError(f"{study.name}: --output-type dicom-seg needs a model with lesion "
                         "classes")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], version=__version__,
        family=codes.cid7162.ArtificialIntelligence)
    segments: List["hd.seg.SegmentDescription"] = []
    for k, name in enumerate(lesion_classes):
        value, scheme, meaning = lesion_code(name)
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
