"""``predict --output-type dicom-sr``: the TID 1500 measurement report, read back with highdicom
(not with the module's own reader), holds report.json's lesion volumes, % of lung, lung volume
and patient result, names the model, and references every source image."""
import json
import os

import highdicom as hd
import pydicom
import pytest

from oneshot_d2 import __version__
from oneshot_d2.inference.dicom_sr import read_measurements
from tests.inference.test_dicom_seg import FRAME_OF_REFERENCE
from tests.inference.test_output_values import LESION_CLASSES, ct_volume, run_predict
from tests.inference.test_readers import _write_series


def test_sr_holds_the_reports_numbers_and_references_the_series(monkeypatch, tmp_path):
    # catches: a class's volume under another class, % of lung and mL swapped, the patient
    # result or a score left out or wrong, the model not named, source images not referenced
    paths = _write_series(tmp_path / "in", ct_volume(), FrameOfReferenceUID=FRAME_OF_REFERENCE)
    out = tmp_path / "out"
    status, lines = run_predict(monkeypatch, [tmp_path / "in"], out, "--output-type",
                                "dicom-sr", "--keep-identifiers")
    assert status == 0, lines
    (name,) = [p for p in os.listdir(out) if os.path.isdir(out / p)]
    report = json.loads((out / name / "report.json").read_text())
    sr = hd.sr.srread(str(out / name / "measurements_sr.dcm"))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = {}
    for g in sr.content.get_image_measurement_groups():
        groups[g.tracking_identifier] = g
        text = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
                for item in g[0].ContentSequence if item.ValueType == "TEXT"}
        # DCM 111001 Algorithm Name, 111003 Algorithm Version
        assert text["111001"].startswith("oneshot_d2") and text["111003"] == __version__
    burden, patient = report["burden"], report["patient"]
    for cls in LESION_CLASSES + ["total"]:
        g = groups["lesions: all classes" if cls == "total" else f"lesions: {cls}"]
        values = {(m.name.value, m.unit.value): float(m.value) for m in g.get_measurements()}
        assert values[("118565006", "mL")] == pytest.approx(burden["ml"][cls], rel=1e-6)
        assert values[("lesion-lung-percent", "%")] == pytest.approx(
            burden["percent_of_lung"][cls], rel=1e-6)
    assert burden["ml"]["GGO"] > 0 and burden["ml"]["consolidation"] > 0
    lung = {m.name.value: float(m.value) for m in groups["lung"].get_measurements()}
    assert lung["118565006"] == pytest.approx(burden["lung_ml"], rel=1e-6)
    g = groups["patient-level result"]
    (evaluation,) = g.get_qualitative_evaluations()
    assert evaluation.value.meaning == patient["class"]
    scores = {m.name.meaning: float(m.value) for m in g.get_measurements()}
    assert scores == {f"Patient score {c}": pytest.approx(v, rel=1e-6)
                      for c, v in patient["scores"].items()}
    # the module's own reader gives the same numbers
    assert read_measurements(str(out / name / "measurements_sr.dcm"))["lung"]["Volume"] == \
        pytest.approx(burden["lung_ml"], rel=1e-6)
    # every source image is referenced, and the SR joins the source's patient and study
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = {i.ReferencedSOPInstanceUID
                  for s in evidence.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert sr.PatientID == sources[0].PatientID and \
        sr.StudyInstanceUID == sources[0].StudyInstanceUID
