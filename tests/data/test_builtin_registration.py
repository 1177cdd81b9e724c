"""The predefined datasets register at import without touching the disk (as Detectron2's
builtin.py does) and read their files when loaded. Each test names the slip it catches."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from oneshot_d2.data.datasets.builtin import builtin_not_prepared, register_all_builtin
from oneshot_d2.data.datasets.public_ct import (
    PREDEFINED_PUBLIC,
    prepare_public_datasets,
    register_public_lazily,
)
from oneshot_d2.errors import DatasetError
from tests.common import TINY_PHANTOM, run_script
from tests.data.test_public_datasets import make_ucsd

_IMPORT_WATCHING_THE_DISK = """
import builtins, os, sys
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
from detectron2.data import DatasetCatalog
from oneshot_d2.data.phantom_dataset import PhantomSpec, write_phantom_dataset
print("TOUCHED", touched)
spec = PhantomSpec(**json.loads(sys.argv[1]))
write_phantom_dataset(os.path.join(root, "phantom"), spec)  # prepared after the import
print("LOADED", len(DatasetCatalog.get("phantom_seg_train")),
      len(DatasetCatalog.get("phantom_cls_val")))
"""


@pytest.mark.slow
def test_import_reads_nothing_and_a_set_prepared_later_loads(tmp_path):
    # catches: a file check or index read back at import (register_all_builtin with
    # only_prepared=True, or register_public_datasets instead of register_public_lazily), or
    # a phantom prepared after the import not loadable without registering it again
    root = tmp_path / "d2_empty"
    (root / "public").mkdir(parents=True)
    (root / "public" / "index.json").write_text("{}")
    r = run_script(["-c", "import json\n" + _IMPORT_WATCHING_THE_DISK, json.dumps(TINY_PHANTOM)],
                   tmp_path)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines()
                 if line.startswith(("TOUCHED", "LOADED")))
    assert lines["TOUCHED"] == "[]"
    assert lines["LOADED"] == f"{TINY_PHANTOM['seg_train']} {TINY_PHANTOM['cls_val']}"


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


def test_unprepared_sets_are_named_with_how_to_prepare_them(tmp_path):
    # catches: builtin_not_prepared checking the wrong file (or none), or a phantom hint
    # pointing at the public tool
    root = str(tmp_path)
    reason = builtin_not_prepared("phantom_seg_sep_test", root)
    assert reason.startswith(os.path.join(root, "phantom", "annotations",
                                          "seg_test_separate.json"))
    assert "prepare_phantom.py" in reason
    assert "cls_val_COVIDx_CT" not in reason
    assert "val_COVIDx_CT.txt" in builtin_not_prepared("cncb_cls_val", root)
    assert "index.json not found" in builtin_not_prepared("ucsd_cls_train", root)
    assert builtin_not_prepared("my_own_set", root) is None


def test_public_name_loads_from_the_index_read_at_load_time(tmp_path, unique_name):
    # catches: the lazy loader not replacing itself by the entry's registration (metadata such
    # as the manifest missing), or a missing entry loading as an empty set
    make_ucsd(str(tmp_path / "ucsd"))
    out = str(tmp_path / "d2")
    import oneshot_d2.data.datasets.public_ct as public_ct

    fake = {f"{unique_name}_cls_train": ("cls", public_ct.UCSD_CLASSES),
            f"{unique_name}_cls_test": ("cls", public_ct.UCSD_CLASSES)}
    old = dict(public_ct.PREDEFINED_PUBLIC)
    public_ct.PREDEFINED_PUBLIC.clear()
    public_ct.PREDEFINED_PUBLIC.update(fake)
    try:
        assert sorted(register_public_lazily(out)) == sorted(fake)
    finally:
        public_ct.PREDEFINED_PUBLIC.clear()
        public_ct.PREDEFINED_PUBLIC.update(old)
    train, test = (f"{unique_name}_cls_{s}" for s in ("train", "test"))
    with pytest.raises(DatasetError, match="index.json"):
        DatasetCatalog.get(train)  # nothing prepared yet: the index is missing
    index = prepare_public_datasets(out, ucsd=str(tmp_path / "ucsd"))
    index_file = os.path.join(out, "public", "index.json")
    with open(index_file, "w") as f:  # the entries under this test's names
        json.dump({f"{unique_name}_{k[len('ucsd_'):]}": v for k, v in index.items()}, f)
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 4 and {d["image_label"] for d in dicts} == {0, 1}
    assert MetadataCatalog.get(train).manifest.endswith("manifest.csv")
    with pytest.raises(DatasetError, match="no entry"):
        DatasetCatalog.get(test)  # the manifest has no test split
    assert register_all_builtin(out) == []  # every predefined name is registered already
