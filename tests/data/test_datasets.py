"""Classification loaders (COVIDx-CT split files, CSV manifests) and dataset registration."""
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from oneshot_d2.data.datasets import (
    COVIDX_CLASSES,
    load_covidx_split,
    load_csv_manifest,
    parse_covidx_name,
    parse_label,
    register_covidx_cls,
    register_csv_cls,
    register_ct_seg,
)
from oneshot_d2.data.datasets.builtin import register_cncb_layout, seg_json_path
from oneshot_d2.engine import check_datasets
from oneshot_d2.errors import DatasetError


def test_parse_label():
    assert parse_label("2", COVIDX_CLASSES) == 2
    assert parse_label("covid-19", COVIDX_CLASSES) == 2
    assert parse_label(" Normal ", COVIDX_CLASSES) == 0
    with pytest.raises(DatasetError, match=r"f\.txt:3: unknown label '3'"):
        parse_label("3", COVIDX_CLASSES, "f.txt:3")
    with pytest.raises(DatasetError, match="unknown label 'flu'"):
        parse_label("flu", COVIDX_CLASSES)


def test_parse_covidx_name():
    assert parse_covidx_name("NCP_96_1328_0032.png") == "96"
    assert parse_covidx_name("scan.png") is None


def test_load_covidx_split(phantom_root):
    cls = os.path.join(phantom_root, "classification")
    dicts = load_covidx_split(os.path.join(cls, "train_COVIDx_CT.txt"), os.path.join(cls, "images"))
    assert len(dicts) == 6
    for d in dicts:
        prefix = os.path.basename(d["file_name"]).split("_")[0]
        assert d["image_label"] == {"Normal": 0, "CP": 1, "NCP": 2}[prefix]
        assert d["patient_id"] and len(d["body_box"]) == 4 and os.path.isfile(d["file_name"])


def _image(path):
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("content, message", [
    ("NCP_1_2_0003.png 7 0 0 8 8\n", r"s\.txt:1: unknown label '7'"),
    ("NCP_1_2_0003.png 2 0 0 8 8\nmissing.png 0 0 0 8 8\n",
     r"s\.txt:2: image file .*missing\.png not found"),
    ("", r"s\.txt: empty split"),
    ("NCP_1_2_0003.png\n", r"s\.txt:1: expected"),
])
def test_covidx_errors(tmp_path, content, message):
    _image(tmp_path / "NCP_1_2_0003.png")
    split = tmp_path / "s.txt"
    split.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_covidx_split(str(split), str(tmp_path))


def _manifest(tmp_path):
    for n in ("a.png", "b.png", "c.png"):
        _image(tmp_path / n)
    csv = tmp_path / "m.csv"
    csv.write_text("file_name,label,patient_id,split\n"
                   "a.png,COVID,p1,train\nb.png,NonCOVID,p2,train\nc.png,1,p3,val\n")
    return csv


def test_csv_manifest(tmp_path):
    csv = _manifest(tmp_path)
    names = ["NonCOVID", "COVID"]
    train = load_csv_manifest(str(csv), names, split="train")
    assert [(os.path.basename(d["file_name"]), d["image_label"], d["patient_id"])
            for d in train] == [("a.png", 1, "p1"), ("b.png", 0, "p2")]
    assert [d["image_label"] for d in load_csv_manifest(str(csv), names, split="val")] == [1]
    with pytest.raises(DatasetError, match=r"m\.csv: empty split \(no row with split == 'test'"):
        load_csv_manifest(str(csv), names, split="test")


def test_csv_manifest_errors(tmp_path):
    csv = _manifest(tmp_path)
    with pytest.raises(DatasetError, match=r"m\.csv:2: unknown label 'COVID'"):
        load_csv_manifest(str(csv), ["normal", "pneumonia"])
    bad = tmp_path / "bad.csv"
    bad.write_text("picture,label\na.png,1\n")  # no file_name / path / image column
    with pytest.raises(DatasetError, match=r"bad\.csv: manifest lacks column"):
        load_csv_manifest(str(bad), ["x", "y"])
    with pytest.raises(DatasetError, match=r"nope\.csv: manifest not found"):
        load_csv_manifest(str(tmp_path / "nope.csv"), ["x"])


def test_register_cls(tmp_path, unique_name):
    csv = _manifest(tmp_path)
    register_csv_cls(unique_name + "_csv", str(csv), class_names=["NonCOVID", "COVID"],
                     split="train")
    dicts = DatasetCatalog.get(unique_name + "_csv")
    assert [d["image_label"] for d in dicts] == [1, 0]
    meta = MetadataCatalog.get(unique_name + "_csv")
    assert meta.image_classes == ["NonCOVID", "COVID"] and meta.evaluator_type == "ct_cls"
    # class names inferred (sorted) when not given; numeric labels then need explicit names
    csv2 = tmp_path / "m2.csv"
    csv2.write_text("file_name,label\na.png,COVID\nb.png,NonCOVID\n")
    register_csv_cls(unique_name + "_csv2", str(csv2))
    assert MetadataCatalog.get(unique_name + "_csv2").image_classes == ["COVID", "NonCOVID"]
    with pytest.raises(DatasetError, match="numeric labels"):
        register_csv_cls(unique_name + "_csv3", str(csv))


def test_register_covidx_and_seg(phantom_root, unique_name):
    cls = os.path.join(phantom_root, "classification")
    register_covidx_cls(unique_name + "_c", os.path.join(cls, "val_COVIDx_CT.txt"),
                        os.path.join(cls, "images"))
    assert len(DatasetCatalog.get(unique_name + "_c")) == 3
    assert MetadataCatalog.get(unique_name + "_c").image_classes == list(COVIDX_CLASSES)

    register_ct_seg(unique_name + "_s", seg_json_path(phantom_root, "test", "merge"),
                    os.path.join(phantom_root, "segmentation", "imgs"), ["lesion"])
    dicts = DatasetCatalog.get(unique_name + "_s")
    assert len(dicts) == 4 and all(os.path.isfile(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get(unique_name + "_s")
    assert meta.evaluator_type == "coco" and meta.thing_classes == ["lesion"]


def test_builtin_layout_registration(phantom_root, unique_name, tmp_path, monkeypatch):
    names = register_cncb_layout(phantom_root, unique_name)
    assert sorted(names) == sorted(
        [f"{unique_name}_seg_{s}" for s in ("train", "test")]
        + [f"{unique_name}_seg_sep_{s}" for s in ("train", "test")]
        + [f"{unique_name}_cls_{s}" for s in ("train", "val", "test")])
    assert register_cncb_layout(phantom_root, unique_name) == []  # idempotent
    assert MetadataCatalog.get(f"{unique_name}_seg_sep_train").thing_classes == [
        "GGO", "consolidation"]
    check_datasets(names)
    with pytest.raises(KeyError, match="not registered.*datasets/README.md"):
        check_datasets(["no_such_dataset"])
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # nothing prepared there
    with pytest.raises(KeyError, match="'phantom_cls_val' is not prepared.*prepare_phantom"):
        check_datasets(names + ["phantom_cls_val"])
