"""``predict --output-type dicom-seg``: the lesion labels as a DICOM Segmentation object, read
back with pydicom and highdicom; every frame lies on its source image (the SOP instance it
references, with that image's position and orientation) and its pixels are the lesion label
volume's (``lesions.nii.gz``) at the same points in space. The model is the stub of
test_output_values (known lesions); the series are stored in three layouts."""
import os

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.bad_input import assert_one_error
from tests.inference.test_output_values import (
    LESION_CLASSES,
    ct_volume,
    expected_labels,
    run_predict,
    write_nifti,
)
from tests.inference.test_readers import _write_series

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.777"


def _labels_at_source_pixels(source, nifti) -> np.ndarray:
    """(Rows, Columns) labels of the NIfTI volume at the centres of a source image's pixels
    (ImagePositionPatient / ImageOrientationPatient / PixelSpacing, LPS -> RAS)."""
    rows, cols = int(source.Rows), int(source.Columns)
    ipp = np.array(source.ImagePositionPatient, float)
    iop = np.array(source.ImageOrientationPatient, float)
    row_sp, col_sp = (float(v) for v in source.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = ipp + c[..., None] * col_sp * iop[:3] + r[..., None] * row_sp * iop[3:]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = np.c_[ras.reshape(-1, 3), np.ones(rows * cols)] @ np.linalg.inv(nifti.affine).T
    idx = np.rint(ijk[:, :3]).astype(int)
    data = np.asarray(nifti.dataobj)
    assert (idx >= 0).all() and (idx < data.shape).all()
    return data[idx[:, 0], idx[:, 1], idx[:, 2]].reshape(rows, cols)


@pytest.mark.parametrize("layout", ["standard", "flip_x", "transposed"])
def test_seg_frames_lie_on_their_source_images_with_the_label_volumes_voxels(
        monkeypatch, tmp_path, layout):
    # catches: frames matched to the wrong source image (display order vs file order), the
    # display flip / transposition not undone, segments numbered or coded wrongly, the SEG's
    # labels differing from lesions.nii.gz
    paths = _write_series(tmp_path / "in", ct_volume(), layout,
                          FrameOfReferenceUID=FRAME_OF_REFERENCE)
    out = tmp_path / "out"
    status, lines = run_predict(monkeypatch, [tmp_path / "in"], out, "--output-type",
                                "dicom-seg", "--keep-identifiers", "--save-nifti")
    assert status == 0, lines
    (name,) = [p for p in os.listdir(out) if os.path.isdir(out / p)]
    seg = hd.seg.segread(str(out / name / "lesions_seg.dcm"))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    assert [s.SegmentLabel for s in seg.SegmentSequence] == LESION_CLASSES
    assert [(s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
             s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator)
            for s in seg.SegmentSequence] == [("112120", "DCM"), ("95436008", "SCT")]
    sources = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        sources[ds.SOPInstanceUID] = ds
    nifti = nib.load(str(out / name / "lesions.nii.gz"))
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    orientation = [float(v) for v in
                   seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                   .ImageOrientationPatient]
    seen = 0
    for k, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == \
            pytest.approx([float(v) for v in source.ImagePositionPatient])
        assert orientation == pytest.approx([float(v) for v in source.ImageOrientationPatient])
        expected = _labels_at_source_pixels(source, nifti) == number
        np.testing.assert_array_equal(pixels[k].astype(bool), expected)
        seen += int(expected.sum())
    assert seen == int(np.count_nonzero(nifti.dataobj)) == int((expected_labels() > 0).sum())


def test_dicom_seg_only_for_dicom_inputs_and_with_the_identifiers(monkeypatch, tmp_path):
    # catches: a NIfTI input silently written without its SEG, or a SEG (which carries the
    # patient's identifiers) written in the default de-identified mode
    nifti = tmp_path / "chest.nii.gz"
    write_nifti(nifti, ct_volume())
    out = tmp_path / "out"
    status, lines = run_predict(monkeypatch, [nifti], out, "--output-type", "dicom-seg",
                                "--keep-identifiers")
    assert_one_error(status, lines, "predict", str(nifti), "needs a DICOM series",
                     exact=False)
    assert not (out / "chest").exists()
    _write_series(tmp_path / "in", ct_volume(), FrameOfReferenceUID=FRAME_OF_REFERENCE)
    status, lines = run_predict(monkeypatch, [tmp_path / "in"], tmp_path / "out2",
                                "--output-type", "dicom-seg")
    assert_one_error(status, lines, "predict", "--keep-identifiers")
    assert not (tmp_path / "out2").exists()


def test_imperfect_series_give_a_readable_seg_or_one_line_error(monkeypatch, tmp_path):
    # catches: an empty SliceThickness written into an unreadable SEG, orientations that the
    # reader accepts (within 1e-3) refused by highdicom with a traceback, a series that cannot
    # be referenced stopping the run (or failing only after the model ran) instead of one
    # error line with the other studies written
    paths = _write_series(tmp_path / "rough", ct_volume(), series_uid="1.2.3.4.5.6.7.8.1",
                          FrameOfReferenceUID=FRAME_OF_REFERENCE)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.SliceThickness = None
        ds.ImageOrientationPatient = [1.0, 4e-4 * (k % 2), 0.0, 0.0, 1.0, 0.0]
        ds.save_as(path, enforce_file_format=True)
    _write_series(tmp_path / "nowhere", ct_volume(), series_uid="1.2.3.4.5.6.7.8.2")
    out = tmp_path / "out"
    status, lines = run_predict(monkeypatch, [tmp_path / "nowhere", tmp_path / "rough"], out,
                                "--output-type", "dicom-seg", "--keep-identifiers")
    assert_one_error(status, lines, "predict", "no FrameOfReferenceUID", exact=False)
    studies = sorted(p for p in os.listdir(out) if os.path.isdir(out / p))
    assert len(studies) == 1
    seg = hd.seg.segread(str(out / studies[0] / "lesions_seg.dcm"))
    thickness = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    assert float(thickness) == pytest.approx(2.0)  # the series' slice spacing
