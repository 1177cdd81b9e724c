"""Study discovery and readers of the predict feature (oneshot_d2.inference.discovery, readers,
study): DICOM series, NIfTI volumes and image slices in display orientation and Hounsfield
units, their geometry, the way back to the input's geometry, and one-line errors for bad
inputs. CPU, offline, fast.

Each test names, in a comment, the one-line slip it catches."""
import json
import logging
import os

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from oneshot_d2.data.orientation import display_to_canonical
from oneshot_d2.data.phantom import render_slice, sample_anatomy
from oneshot_d2.data.phantom_layout import PhantomSpec, write_patient_nifti
from oneshot_d2.data.transforms import lung_window
from oneshot_d2.errors import StudyError
from oneshot_d2.inference.discovery import StudyRef, find_studies
from oneshot_d2.inference.readers import (
    PNG_HU_OFFSET,
    SUPPORTED,
    load_dicom_series,
    load_nifti,
    natural_key,
)
from oneshot_d2.inference.study import Study

SIZE, N = 64, 5
ROW_SP, COL_SP, STEP, THICK = 0.7, 0.8, 2.0, 2.5  # all different: a swap shows
ORIGIN = np.array([-120.5, -95.25, -50.0])  # LPS position of display pixel (0, 0), slice 0
SLOPE, INTERCEPT = 0.5, -1024.0


# ---------------------------------------------------------------------------------------------
# helpers
def _phantom(n=N, size=SIZE, seed=3):
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    return [render_slice(rng, size, 2, anatomy, 0.3 + 0.05 * k) for k in range(n)]


def _hu_volume(n=N, size=SIZE, seed=3):
    """(N, H, W) float32 HU in display orientation."""
    return np.stack([s.hu for s in _phantom(n, size, seed)])


def _stored(hu, slope=SLOPE, intercept=INTERCEPT, signed=False):
    raw = np.rint((hu.astype(np.float64) - intercept) / slope)
    return raw.astype(np.int16 if signed else np.uint16)


def _restored(hu, slope=SLOPE, intercept=INTERCEPT):
    """What the reader must give back: the stored values rescaled, float32."""
    return (_stored(hu, slope, intercept).astype(np.float64) * slope + intercept).astype(
        np.float32)


def _ct_dataset(image, ipp=None, iop=(1, 0, 0, 0, 1, 0), spacing=(ROW_SP, COL_SP),
                series_uid="1.2.3.4.5.6.7.8.99887766", instance=1, series_number=7,
                slope=SLOPE, intercept=INTERCEPT, signed=False, **extra):
    """A CT slice dataset whose stored values are ``image`` (2-D integer array)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = "PAT01"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SeriesInstanceUID = series_uid
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    if ipp is not None:
        ds.ImagePositionPatient = [float(v) for v in ipp]
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = THICK
    ds.Rows, ds.Columns = (int(v) for v in image.shape[:2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(image.astype(np.int16 if signed else np.uint16)).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def _save(ds, path):
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


# (stored image from display slice, IOP, LPS offset (x, y) of the stored first pixel from the
# display first pixel for H x W slices, PixelSpacing)
LAYOUTS = {
    "standard": (lambda a: a, (1, 0, 0, 0, 1, 0), lambda h, w: (0, 0), (ROW_SP, COL_SP)),
    "flip_x": (lambda a: a[:, ::-1], (-1, 0, 0, 0, 1, 0), lambda h, w: ((w - 1) * COL_SP, 0),
               (ROW_SP, COL_SP)),
    "flip_y": (lambda a: a[::-1, :], (1, 0, 0, 0, -1, 0), lambda h, w: (0, (h - 1) * ROW_SP),
               (ROW_SP, COL_SP)),
    "transposed": (lambda a: a.T, (0, 1, 0, 1, 0, 0), lambda h, w: (0, 0), (COL_SP, ROW_SP)),
}


def _write_series(folder, hu, layout="standard", shuffle=True, seed=0, positions=True,
                  signed=False, **kw):
    """Write display-orientation HU slices (N, H, W) as a DICOM series, files in random order
    with random names; returns the file paths (in slice order)."""
    to_stored, iop, offset, spacing = LAYOUTS[layout]
    dx, dy = offset(*hu.shape[1:])
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(hu)) if shuffle else np.arange(len(hu))
    paths = [None] * len(hu)
    for rank, k in enumerate(order):
        ipp = ORIGIN + np.array([dx, dy, k * STEP]) if positions else None
        ds = _ct_dataset(to_stored(_stored(hu[k], signed=signed)), ipp, iop, spacing,
                         instance=int(k) + 1, signed=signed, **kw)
        name = f"{rng.integers(10**8):08x}{rank}.dcm"
        paths[k] = _save(ds, os.path.join(folder, name))
    return paths


def _err(excinfo_or_error):
    msg = str(getattr(excinfo_or_error, "value", excinfo_or_error))
    assert "\n" not in msg, msg  # one line
    return msg


# ---------------------------------------------------------------------------------------------
# DICOM
def test_dicom_series_hu_order_spacing_affine(tmp_path):
    # catches: HU without slope/intercept, slices in file order, spacing (row, col) swapped or
    # SliceThickness used instead of the position step, positions not sorted, affine in LPS
    hu = _hu_volume()
    paths = _write_series(tmp_path / "s", hu)
    refs, errors = find_studies([str(tmp_path / "s")], keep_identifiers=True)
    assert errors == [] and len(refs) == 1
    ref = refs[0]
    assert ref.kind == "dicom" and ref.name == "PAT01_7" and len(ref.files) == N
    study = ref.load()
    assert isinstance(study, Study) and study.is_hu and study.pixels.dtype == np.float32
    np.testing.assert_array_equal(study.pixels, np.stack([_restored(h) for h in hu]))
    assert np.abs(study.pixels - hu).max() <= SLOPE / 2 + 1e-3
    assert study.slice_labels == [os.path.basename(p) for p in paths]
    np.testing.assert_allclose(study.spacing, (ROW_SP, COL_SP, STEP))
    np.testing.assert_allclose(study.positions, ORIGIN[2] + STEP * np.arange(N))
    ras = lambda lps: np.array([-lps[0], -lps[1], lps[2]])  # noqa: E731
    np.testing.assert_allclose(study.affine @ [0, 0, 0, 1], [*ras(ORIGIN), 1], atol=1e-6)
    c, r, k = 5, 9, 3  # display pixel (row r, column c) of slice k
    lps = ORIGIN + [c * COL_SP, r * ROW_SP, k * STEP]
    np.testing.assert_allclose(study.affine @ [c, r, k, 1], [*ras(lps), 1], atol=1e-6)
    assert study.meta["modality"] == "CT" and study.meta["rescale_slope"] == SLOPE
    assert study.meta["rescale_intercept"] == INTERCEPT and study.meta["patient_id"] == "PAT01"
    json.dumps(study.meta)  # catches pydicom values (MultiValue, DSfloat, UID) left in meta


@pytest.mark.parametrize("layout", ["flip_x", "flip_y", "transposed"])
def test_dicom_flipped_storage_gives_display_orientation(tmp_path, layout):
    # catches: the stored image used as is when ImageOrientationPatient is flipped / swapped
    # (left-right mirrored lungs), or the spacing / affine not following the flip
    hu = _hu_volume()
    ref = load_dicom_series(_write_series(tmp_path / "std", hu))
    study = load_dicom_series(_write_series(tmp_path / layout, hu, layout, signed=True))
    np.testing.assert_array_equal(study.pixels, ref.pixels)
    np.testing.assert_allclose(study.spacing, ref.spacing)
    np.testing.assert_allclose(study.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(study.positions, ref.positions)


def test_dicom_instance_number_fallback(tmp_path, caplog):
    # catches: a crash (or file-name order) when ImagePositionPatient is missing
    hu = _hu_volume()
    paths = _write_series(tmp_path / "s", hu, positions=False, SpacingBetweenSlices=STEP)
    with caplog.at_level(logging.WARNING, logger="oneshot_d2.inference.readers"):
        study = load_dicom_series(sorted(paths))
    np.testing.assert_array_equal(study.pixels, np.stack([_restored(h) for h in hu]))
    assert study.positions is None
    np.testing.assert_allclose(study.spacing, (ROW_SP, COL_SP, STEP))
    assert "InstanceNumber" in caplog.text


def test_dicom_single_file_and_uneven_spacing(tmp_path, caplog):
    # catches: a single file refused, or its slice spacing not taken from SliceThickness;
    # uneven gaps between slices (missing slices) passed silently
    hu = _hu_volume(n=1)
    (path,) = _write_series(tmp_path / "one", hu)
    refs, errors = find_studies([path])
    assert errors == [] and len(refs) == 1
    study = refs[0].load()
    assert study.pixels.shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(study.spacing, (ROW_SP, COL_SP, THICK))
    paths = _write_series(tmp_path / "gap", _hu_volume(n=4))
    os.remove(paths[2])  # slice positions 0, 2, 6 mm
    with caplog.at_level(logging.WARNING, logger="oneshot_d2.inference.readers"):
        study = load_dicom_series([p for p in paths if os.path.exists(p)])
    assert "slice spacing varies" in caplog.text and study.pixels.shape[0] == 3


def test_pydicom_ct_small():
    # catches: raw stored values returned instead of HU (intercept -1024 forgotten), or a
    # rescale applied twice
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    study = load_dicom_series([path])
    assert study.pixels.shape == (1, ds.Rows, ds.Columns)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(study.pixels[0], expected.astype(np.float32))
    assert -1100 <= study.pixels.min() < -500 and 500 < study.pixels.max() < 3100
    lw = lung_window(study.pixels)
    assert lw.dtype == np.uint8 and lw.max() == 255 and lw.min() < 100


# ---------------------------------------------------------------------------------------------
# NIfTI
def test_nifti_phantom_volume_exact_display_slices(tmp_path):
    # catches: the RAS array shown without the flip / transpose (the inverse of write_patient_nifti)
    slices = _phantom(n=4)
    os.makedirs(tmp_path / "nifti")
    spec = PhantomSpec(size=SIZE, slice_thickness_mm=5.0)
    write_patient_nifti(str(tmp_path), 42, slices, spec)
    refs, errors = find_studies([str(tmp_path / "nifti" / "42_ct.nii.gz")])
    assert errors == [] and [r.name for r in refs] == ["42_ct"]
    study = refs[0].load()
    assert study.kind == "nifti" and study.is_hu and study.pixels.dtype == np.float32
    np.testing.assert_array_equal(study.pixels,
                                  np.stack([s.hu.astype(np.int16) for s in slices]))
    np.testing.assert_allclose(study.spacing, (spec.spacing(), spec.spacing(), 5.0))
    np.testing.assert_allclose(study.positions, 5.0 * np.arange(4))
    assert study.slice_labels == [f"slice {k}" for k in range(4)]
    json.dumps(study.meta)  # catches numpy / nibabel values left in meta


def _canonical_case():
    """(RAS+ int16 volume (X, Y, N), affine) with anisotropic spacing and a non-zero origin."""
    hu = _hu_volume(n=4)
    data = display_to_canonical(np.rint(hu)).astype(np.int16)
    affine = np.diag([COL_SP, ROW_SP, THICK, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return data, affine


def _reflip(affine, shape, axis):
    """Affine of an array flipped along ``axis`` (same world positions)."""
    f = np.eye(4)
    f[axis, axis] = -1
    f[axis, 3] = shape[axis] - 1
    return affine @ f


def _permute(affine, perm):
    """Affine of ``data.transpose(perm)``."""
    p = np.eye(4)
    p[:3, :3] = np.eye(3)[:, list(perm)]
    return affine @ p


# layouts: a function (array, affine) -> (array, affine) holding the same world volume
NIFTI_LAYOUTS = {
    "ras": lambda d, a: (d, a),
    "lps": lambda d, a: (d[::-1, ::-1, :],
                         _reflip(_reflip(a, d.shape, 0), d.shape, 1)),
    "superior_first": lambda d, a: (d[:, :, ::-1], _reflip(a, d.shape, 2)),
    "xy_swapped": lambda d, a: (d.transpose(1, 0, 2), _permute(a, (1, 0, 2))),
    "slices_first_lps": lambda d, a: (d[::-1, ::-1, :].transpose(2, 0, 1),
                                      _permute(_reflip(_reflip(a, d.shape, 0), d.shape, 1),
                                               (2, 0, 1))),
}


@pytest.mark.parametrize("layout", list(NIFTI_LAYOUTS))
def test_nifti_layouts_and_label_round_trip(tmp_path, layout):
    # catches: the input's axis order / flips ignored (mirrored or transposed slices), the
    # spacing read from the input's pixdim order, and label volumes written in the canonical
    # layout instead of the input's (shape, affine or voxels off)
    data, affine = _canonical_case()
    ref = load_nifti(_save_nifti(tmp_path / "ras.nii.gz", data, affine))
    arr, aff = NIFTI_LAYOUTS[layout](data, affine)
    path = _save_nifti(tmp_path / f"{layout}.nii.gz", arr, aff, qform_code=1, sform_code=2)
    study = load_nifti(path)
    np.testing.assert_array_equal(study.pixels, ref.pixels)
    np.testing.assert_allclose(study.spacing, (ROW_SP, COL_SP, THICK))
    np.testing.assert_allclose(study.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(study.positions, ref.positions, atol=1e-6)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=study.pixels.shape).astype(np.uint8)
    out = str(tmp_path / "labels.nii.gz")
    nib.save(study.label_volume_image(labels), out)
    back = nib.load(out)
    assert back.shape == arr.shape
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    expected, _ = NIFTI_LAYOUTS[layout](display_to_canonical(labels), affine)
    got = np.asanyarray(back.dataobj)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def _save_nifti(path, data, affine, qform_code=None, sform_code=None, slope=None):
    img = nib.Nifti1Image(data, affine)
    if qform_code is not None:
        img.set_qform(affine, code=qform_code)
    if sform_code is not None:
        img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    if slope is not None:  # nibabel resets the scaling on save: patch scl_slope / scl_inter
        assert str(path).endswith(".nii")
        with open(path, "r+b") as f:
            f.seek(112)
            f.write(np.array(slope, "<f4").tobytes())
    return str(path)


def test_nifti_4d_singleton_scaling_and_bad_shapes(tmp_path):
    # catches: scl_slope / scl_inter ignored (raw ints read as HU), a (X, Y, Z, 1) volume
    # refused, or a real 4-D / 2-D volume read as slices
    data, affine = _canonical_case()
    raw = ((data.astype(np.int32) + 1024) * 2).astype(np.int16)  # HU = raw * 0.5 - 1024
    path = _save_nifti(tmp_path / "scaled.nii", raw[..., None], affine, slope=(0.5, -1024.0))
    study = load_nifti(path)
    ref = load_nifti(_save_nifti(tmp_path / "plain.nii", data, affine))
    np.testing.assert_array_equal(study.pixels, ref.pixels)
    labels = np.ones(study.pixels.shape, np.uint8)
    assert study.label_volume_image(labels).shape == raw[..., None].shape
    for name, arr in (("four_d.nii.gz", np.stack([data, data], axis=-1)),
                      ("two_d.nii.gz", data[:, :, 0])):
        bad = _save_nifti(tmp_path / name, arr, affine)
        with pytest.raises(StudyError) as e:
            load_nifti(bad)
        msg = _err(e)
        assert bad in msg and f"{arr.ndim}-D volume (shape" in msg and "3-D CT volume" in msg


def test_nifti_oblique_refused(tmp_path):
    # catches: an oblique volume read as if axial (its slices are not the model's slices)
    data, affine = _canonical_case()
    t = np.radians(12.0)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    path = _save_nifti(tmp_path / "oblique.nii.gz", data, rot @ affine)
    with pytest.raises(StudyError) as e:
        load_nifti(path)
    msg = _err(e)
    assert path in msg and "12.0 degrees" in msg
    small = np.eye(4)
    t = np.radians(3.0)
    small[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    load_nifti(_save_nifti(tmp_path / "slight.nii.gz", data, small @ affine))  # 3 deg: fine


# ---------------------------------------------------------------------------------------------
# image files
def test_image_folder_natural_order_and_modes(tmp_path):
    # catches: lexicographic order (img10 before img2); RGBA / palette images refused or
    # read with their colour channels
    folder = tmp_path / "case 1"
    folder.mkdir()
    for i in (10, 2, 1):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((8, 6), i * 10, np.uint8))
    refs, errors = find_studies([str(folder)])
    assert errors == [] and [r.name for r in refs] == ["case_1"]
    study = refs[0].load()
    assert study.slice_labels == ["img1.png", "img2.png", "img10.png"]
    assert [int(s[0, 0]) for s in study.pixels] == [10, 20, 100]
    assert not study.is_hu and study.pixels.dtype == np.uint8 and study.spacing is None
    np.testing.assert_array_equal(study.affine, np.eye(4))
    rgba = np.zeros((8, 6, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 120, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pal = Image.fromarray(np.full((8, 6), 3, np.uint8), "L").convert("P")
    pal.save(tmp_path / "pal.png")
    for name, value in (("rgba.png", 120), ("pal.png", 3)):
        refs, errors = find_studies([str(tmp_path / name)])
        assert errors == [] and refs[0].name == name[:-4]
        s = refs[0].load()
        assert s.pixels.shape == (1, 8, 6) and s.pixels.dtype == np.uint8
        assert int(s.pixels.max()) == value
    assert natural_key("img2") < natural_key("img10")


def test_sixteen_bit_png_is_hu(tmp_path):
    # catches: 16-bit slices refused by open_image or read as 8-bit, the 1024 offset forgotten
    hu = np.rint(_hu_volume(n=2))
    for k, h in enumerate(hu):
        assert cv2.imwrite(str(tmp_path / f"s{k}.png"), (h + PNG_HU_OFFSET).astype(np.uint16))
    refs, errors = find_studies([str(tmp_path)])
    assert errors == [] and len(refs) == 1
    study = refs[0].load()
    assert study.is_hu and study.pixels.dtype == np.float32
    np.testing.assert_array_equal(study.pixels, hu.astype(np.float32))
    np.testing.assert_array_equal(refs[0].load(png_hu_offset=0).pixels, hu + PNG_HU_OFFSET)


def test_bad_image_inputs(tmp_path):
    # catches: sizes / bit depths mixed silently, a truncated or empty slice crashing with a
    # traceback instead of a one-line error naming the file
    a, b = tmp_path / "sizes", tmp_path / "bits"
    a.mkdir()
    b.mkdir()
    cv2.imwrite(str(a / "1.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(a / "2.png"), np.zeros((8, 9), np.uint8))
    cv2.imwrite(str(b / "1.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(b / "2.png"), np.zeros((8, 8), np.uint16))
    msg = _err(_load_error(str(a)))
    assert "1.png" in msg and "2.png" in msg and "8x9" in msg and "8x8" in msg
    msg = _err(_load_error(str(b)))
    assert "1.png" in msg and "2.png" in msg and "8-bit" in msg and "16-bit" in msg
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    data = ok.read_bytes()
    for name, payload in (("truncated.png", data[: len(data) // 2]), ("empty.png", b"")):
        path = tmp_path / name
        path.write_bytes(payload)
        msg = _err(_load_error(str(path)))
        assert str(path) in msg


def _load_error(path):
    refs, errors = find_studies([path])
    assert errors == [] and len(refs) == 1
    with pytest.raises(StudyError) as e:
        refs[0].load()
    return e


# ---------------------------------------------------------------------------------------------
# bad DICOM inputs
def _one(tmp_path, name="bad.dcm", **kw):
    hu = _hu_volume(n=1, size=16)
    return _save(_ct_dataset(_stored(hu[0]), ORIGIN, **kw), tmp_path / name)


def _dicom_error(paths):
    with pytest.raises(StudyError) as e:
        load_dicom_series(paths)
    return _err(e)


def test_bad_dicom_tags(tmp_path):
    # catches: an MR series or a file without the HU rescale read as CT, a file without
    # pixels, a multi-frame or colour file reshaped into nonsense
    path = _one(tmp_path, "mr.dcm")
    ds = pydicom.dcmread(path)
    ds.Modality = "MR"
    _save(ds, path)
    assert path in (msg := _dicom_error([path])) and "modality MR, expected CT" in msg
    for key in ("RescaleSlope", "RescaleIntercept"):
        p = _one(tmp_path, f"no_{key}.dcm", **{key.replace("Rescale", "").lower(): None})
        msg = _dicom_error([p])
        assert p in msg and f"{key} missing" in msg
    ds = pydicom.dcmread(_one(tmp_path, "nopix.dcm"))
    del ds.PixelData
    p = _save(ds, tmp_path / "nopix.dcm")
    assert p in (msg := _dicom_error([p])) and "no PixelData" in msg
    ds = pydicom.dcmread(_one(tmp_path, "multi.dcm"))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    p = _save(ds, tmp_path / "multi.dcm")
    assert p in (msg := _dicom_error([p])) and "multi-frame" in msg
    ds = pydicom.dcmread(_one(tmp_path, "rgb.dcm"))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((16, 16, 3), np.uint8).tobytes()
    p = _save(ds, tmp_path / "rgb.dcm")
    assert p in (msg := _dicom_error([p])) and "colour" in msg


def test_bad_dicom_series(tmp_path):
    # catches: slices of different sizes stacked / cropped, duplicate positions kept (two
    # acquisitions interleaved), mixed orientations, oblique and non-axial series accepted
    hu = _hu_volume(n=2, size=16)
    a = _save(_ct_dataset(_stored(hu[0]), ORIGIN), tmp_path / "a.dcm")
    b = _save(_ct_dataset(_stored(hu[1][:, :12]), ORIGIN + [0, 0, STEP]), tmp_path / "b.dcm")
    msg = _dicom_error([a, b])
    assert a in msg and b in msg and "16x12" in msg and "16x16" in msg
    c = _save(_ct_dataset(_stored(hu[1]), ORIGIN), tmp_path / "c.dcm")
    msg = _dicom_error([a, c])
    assert a in msg and c in msg and "same slice position" in msg
    d = _save(_ct_dataset(_stored(hu[1]), ORIGIN + [0, 0, STEP], iop=(1, 0, 0, 0, 0.98, 0.2)),
              tmp_path / "d.dcm")
    msg = _dicom_error([a, d])
    assert a in msg and d in msg and "ImageOrientationPatient" in msg
    t = np.radians(10.0)
    rot = (np.cos(t), np.sin(t), 0, -np.sin(t), np.cos(t), 0)
    e = _save(_ct_dataset(_stored(hu[0]), ORIGIN, iop=rot), tmp_path / "e.dcm")
    msg = _dicom_error([e])
    assert e in msg and "oblique" in msg and "10.0 degrees" in msg
    f = _save(_ct_dataset(_stored(hu[0]), ORIGIN, iop=(0, 1, 0, 0, 0, -1)), tmp_path / "f.dcm")
    msg = _dicom_error([f])
    assert f in msg and "90.0 degrees from the patient z axis" in msg


def test_compressed_dicom_without_decoder(tmp_path, monkeypatch):
    # catches: pydicom's multi-line "missing dependencies" RuntimeError escaping as a
    # traceback instead of the one-line "pip install 'oneshot_d2[dicom]'" advice
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    ds = _ct_dataset(np.zeros((16, 16), np.uint16), ORIGIN)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 40])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = _save(ds, tmp_path / "j2k.dcm")
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable",
                        {"pylibjpeg": ("numpy", "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})
    msg = _dicom_error([path])
    assert path in msg and "needs pylibjpeg" in msg and "oneshot_d2[dicom]" in msg


# ---------------------------------------------------------------------------------------------
# find_studies
def test_find_studies_mixed_inputs(tmp_path, caplog):
    # catches: one bad path aborting the whole call, a folder of two series read as one,
    # DICOMDIR / notes read as slices, name clashes between studies (outputs overwritten)
    hu = _hu_volume(n=3, size=16)
    mixed = tmp_path / "mixed"
    _write_series(mixed / "x", hu, series_number=3, series_uid="1.2.3.1")
    _write_series(mixed / "y", hu, series_number=None, series_uid="1.2.3.4.5.6.7.8.12345678")
    (mixed / "notes.txt").write_text("not an image")
    _save(_ct_dataset(np.zeros((4, 4)), ORIGIN), mixed / "DICOMDIR")
    # extension-less DICOM (detected by the DICM preamble)
    bare = tmp_path / "bare"
    bare.mkdir()
    _save(_ct_dataset(_stored(hu[0]), ORIGIN, series_uid="1.9"), bare / "IM0001")
    niftis = tmp_path / "vols"
    niftis.mkdir()
    data, affine = _canonical_case()
    for name in ("my scan (1).nii.gz", "a.nii", "a.nii.gz"):
        _save_nifti(niftis / name, data, affine)
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all")
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    missing = tmp_path / "missing"
    paths = [str(p) for p in (missing, mixed, empty, garbage, bare, text, niftis)]
    with caplog.at_level(logging.WARNING, logger="oneshot_d2.inference"):
        refs, errors = find_studies(paths, keep_identifiers=True)
    assert [r.name for r in refs] == ["PAT01_3", "PAT01_12345678", "PAT01_7", "a", "a-2",
                                      "my_scan__1_"]
    assert [r.source for r in refs[:3]] == [str(mixed)] * 2 + [str(bare)]
    # without the identifiers: the same studies, DICOM ones named by a hash of their UIDs and
    # sourced by the input's position, the others as before
    anonymous, _ = find_studies(paths)
    assert [r.files for r in anonymous] == [r.files for r in refs]
    assert all(r.name.startswith("series-") for r in anonymous[:3])
    assert len({r.name for r in anonymous[:3]}) == 3
    assert [r.source for r in anonymous[:3]] == ["input 2"] * 2 + ["input 5"]
    assert [(r.name, r.source) for r in anonymous[3:]] == [(r.name, "input 7") for r in refs[3:]]
    assert [r.kind for r in refs] == ["dicom"] * 3 + ["nifti"] * 3
    assert [len(r.files) for r in refs[:3]] == [3, 3, 1]
    assert "notes.txt" in caplog.text and "DICOMDIR" in caplog.text
    msgs = [_err(e) for e in errors]
    assert len(msgs) == 4
    assert str(missing) in msgs[0] and "no such file" in msgs[0]
    assert str(empty) in msgs[1] and "empty folder" in msgs[1]
    assert str(garbage) in msgs[2] and "not a DICOM file" in msgs[2]
    assert str(text) in msgs[3] and "unsupported file type '.txt'" in msgs[3]
    studies = [r.load() for r in refs[:2]]
    np.testing.assert_array_equal(studies[0].pixels, studies[1].pixels)
    assert isinstance(refs[0], StudyRef) and ".nii.gz" in SUPPORTED and ".dcm" in SUPPORTED


def test_dicom_label_volume_image(tmp_path):
    # catches: DICOM labels written without the patient geometry (identity affine) or in
    # (N, H, W) order, so that they do not overlay the series in a viewer
    hu = _hu_volume(n=3, size=16)
    study = load_dicom_series(_write_series(tmp_path / "s", hu, layout="flip_x"))
    labels = np.zeros(study.pixels.shape, np.uint8)
    labels[1, 2, 3] = 2  # slice 1, row 2, column 3
    out = str(tmp_path / "lab.nii.gz")
    nib.save(study.label_volume_image(labels), out)
    back = nib.load(out)
    assert back.shape == (16, 16, 3) and int(back.header["sform_code"]) == 1
    (i, j, k), = np.argwhere(np.asanyarray(back.dataobj) == 2)
    lps = ORIGIN + [3 * COL_SP, 2 * ROW_SP, 1 * STEP]
    np.testing.assert_allclose(back.affine @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1],
                               atol=1e-4)
    with pytest.raises(ValueError):
        study.label_volume_image(labels[:2])


# ---------------------------------------------------------------------------------------------
# the reader registry
def test_registry_order_and_claims(tmp_path):
    # catches: readers registered in another order (a folder's studies listed differently), a
    # file claimed by content before its extension is looked at, or the DICM sniff dropped
    from oneshot_d2.inference.readers import READERS, reader_for

    assert list(READERS) == ["dicom", "nifti", "image"]
    bare = tmp_path / "IM0001"
    bare.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    png_with_preamble = tmp_path / "x.png"
    png_with_preamble.write_bytes(b"\0" * 128 + b"DICM")
    assert reader_for(str(bare)).kind == "dicom"
    assert reader_for(str(png_with_preamble)).kind == "image"
    assert reader_for(str(tmp_path / "a.NII.GZ")).kind == "nifti"
    assert reader_for(str(tmp_path / "notes.txt")) is None


def test_a_registered_reader_is_used_by_discovery_and_load(tmp_path, monkeypatch):
    # catches: discovery or StudyRef.load bypassing the registry (a new format would need
    # edits in discovery), or the options not handed to the reader
    from collections import OrderedDict

    from oneshot_d2.inference import discovery
    from oneshot_d2.inference.readers import READERS, ReadOptions, StudyReader

    seen = {}

    class NpyReader(StudyReader):
        kind, extensions, description = "npy", (".npy",), "NumPy (.npy)"

        def group(self, files, source, given_directly, errors, options=None):
            return [(os.path.basename(p)[:-4], p, [p]) for p in files]

        def load(self, files, name=None, source=None, options=None):
            seen["options"] = options
            return Study(name=name, source=source, kind="npy", pixels=np.load(files[0]),
                         is_hu=True, spacing=None, positions=None, slice_labels=["0"],
                         affine=np.eye(4), meta={})

    registry = OrderedDict(READERS)
    registry["npy"] = NpyReader()
    monkeypatch.setattr(discovery, "READERS", registry)
    monkeypatch.setattr("oneshot_d2.inference.readers.base.READERS", registry)
    np.save(tmp_path / "vol.npy", np.zeros((1, 4, 4), np.float32))
    (tmp_path / "notes.txt").write_text("x")
    refs, errors = discovery.find_studies([str(tmp_path)])
    assert [(r.name, r.kind) for r in refs] == [("vol", "npy")] and errors == []
    study = refs[0].load(png_hu_offset=7)
    assert study.pixels.shape == (1, 4, 4) and isinstance(seen["options"], ReadOptions)
    assert seen["options"].png_hu_offset == 7


def test_two_series_side_by_side_in_one_folder(tmp_path):
    # catches: a folder's DICOM files grouped by folder (or by PatientID) instead of by
    # SeriesInstanceUID: two reconstructions of one scan at the same positions (e.g. lung and
    # soft-tissue kernels), files interleaved in one folder, would be read as one series
    # with duplicate positions, or as a mix of both
    lung, soft = _hu_volume(seed=3), _hu_volume(seed=4)
    a = _write_series(tmp_path / "scan", lung, seed=1, series_number=2, series_uid="1.2.3.2")
    b = _write_series(tmp_path / "scan", soft, seed=2, series_number=3, series_uid="1.2.3.3")
    names = sorted(os.listdir(tmp_path / "scan"))
    assert len(names) == 2 * N and {os.path.dirname(p) for p in a + b} == {
        str(tmp_path / "scan")}
    refs, errors = find_studies([str(tmp_path / "scan")])
    assert errors == [] and len(refs) == 2
    by_series = {ref.load().meta["series_number"]: ref for ref in refs}
    assert sorted(map(os.path.basename, by_series[2].files)) == sorted(map(os.path.basename, a))
    np.testing.assert_array_equal(by_series[2].load().pixels,
                                  np.stack([_restored(h) for h in lung]))
    np.testing.assert_array_equal(by_series[3].load().pixels,
                                  np.stack([_restored(h) for h in soft]))
