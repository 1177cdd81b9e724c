"""No patient identifier in predict's outputs unless ``--keep-identifiers``: a DICOM series whose
identifying attributes, folder and file names are all set is predicted (the model replaced by
the stub of test_output_values), and every byte of every output file (gzip files unpacked) is
searched for each value."""
import gzip
import json
import os

import nibabel as nib
import pydicom
import pytest

from oneshot_d2.data.phantom_study import write_dicom_series
from oneshot_d2.inference import find_studies
from tests.inference.test_output_values import (
    SPACING,
    ct_volume,
    read_csv,
    run_predict,
    write_nifti,
)

PATIENT = {
    "PatientID": "PAT-0042-XYZ",
    "PatientName": "Doe^Janet^Quincy",
    "PatientBirthDate": "19610315",
    "OtherPatientIDs": "MRN-77123",
    "StudyDate": "19990412",
    "SeriesDate": "19990413",
    "AccessionNumber": "ACC98765432",
    "StudyID": "STUDY7731",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "SeriesDescription": "Thorax B70f Janet",
}
STUDY_UID, SERIES_UID, FRAME_UID = "1.2.826.0.1.3680043.8.498.111", \
    "1.2.826.0.1.3680043.8.498.222", "1.2.826.0.1.3680043.8.498.333"


def identified_series(root) -> list:
    """The test volume as a DICOM series with every identifier set, in a folder named after the
    patient, one file per slice named after its SOPInstanceUID; returns the values to look for."""
    folder = os.path.join(str(root), PATIENT["PatientID"], "Doe_Janet")
    values = list(PATIENT.values()) + [STUDY_UID, SERIES_UID, FRAME_UID]
    for k, path in enumerate(write_dicom_series(folder, ct_volume(), SPACING,
                                                series_uid=SERIES_UID)):
        ds = pydicom.dcmread(path)
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        sop_uid = f"1.2.826.0.1.3680043.8.498.{1000 + k}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = STUDY_UID, FRAME_UID
        ds.save_as(os.path.join(folder, f"{sop_uid}.dcm"), enforce_file_format=True)
        os.remove(path)
        values.append(sop_uid)
    return values


def found_values(out, values) -> dict:
    """{value: [files holding it]} over every file under ``out`` and every path name."""
    found = {}
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            path = os.path.join(root, name)
            data = b""
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                if name.endswith(".gz"):
                    data = gzip.decompress(data)
            data += os.path.relpath(path, out).encode()
            for v in values:
                if v.encode() in data:
                    found.setdefault(v, []).append(os.path.relpath(path, out))
    return found


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("identified")
    return root, identified_series(root)


def test_no_identifier_in_any_output_by_default(monkeypatch, series, tmp_path):
    # catches: a study named after PatientID, PatientID / UIDs / SeriesDescription in
    # report.json, file names (SOPInstanceUIDs) as slice labels, the input path as the source,
    # paths in a failed study's error row, a NIfTI header's free text copied to the report or
    # to lesions.nii.gz
    root, values = series
    broken = tmp_path / PATIENT["OtherPatientIDs"]  # a folder named after the patient
    broken.mkdir()
    (broken / f"{STUDY_UID}.9.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    nifti = broken / "volume.nii.gz"  # in the same folder
    write_nifti(nifti, ct_volume())
    img = nib.load(str(nifti))
    img.header["descrip"] = PATIENT["PatientName"].encode()
    img.header["aux_file"] = PATIENT["AccessionNumber"].encode()
    nib.save(img, str(nifti))
    out = tmp_path / "out"
    status, lines = run_predict(monkeypatch, [root / PATIENT["PatientID"], broken], out,
                                "--save-overlays", "--save-nifti")
    assert status == 2 and len([line for line in lines if "error" in line]) == 1, lines
    assert found_values(out, values) == {}
    assert sorted(r["status"] for r in read_csv(out / "studies.csv")) == ["error", "ok", "ok"]
    (name,) = [p for p in os.listdir(out) if os.path.isdir(out / p) and p != "volume"]
    report = json.loads((out / name / "report.json").read_text())
    assert report["source"] == "input 1" and report["patient"]["class"] == "COVID-19"
    assert report["geometry"]["read"]["identifiers_kept"] is False
    assert [r["slice"] for r in read_csv(out / name / "slices.csv")] == [
        f"instance {k}" for k in range(1, 11)]
    assert read_csv(out / "studies.csv")[0]["source"] == "input 1"


def test_the_pseudonym_is_stable_and_tells_series_apart(series, tmp_path):
    # catches: a name drawn at random (a rerun could not find its study again) or one that
    # ignores the series UID (two series of one patient would collide)
    root, _ = series
    (a,), _ = find_studies([str(root)])
    (b,), _ = find_studies([str(root)])
    other = tmp_path / "other"  # another series of the same study
    for path in write_dicom_series(str(other), ct_volume(), SPACING, series_uid=SERIES_UID + "9"):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = STUDY_UID
        ds.save_as(path, enforce_file_format=True)
    (c,), _ = find_studies([str(other)])
    assert a.name == b.name != c.name and a.name.startswith("series-")


def test_keep_identifiers_keeps_them(monkeypatch, series, tmp_path):
    # catches: --keep-identifiers ignored; and shows that the search above finds a value
    root, values = series
    out = tmp_path / "out"
    status, lines = run_predict(monkeypatch, [root], out, "--keep-identifiers")
    assert status == 0, lines
    name = f"{PATIENT['PatientID']}_1"
    report = json.loads((out / name / "report.json").read_text())
    read = report["geometry"]["read"]
    assert (read["patient_id"], read["study_uid"], read["series_uid"]) == (
        PATIENT["PatientID"], STUDY_UID, SERIES_UID)
    assert report["source"] == str(root)
    assert read_csv(out / name / "slices.csv")[0]["slice"].endswith(".dcm")
    found = found_values(out, values)
    assert {PATIENT["PatientID"], STUDY_UID, SERIES_UID, PATIENT["SeriesDescription"]} <= set(found)
