"""Synthetic CT phantom: determinism, HU ranges of lesions, class patterns, on-disk layout."""
import json
import os

import cv2
import numpy as np
import pytest

from oneshot_d2.data import phantom_dataset
from oneshot_d2.data.phantom import (
    CONSOLIDATION,
    COVID,
    CP,
    GGO,
    LUNG,
    NORMAL,
    render_slice,
    sample_anatomy,
)
from oneshot_d2.data.phantom_dataset import PhantomSpec, write_phantom_dataset
from oneshot_d2.data.transforms import lung_window


def _slice(label, seed=0, size=128):
    rng = np.random.default_rng(seed)
    return render_slice(rng, size, label, sample_anatomy(rng), z=0.6)


def test_deterministic():
    a, b = _slice(COVID, 3), _slice(COVID, 3)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.hu, _slice(COVID, 4).hu)


def test_anatomy_hounsfield_units():
    s = _slice(NORMAL, 1, size=256)
    lung = s.hu[s.mask == LUNG]
    assert -950 < np.median(lung) < -750  # aerated parenchyma
    assert s.hu.min() >= -1024 and s.hu.max() > 400  # air outside, bone in the spine / ribs
    assert s.mask.max() == LUNG  # a normal slice has no lesion


def test_covid_slices_are_bilateral_ggo():
    for seed in range(6):
        s = _slice(COVID, seed, size=256)
        ggo = s.mask == GGO
        assert ggo.any()
        assert -750 < np.median(s.hu[ggo]) < -250
        cols = np.nonzero(ggo | (s.mask == CONSOLIDATION))[1]
        assert cols.min() < 128 <= cols.max(), "COVID-like lesions must be bilateral"


def test_cp_slices_are_unilateral_consolidation():
    for seed in range(6):
        s = _slice(CP, seed, size=256)
        cons = s.mask == CONSOLIDATION
        assert cons.sum() > 300
        assert -150 < np.median(s.hu[cons]) < 150
        cols = np.nonzero(cons)[1]
        assert cols.max() < 128 or cols.min() >= 128, "CP-like consolidation is unilateral"


def test_lung_window():
    out = lung_window(np.array([-1350.0, -600.0, 150.0, 3000.0]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 128, 255, 255]


def test_render_rejects_bad_label():
    with pytest.raises(ValueError, match="label"):
        _slice(5)


def test_dataset_layout(phantom_root):
    seg = os.path.join(phantom_root, "segmentation")
    train = open(os.path.join(seg, "train_split_segmentation.txt")).read().split()
    test = open(os.path.join(seg, "test_split_segmentation.txt")).read().split()
    assert len(train) == 8 and len(test) == 4
    for name in train + test:
        img = cv2.imread(os.path.join(seg, "imgs", name), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(os.path.join(seg, "masks", name[:-4] + ".png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == mask.shape == (128, 128) and img.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
    patients = lambda names: {n.split("_")[0] for n in names}  # noqa: E731
    assert not patients(train) & patients(test)

    cls = os.path.join(phantom_root, "classification")
    split_patients = []
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        lines = open(os.path.join(cls, f"{split}_COVIDx_CT.txt")).read().splitlines()
        assert len(lines) == n
        for line in lines:
            name, label, *box = line.split()
            prefix = {"0": "Normal_", "1": "CP_", "2": "NCP_"}[label]
            assert name.startswith(prefix) and len(box) == 4
            assert os.path.isfile(os.path.join(cls, "images", name))
        split_patients.append({line.split("_")[1] for line in lines})
    assert not (split_patients[0] & split_patients[1] or split_patients[0] & split_patients[2])
    meta = json.load(open(os.path.join(phantom_root, "phantom.json")))
    assert meta["counts"]["seg_train"] == 8


def test_dataset_is_deterministic(tmp_path):
    spec = PhantomSpec(size=64, seg_train=2, seg_test=1, cls_train=3, cls_val=1, cls_test=1,
                       seed=11)
    write_phantom_dataset(str(tmp_path / "a"), spec)
    write_phantom_dataset(str(tmp_path / "b"), spec)
    for sub in ("segmentation/masks", "classification/images"):
        names = sorted(os.listdir(tmp_path / "a" / sub))
        assert names == sorted(os.listdir(tmp_path / "b" / sub))
        for n in names:
            a, b = tmp_path / "a" / sub / n, tmp_path / "b" / sub / n
            assert a.read_bytes() == b.read_bytes()


def test_save_hu_writes_16bit_and_nifti(tmp_path):
    import nibabel as nib

    spec = PhantomSpec(size=64, seg_train=2, seg_test=1, cls_train=3, cls_val=1, cls_test=1,
                       slices_per_patient=2, save_hu=True, seed=1)
    root = tmp_path / "hu"
    write_phantom_dataset(str(root), spec)
    hu_png = sorted((root / "segmentation" / "hu").iterdir())[0]
    hu = cv2.imread(str(hu_png), cv2.IMREAD_UNCHANGED)
    assert hu.dtype == np.uint16 and hu.min() >= 0 and hu.max() > 1024 + 300
    vols = sorted((root / "segmentation" / "nifti").glob("*_ct.nii.gz"))
    img = nib.load(str(vols[0]))
    assert img.shape[:2] == (64, 64) and img.header.get_zooms()[2] == 5.0


def test_existing_root_needs_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError):
        write_phantom_dataset(str(tmp_path / "x"), PhantomSpec(size=64, seg_train=1, seg_test=1))


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(phantom_dataset, "write_classification", boom)
    with pytest.raises(RuntimeError):
        write_phantom_dataset(str(tmp_path / "p"), PhantomSpec(size=64, seg_train=1, seg_test=1))
    assert os.listdir(tmp_path) == []
