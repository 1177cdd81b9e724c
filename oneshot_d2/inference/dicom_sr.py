"""A study's measurements as a DICOM Structured Report (``--output-type dicom-sr``): a TID 1500
Measurement Report (Comprehensive 3D SR) written with highdicom, holding the numbers of
``report.json``.

Measurement groups (TID 1501, over the whole series; each names the model as its algorithm):

* one per lesion class and one for all lesions: finding type the class's code
  (:data:`.dicom_sources.LESION_CODES`), finding site the lung, measurements the lesion volume
  (SNOMED CT 118565006 "Volume", mL) and, for HU inputs, its percentage of the lung volume;
* the lung: its volume (mL), from the classical lung mask;
* the patient-level result: a qualitative evaluation (the class) and one score per class.

Concepts without a standard code are in the private coding scheme ``99ONESHOTD2``
(:data:`PRIVATE_SCHEME`). Like any SR of a series, it carries the source's patient and study
attributes, so predict writes it only with ``--keep-identifiers``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional

from ..errors import StudyError
from ..version import __version__
from .dicom_sources import LESION, highdicom_errors, lesion_code, source_headers
from .readers.base import one_line
from .study import Study

if TYPE_CHECKING:  # pragma: no cover
    import highdicom

__all__ = ["SR_FILE", "PRIVATE_SCHEME", "dicom_sr", "read_measurements"]

SR_FILE = "measurements_sr.dcm"
PRIVATE_SCHEME = "99ONESHOTD2"
LUNG_PERCENT = ("lesion-lung-percent", PRIVATE_SCHEME, "Lesion volume, percent of lung volume")
PATIENT_RESULT = ("patient-result", PRIVATE_SCHEME, "Patient-level result")
# groups' tracking identifiers: what each group holds (readers find a group by it)
TOTAL_ID, LUNG_ID, PATIENT_ID = "lesions: all classes", "lung", "patient-level result"


def _concept(code):
    import highdicom as hd

    return hd.sr.CodedConcept(*code)


def dicom_sr(study: Study, report: Dict, model_name: str) -> "highdicom.sr.Comprehensive3DSR":
    """The TID 1500 measurement report of a DICOM study (:func:`_measurement_report`), a
    refusal by highdicom as a one-line :class:`StudyError`."""
    try:
        return _measurement_report(study, report, model_name)
    except highdicom_errors as e:
        raise StudyError(f"{study.source}: --output-type dicom-sr: highdicom refused the "
                         f"series ({one_line(e)})") from None


def _measurement_report(study: Study, report: Dict,
                        model_name: str) -> "highdicom.sr.Comprehensive3DSR":
    """The TID 1500 measurement report of a DICOM study.

    Args:
        study: a DICOM study (its source files are referenced).
        report: the study's ``report.json`` dictionary (its ``burden`` and ``patient``).
        model_name: the algorithm's name recorded in each group (with the package version).
    Raises:
        StudyError: not a DICOM study, or a report without lesion burden or patient result.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = source_headers(study, "--output-type dicom-sr")
    burden, patient = report.get("burden"), report.get("patient")
    if not burden and not patient:
        raise StudyError(f"{study.name}: --output-type dicom-sr: the model gives neither lesion "
                         "burden nor a patient result")
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=__version__)
    images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources]
    lung_site = [hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)]
    ml = hd.sr.CodedConcept("mL", "UCUM", "milliliter")

    def group(identifier: str, finding, measurements, evaluations=None):
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
            finding_type=finding, algorithm_id=algorithm, finding_sites=lung_site,
            measurements=measurements or None, qualitative_evaluations=evaluations,
            source_images=images)

    groups: List = []
    if burden:
        percent: Dict[str, Optional[float]] = burden.get("percent_of_lung") or {}
        for name, volume in (burden.get("ml") or {}).items():
            values = [hd.sr.Measurement(name=codes.SCT.Volume, value=float(volume), unit=ml)]
            if percent.get(name) is not None:
                values.append(hd.sr.Measurement(name=_concept(LUNG_PERCENT),
                                                value=float(percent[name]),
                                                unit=codes.UCUM.Percent))
            code = LESION if name == "total" else lesion_code(name)
            groups.append(group(TOTAL_ID if name == "total" else f"lesions: {name}",
                                _concept(code), values))
        if burden.get("lung_ml") is not None:
            groups.append(group(LUNG_ID, codes.SCT.Lung, [hd.sr.Measurement(
                name=codes.SCT.Volume, value=float(burden["lung_ml"]), unit=ml)]))
    if patient:
        scores = [hd.sr.Measurement(name=_concept((f"score-{c}", PRIVATE_SCHEME,
                                                   f"Patient score {c}"[:64])),
                                    value=float(v), unit=codes.UCUM.NoUnits)
                  for c, v in patient["scores"].items()]
        result = hd.sr.QualitativeEvaluation(
            name=_concept(PATIENT_RESULT),
            value=_concept((str(patient["class"])[:16], PRIVATE_SCHEME,
                            str(patient["class"])[:64])))
        groups.append(group(PATIENT_ID, _concept(PATIENT_RESULT), scores, [result]))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="oneshot_d2", manufacturer_name="oneshot_d2",
            model_name=model_name[:64]))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=sources, content=content[0], series_instance_uid=hd.UID(), series_number=9902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="oneshot_d2",
        series_description="oneshot_d2 measurements")


def read_measurements(sr) -> Dict[str, Dict[str, float]]:
    """``{group identifier: {measurement meaning: value}}`` of an SR this module wrote
    (plus ``{"class": ...}`` in the patient group): for tests and for readers of the SR."""
    import highdicom as hd

    parsed = hd.sr.srread(sr) if isinstance(sr, str) else sr
    out: Dict[str, Dict] = {}
    for g in parsed.content.get_image_measurement_groups():
        values: Dict = {m.name.meaning: float(m.value) for m in g.get_measurements()}
        for e in g.get_qualitative_evaluations():
            values["class"] = e.value.meaning
        out[g.tracking_identifier] = values
    return out
