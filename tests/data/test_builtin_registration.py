"""The predefined datasets register at import without touching the disk (as Detectron2's
builtin.py does) and read their files when loaded. Each test names the slip it catches."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from oneshot_d2.data.datasets.builtin import builtin_not_prepared
from oneshot_d2.data.datasets.public_ct import (
    PREDEFINED_PUBLIC,
    prepare_public_datasets,
    register_public_lazily,
)
from oneshot_d2.errors import DatasetError
from tests.common import AFFINITY_QUICK, TINY_PHANTOM, run_script
from tests.data.test_public_datasets import make_ucsd

_IMPORT_WATCHING_THE_DISK = """
import builtins, json, os, sys
root = os.environ["DETECTRON2_DATASETS"]
touched = []
real_stat, real_open, real_listdir = os.stat, builtins.open, os.listdir
def watch(real):
    def wrapper(path, *args, **kwargs):
        if str(path).startswith(root):
            touched.append(str(path))
        return real(path, *args, **kwargs)
    return wrapper
os.stat, builtins.open, os.listdir = watch(real_stat), watch(real_open), watch(real_listdir)
import oneshot_d2
os.stat, builtins.open, os.listdir = real_stat, real_open, real_listdir
from detectron2.data import DatasetCatalog, MetadataCatalog
from oneshot_d2.data.datasets.builtin import builtin_not_prepared, register_cncb_layout
from oneshot_d2.data.phantom_dataset import PhantomSpec, write_phantom_dataset
out = {"touched": touched, "before": builtin_not_prepared("phantom_seg_train")}
meta = MetadataCatalog.get("phantom_seg_train")  # what an evaluator built before a load holds
later, other = sys.argv[2], sys.argv[3]
spec = PhantomSpec(**json.loads(sys.argv[1]))
for folder in (later, other):  # prepared after the import
    write_phantom_dataset(os.path.join(folder, "phantom"), spec)
os.environ["DETECTRON2_DATASETS"] = later  # the dataset root changed after the import
out["after"] = builtin_not_prepared("phantom_seg_train")
from oneshot_d2.config import load_config
from oneshot_d2.engine import OneShotTrainer
cfg = load_config(sys.argv[4], ["OUTPUT_DIR", os.path.join(later, "out")])
OneShotTrainer.build_evaluator(cfg, "phantom_seg_test")  # before the set's first load
out["evaluator_json"] = MetadataCatalog.get("phantom_seg_test").json_file
out["loaded"] = [len(DatasetCatalog.get("phantom_seg_train")),
                 len(DatasetCatalog.get("phantom_cls_val"))]
out["same_metadata"] = MetadataCatalog.get("phantom_seg_train") is meta
out["json_file"] = meta.json_file
out["id_map"] = hasattr(meta, "thing_dataset_id_to_contiguous_id")
out["own"] = sorted(register_cncb_layout(os.path.join(other, "phantom"), "phantom"))
out["own_images"] = sorted({os.path.dirname(d["file_name"])
                            for d in DatasetCatalog.get("phantom_cls_val")})
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_import_reads_nothing_and_the_files_are_found_at_load(tmp_path):
    # catches: a file check or index read back at import (registration from disk), the root
    # fixed at import (a dataset root set afterwards is checked but not loaded), the first load
    # putting a new Metadata object in place of the one an evaluator already holds (its file
    # fields and category id map lost: COCO AP 0), the trainer's COCO evaluator built before
    # the first load without the original json_file, or a user's own register_cncb_layout
    # under a predefined prefix silently skipped
    root = tmp_path / "d2_empty"
    (root / "public").mkdir(parents=True)
    (root / "public" / "index.json").write_text("{corrupt")
    later, other = tmp_path / "later", tmp_path / "other"
    r = run_script(["-c", _IMPORT_WATCHING_THE_DISK, json.dumps(TINY_PHANTOM), str(later),
                    str(other), AFFINITY_QUICK], tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["touched"] == []
    assert "prepare_phantom.py" in out["before"] and out["after"] is None
    assert out["loaded"] == [TINY_PHANTOM["seg_train"], TINY_PHANTOM["cls_val"]]
    assert out["same_metadata"] and out["id_map"]
    assert out["json_file"] == str(later / "phantom" / "annotations" / "seg_train_merge.json")
    # the trainer's COCO evaluator reads the original annotations, not a converted copy
    assert out["evaluator_json"] == str(later / "phantom" / "annotations" /
                                        "seg_test_merge.json")
    assert len(out["own"]) == 7 and "phantom_seg_train" in out["own"]
    assert out["own_images"] == [str(other / "phantom" / "classification" / "images")]


def test_every_predefined_name_is_registered_with_its_classes():
    # catches: a layout or public name left out of the import-time registration, or its
    # classes (used by the class-count checks before loading) differing from the converter's
    names = DatasetCatalog.list()
    for prefix in ("phantom", "cncb"):
        for suffix in ("seg_train", "seg_test", "seg_sep_train", "seg_sep_test", "cls_train",
                       "cls_val", "cls_test"):
            assert f"{prefix}_{suffix}" in names
    assert MetadataCatalog.get("phantom_seg_sep_train").thing_classes == ["GGO",
                                                                         "consolidation"]
    for name, (kind, classes) in PREDEFINED_PUBLIC.items():
        meta = MetadataCatalog.get(name)
        assert name in names
        assert list(meta.get("thing_classes" if kind == "seg" else "image_classes")) == list(
            classes)


def test_unprepared_sets_are_named_with_how_to_prepare_them(tmp_path, monkeypatch):
    # catches: builtin_not_prepared checking the wrong file (or none), a phantom hint pointing
    # at the public tool, or the dataset root read at import instead of now
    root = str(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    reason = builtin_not_prepared("phantom_seg_sep_test")
    assert reason.startswith(os.path.join(root, "phantom", "annotations",
                                          "seg_test_separate.json"))
    assert "prepare_phantom.py" in reason
    assert os.path.join(root, "cncb", "classification", "val_COVIDx_CT.txt") in \
        builtin_not_prepared("cncb_cls_val")
    assert os.path.join(root, "public", "index.json") + " not found" in \
        builtin_not_prepared("ucsd_cls_train")
    assert builtin_not_prepared("my_own_set") is None


def test_public_name_loads_from_the_index_read_at_load_time(tmp_path, unique_name,
                                                           monkeypatch):
    # catches: the lazy loader replacing the Metadata object (an evaluator built before the
    # load keeps the old one), a missing index or entry loading as an empty set, a user's
    # register_public_datasets elsewhere skipped or still checked against the predefined root
    import oneshot_d2.data.datasets.public_ct as public_ct

    make_ucsd(str(tmp_path / "ucsd"))
    out, empty = str(tmp_path / "d2"), str(tmp_path / "nothing")
    train, val, test = (f"{unique_name}_cls_{s}" for s in ("train", "val", "test"))
    for name in (train, val, test):
        monkeypatch.setitem(public_ct.PREDEFINED_PUBLIC, name, ("cls", public_ct.UCSD_CLASSES))
    assert sorted(register_public_lazily(out)) == sorted([train, val, test])
    meta = MetadataCatalog.get(train)
    assert meta.image_classes == list(public_ct.UCSD_CLASSES)
    with pytest.raises(DatasetError, match="index.json not found"):
        DatasetCatalog.get(train)  # nothing prepared yet
    assert "index.json not found" in builtin_not_prepared(train)
    index = prepare_public_datasets(out, ucsd=str(tmp_path / "ucsd"))
    with open(os.path.join(out, "public", "index.json"), "w") as f:  # under this test's names
        json.dump({f"{unique_name}_{k[len('ucsd_'):]}": v for k, v in index.items()}, f)
    assert builtin_not_prepared(train) is None
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 4 and {d["image_label"] for d in dicts} == {0, 1}
    assert MetadataCatalog.get(train) is meta and meta.manifest.endswith("manifest.csv")
    with pytest.raises(DatasetError, match="no entry"):
        DatasetCatalog.get(test)  # the manifest has no test split
    # a predefined name the user registers from another root: no longer checked against the
    # predefined root, loaded from the user's
    other = f"{unique_name}_x_cls_train"
    monkeypatch.setitem(public_ct.PREDEFINED_PUBLIC, other, ("cls", public_ct.UCSD_CLASSES))
    assert register_public_lazily(empty) == [other]
    assert "index.json not found" in builtin_not_prepared(other)
    with open(os.path.join(out, "public", "index.json")) as f:
        entries = json.load(f)
    entries[other] = entries[train]
    with open(os.path.join(out, "public", "index.json"), "w") as f:
        json.dump(entries, f)
    assert other in public_ct.register_public_datasets(out)
    assert builtin_not_prepared(other) is None and len(DatasetCatalog.get(other)) == 4
