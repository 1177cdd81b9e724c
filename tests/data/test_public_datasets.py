"""Public-dataset converters, registration and the dataset checker.

Small synthetic copies of the three layouts run everywhere; the real shared copies
(``../shared/data``) are converted and checked when present, and skipped otherwise.
"""
import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from oneshot_d2.data.check import check_dataset_splits
from oneshot_d2.data.datasets import register_cncb_layout
from oneshot_d2.data.datasets.public_ct import (
    covid19_ct_seg_to_coco,
    medseg_to_coco,
    prepare_public_datasets,
    register_public_datasets,
    split_volumes,
)
from oneshot_d2.errors import DatasetError
from tests.common import REPO, SMALL_HEADS

SHARED = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED),
    reason=f"real public data not found at {SHARED} (team-internal copy; see datasets/README.md)")


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _slice(seed, h=64, w=48):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 255).astype(np.uint8)


def make_medseg(root, palette=True):
    """4 slices: palette PNG masks with a GGO (1) and a consolidation (2) blob."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    rows = []
    for i in range(4):
        cv2.imwrite(os.path.join(root, "images", f"{i}.jpg"), _slice(i))
        m = np.zeros((64, 48), np.uint8)
        m[5:20, 5:20] = 1
        m[30:50, 25:45] = 2
        im = Image.fromarray(m, mode="L")
        if palette:
            im = im.convert("P")
            im.putpalette([0, 0, 0, 0, 128, 0, 0, 0, 128] + [0] * 759)
        im.save(os.path.join(root, "masks", f"{i}.png"))
        rows.append(["train" if i < 2 else "test", i, f"images/{i}.jpg", f"masks/{i}.png"])
    _write_csv(os.path.join(root, "manifest.csv"), ["split", "slice_id", "image", "mask"], rows)


def make_c19(root, volumes=("v01", "v02", "v03", "v04")):
    for sub in ("ct", "infection", "lungs"):
        os.makedirs(os.path.join(root, sub))
    rows = []
    for k, vol in enumerate(volumes):
        for j in range(2):
            idx = f"{k:02d}{j:02d}"
            cv2.imwrite(os.path.join(root, "ct", f"{idx}.png"), _slice(k * 10 + j, 32, 32))
            m = np.zeros((32, 32), np.uint8)
            m[4:20, 4:20] = 255
            cv2.imwrite(os.path.join(root, "infection", f"{idx}.png"), m)
            cv2.imwrite(os.path.join(root, "lungs", f"{idx}.png"), m)
            rows.append([idx, vol, f"ct/{idx}.png", f"infection/{idx}.png", f"lungs/{idx}.png"])
    _write_csv(os.path.join(root, "manifest.csv"),
               ["index", "volume", "ct", "infection", "lungs"], rows)


def make_ucsd(root, leak=False):
    os.makedirs(os.path.join(root, "CT_COVID"))
    os.makedirs(os.path.join(root, "CT_NonCOVID"))
    rows = []
    for i in range(6):
        label = "COVID" if i % 2 else "NonCOVID"
        rgba = np.dstack([_slice(50 + i, 40, 40)] * 3 + [np.full((40, 40), 255, np.uint8)])
        path = f"CT_{label}/{i}.png"
        Image.fromarray(rgba, mode="RGBA").save(os.path.join(root, path))
        split = "train" if i < 4 else "val"
        patient = f"P{i}" if not (leak and i == 4) else "P0"
        rows.append([path, label, split, patient])
    _write_csv(os.path.join(root, "manifest.csv"), ["path", "label", "split", "patient_id"], rows)


def make_mosmed(root):
    """6 grey-as-RGB JPEG slices, MosMed's columns: Normal (CT-0) / COVID (CT-1..3)."""
    os.makedirs(os.path.join(root, "images"))
    rows = []
    for i, (sev, split) in enumerate([("CT-0", "train"), ("CT-1", "train"), ("CT-2", "train"),
                                      ("CT-3", "train"), ("CT-0", "val"), ("CT-1", "val")]):
        path = f"images/{sev.lower()}_img{i}.jpg"
        cv2.imwrite(os.path.join(root, path), cv2.merge([_slice(80 + i, 48, 48)] * 3))
        rows.append([path, "Normal" if sev == "CT-0" else "COVID", sev, split])
    _write_csv(os.path.join(root, "manifest.csv"), ["image", "label", "severity", "split"], rows)


def test_mosmed_registers_with_severity(tmp_path, unique_name):
    make_mosmed(str(tmp_path / "mosmed"))
    out = str(tmp_path / "d2")
    index = prepare_public_datasets(out, mosmed=str(tmp_path / "mosmed"))
    assert set(index) == {"mosmed_cls_train", "mosmed_cls_val"}
    prefix = unique_name + "_mm"
    with open(os.path.join(out, "public", "index.json"), "w") as f:
        json.dump({f"{prefix}_{k}": v for k, v in index.items()}, f)
    register_public_datasets(out)
    train = DatasetCatalog.get(f"{prefix}_mosmed_cls_train")
    assert [d["image_label"] for d in train] == [0, 1, 1, 1]
    assert [d["severity"] for d in train] == ["CT-0", "CT-1", "CT-2", "CT-3"]
    assert [d["severity"] for d in DatasetCatalog.get(f"{prefix}_mosmed_cls_val")] == \
        ["CT-0", "CT-1"]
    assert MetadataCatalog.get(f"{prefix}_mosmed_cls_val").image_classes == ["Normal", "COVID"]
    report = check_dataset_splits([f"{prefix}_mosmed_cls_train"], [f"{prefix}_mosmed_cls_val"])
    assert report.ok, report.summary()
    # a manifest without the severity column is refused, naming the file
    _write_csv(str(tmp_path / "mosmed" / "manifest.csv"), ["image", "label", "split"],
               [["images/ct-0_img0.jpg", "Normal", "train"]])
    with pytest.raises(DatasetError, match="manifest.csv.*severity"):
        prepare_public_datasets(out, mosmed=str(tmp_path / "mosmed"))


def test_medseg_palette_masks_to_coco(tmp_path):
    make_medseg(str(tmp_path / "medseg"))
    out = medseg_to_coco(str(tmp_path / "medseg"), str(tmp_path / "out"), min_area=10)
    assert set(out) == {"train_merge", "train_separate", "test_merge", "test_separate"}
    sep = json.loads(open(out["train_separate"]).read())
    assert [c["name"] for c in sep["categories"]] == ["GGO", "consolidation"]
    assert sorted(a["category_id"] for a in sep["annotations"]) == [1, 1, 2, 2]
    ggo = [a for a in sep["annotations"] if a["category_id"] == 1][0]
    assert ggo["area"] == 15 * 15 and ggo["bbox"] == [5.0, 5.0, 15.0, 15.0]
    merge = json.loads(open(out["test_merge"]).read())
    assert len(merge["annotations"]) == 4 and len(merge["images"]) == 2


def test_medseg_bad_mask_value_names_file(tmp_path):
    root = str(tmp_path / "medseg")
    make_medseg(root, palette=False)
    cv2.imwrite(os.path.join(root, "masks", "1.png"), np.full((64, 48), 7, np.uint8))
    with pytest.raises(DatasetError, match=r"1\.png: mask values \[7\]"):
        medseg_to_coco(root, str(tmp_path / "out"))


def test_split_volumes():
    assert split_volumes(["v2", "v1", "v3", "v4", "v1"]) == {"train": ["v1", "v2", "v3"],
                                                            "test": ["v4"]}
    assert split_volumes(["a", "b", "c"], test_volumes=["a"]) == {"train": ["b", "c"],
                                                                 "test": ["a"]}
    with pytest.raises(DatasetError, match="not in the manifest"):
        split_volumes(["a", "b"], test_volumes=["z"])
    with pytest.raises(DatasetError, match="non-empty"):
        split_volumes(["a"])


def test_covid19_ct_seg_split_by_volume(tmp_path):
    make_c19(str(tmp_path / "c19"))
    out = covid19_ct_seg_to_coco(str(tmp_path / "c19"), str(tmp_path / "out"), min_area=10)
    train, test = (json.loads(open(out[s]).read()) for s in ("train", "test"))
    assert train["info"]["volumes"] == ["v01", "v02", "v03"] and test["info"]["volumes"] == ["v04"]
    assert {i["patient_id"] for i in train["images"]} == {"v01", "v02", "v03"}
    assert len(test["images"]) == 2 and len(test["annotations"]) == 2


def test_prepare_register_and_check(tmp_path, unique_name):
    make_medseg(str(tmp_path / "medseg"))
    make_c19(str(tmp_path / "c19"))
    make_ucsd(str(tmp_path / "ucsd"))
    out = str(tmp_path / "d2")
    index = prepare_public_datasets(out, str(tmp_path / "medseg"), str(tmp_path / "c19"),
                                    str(tmp_path / "ucsd"), min_area=10)
    assert set(index) == {"medseg_seg_train", "medseg_seg_test", "medseg_seg_sep_train",
                          "medseg_seg_sep_test", "covid19_ct_seg_train", "covid19_ct_seg_test",
                          "ucsd_cls_train", "ucsd_cls_val"}
    # register under unique names (the catalog is global to the test session)
    prefix = unique_name + "_pub"
    renamed = {f"{prefix}_{k}": v for k, v in index.items()}
    with open(os.path.join(out, "public", "index.json"), "w") as f:
        json.dump(renamed, f)
    names = register_public_datasets(out)
    assert set(names) == set(renamed)
    ucsd = DatasetCatalog.get(f"{prefix}_ucsd_cls_train")
    assert [d["image_label"] for d in ucsd] == [0, 1, 0, 1]
    assert MetadataCatalog.get(f"{prefix}_ucsd_cls_val").image_classes == ["NonCOVID", "COVID"]
    seg = DatasetCatalog.get(f"{prefix}_covid19_ct_seg_test")
    assert {d["patient_id"] for d in seg} == {"v04"}
    assert MetadataCatalog.get(f"{prefix}_covid19_ct_seg_test").evaluator_type == "coco"

    report = check_dataset_splits(
        [f"{prefix}_covid19_ct_seg_train", f"{prefix}_ucsd_cls_train"],
        [f"{prefix}_covid19_ct_seg_test", f"{prefix}_ucsd_cls_val"])
    assert report.ok, report.summary()
    assert report.stats[f"{prefix}_ucsd_cls_train"]["classes"] == {"NonCOVID": 2, "COVID": 2}
    assert not report.problems("patient leakage")

    # running the preparation again (index already registered on import) re-registers
    with pytest.raises(AssertionError, match="already registered"):
        register_public_datasets(out)
    assert set(register_public_datasets(out, replace=True)) == set(renamed)
    assert len(DatasetCatalog.get(f"{prefix}_ucsd_cls_train")) == 4


def test_checker_finds_leakage_and_bad_images(tmp_path, unique_name):
    root = str(tmp_path / "ucsd")
    make_ucsd(root, leak=True)
    # an unreadable image and a duplicated file across splits
    with open(os.path.join(root, "CT_COVID", "5.png"), "wb") as f:
        f.write(b"not an image")
    prefix = unique_name + "_leak"
    prepare_public_datasets(str(tmp_path / "d2"), ucsd=root)
    index = json.load(open(os.path.join(tmp_path, "d2", "public", "index.json")))
    with open(os.path.join(tmp_path, "d2", "public", "index.json"), "w") as f:
        json.dump({f"{prefix}_{k}": v for k, v in index.items()}, f)
    register_public_datasets(str(tmp_path / "d2"))
    shutil.copy(os.path.join(root, "CT_NonCOVID", "0.png"), os.path.join(root, "CT_NonCOVID",
                                                                       "4.png"))
    report = check_dataset_splits([f"{prefix}_ucsd_cls_train"], [f"{prefix}_ucsd_cls_val"])
    assert not report.ok
    leaks = report.problems("patient leakage")
    assert len(leaks) == 1 and leaks[0].file == "patient P0"
    assert any("unreadable image" in f.problem and f.file.endswith("5.png")
               for f in report.errors)
    assert any("identical image content" in f.problem and f.severity == "error"
               for f in report.findings)


def test_checker_on_phantom(phantom_root, unique_name):
    prefix = unique_name + "_chk"
    register_cncb_layout(phantom_root, prefix)
    report = check_dataset_splits([f"{prefix}_seg_train", f"{prefix}_cls_train"],
                                  [f"{prefix}_seg_test", f"{prefix}_cls_test"])
    assert report.ok, report.summary()
    assert report.stats[f"{prefix}_seg_train"]["patients"] > 0
    assert not report.problems("not checkable")


@pytest.fixture(scope="module")
def shared_prefix(tmp_path_factory) -> str:
    """The four shared public sources converted once for the module's tests and registered
    under ``shared_<name>``."""
    prefix, out = "shared", str(tmp_path_factory.mktemp("shared") / "d2")
    index = prepare_public_datasets(
        out, os.path.join(SHARED, "medseg98"), os.path.join(SHARED, "covid19_ct_seg"),
        os.path.join(SHARED, "ucsd_covid_ct"), mosmed=os.path.join(SHARED, "mosmed"))
    with open(os.path.join(out, "public", "index.json"), "w") as f:
        json.dump({f"{prefix}_{k}": v for k, v in index.items()}, f)
    register_public_datasets(out)
    return prefix


@pytest.mark.slow
@needs_shared
def test_shared_real_data_convert_and_check(shared_prefix):
    prefix = shared_prefix
    medseg = DatasetCatalog.get(f"{prefix}_medseg_seg_sep_train")
    assert len(medseg) == 50
    assert {a["category_id"] for d in medseg for a in d["annotations"]} == {0, 1}
    c19_test = DatasetCatalog.get(f"{prefix}_covid19_ct_seg_test")
    assert {d["patient_id"] for d in c19_test} == {"v07", "v08"}
    assert len(DatasetCatalog.get(f"{prefix}_ucsd_cls_train")) == 425
    mosmed = DatasetCatalog.get(f"{prefix}_mosmed_cls_val")
    assert len(mosmed) == 117 and sum(d["image_label"] == 0 for d in mosmed) == 27
    assert all((d["severity"] == "CT-0") == (d["image_label"] == 0) for d in mosmed)
    report = check_dataset_splits(
        [f"{prefix}_covid19_ct_seg_train", f"{prefix}_ucsd_cls_train",
         f"{prefix}_medseg_seg_train", f"{prefix}_mosmed_cls_train"],
        [f"{prefix}_covid19_ct_seg_test", f"{prefix}_ucsd_cls_val",
         f"{prefix}_medseg_seg_test", f"{prefix}_mosmed_cls_val"], hash_content=True)
    assert not report.problems("identical image content"), report.summary()
    # UCSD's official split is patient-disjoint; volumes split cleanly; medseg has no ids
    assert not report.problems("patient leakage"), report.summary()
    assert report.problems("not checkable")


def _register_subset(name: str, source: str, n: int) -> None:
    """Register the first ``n`` dicts of ``source`` as ``name`` (metadata without json_file, so
    that COCOEvaluator builds its ground truth from the subset)."""
    DatasetCatalog.register(name, lambda: DatasetCatalog.get(source)[:n])
    meta = MetadataCatalog.get(source).as_dict()
    for key in ("name", "json_file"):
        meta.pop(key, None)
    MetadataCatalog.get(name).set(**meta)


@pytest.mark.slow
@needs_shared
def test_real_2cls_config_trains_and_evaluates(shared_prefix, tmp_path):
    """The real-data experiment config, 2 iterations on small subsets of the shared data: the
    2-class path (UCSD COVID / NonCOVID) end to end with real images of mixed sizes."""
    from detectron2.engine import default_argument_parser

    from oneshot_d2.engine import main

    prefix = shared_prefix
    names = {}
    for key in ("covid19_ct_seg_train", "medseg_seg_train", "ucsd_cls_train",
                "covid19_ct_seg_test", "ucsd_cls_val"):
        names[key] = f"{prefix}_{key}_small"
        _register_subset(names[key], f"{prefix}_{key}", 6)
    # the UCSD manifest lists COVID before NonCOVID: take both ends for both classes
    val = DatasetCatalog.get(f"{prefix}_ucsd_cls_val")
    DatasetCatalog.remove(names["ucsd_cls_val"])
    DatasetCatalog.register(names["ucsd_cls_val"], lambda: val[:3] + val[-3:])
    assert {d["image_label"] for d in DatasetCatalog.get(names["ucsd_cls_val"])} == {0, 1}

    opts = [
        "DATASETS.TRAIN", f"('{names['covid19_ct_seg_train']}', '{names['medseg_seg_train']}')",
        "DATASETS.TRAIN_CLS", f"('{names['ucsd_cls_train']}',)",
        "DATASETS.TEST", f"('{names['covid19_ct_seg_test']}', '{names['ucsd_cls_val']}')",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CLS_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "run"), "SEED", "3",
        "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "0", "TEST.PRECISE_BN.NUM_ITER", "2",
        "TEST.DETECTIONS_PER_IMAGE", "20", *SMALL_HEADS,
    ]
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs", "real",
                                       "oneshot_affinity_R_18_FPN_800iter_real_2cls.yaml")] + opts)
    results = main(args)
    # (after 2 iterations the detector may find nothing: COCOEvaluator then reports no keys)
    assert "segm_per_image" in results[names["covid19_ct_seg_test"]]
    cls_res = results[names["ucsd_cls_val"]]["classification"]
    assert {"sensitivity/NonCOVID", "sensitivity/COVID", "macro_auc"} <= set(cls_res)
    assert (tmp_path / "run" / "inference" / names["ucsd_cls_val"]
            / "classification_metrics.json").is_file()
