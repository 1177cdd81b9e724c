"""The public datasets' index survives concurrent writers and corruption, and a corrupt index
never breaks ``import oneshot_d2``. Each test's docstring says which one-line slip in the code
it catches."""
import json
import os
import threading
import time

import pytest

from oneshot_d2.data.datasets import public_ct
from oneshot_d2.data.datasets.public_ct import (
    prepare_public_datasets,
    public_index_path,
    register_public_datasets,
)
from oneshot_d2.errors import DatasetError
from tests.common import captured_warnings, run_script
from tests.data.test_public_datasets import make_medseg, make_ucsd


def test_concurrent_index_writers_keep_both_entries(tmp_path, monkeypatch):
    """prepare_public --medseg and --ucsd into the same --out at once (index read slowed down
    to make them overlap). Catches: reading index.json outside the lock (the last writer
    wins and the other's entries are lost)."""
    make_medseg(str(tmp_path / "medseg"))
    make_ucsd(str(tmp_path / "ucsd"))
    out = str(tmp_path / "d2")
    read = public_ct._index_for_update

    def slow_read(index_file):
        index = read(index_file)
        time.sleep(0.3)
        return index

    monkeypatch.setattr(public_ct, "_index_for_update", slow_read)
    errors = []

    def prepare(**sources):
        try:
            prepare_public_datasets(out, **sources)
        except Exception as e:  # noqa: BLE001  reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=prepare, kwargs={"medseg": str(tmp_path / "medseg")}),
               threading.Thread(target=prepare, kwargs={"ucsd": str(tmp_path / "ucsd")})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open(public_index_path(out)) as f:
        index = json.load(f)
    assert {"medseg_seg_train", "medseg_seg_sep_test", "ucsd_cls_train", "ucsd_cls_val"} <= set(
        index)
    assert not [n for n in os.listdir(os.path.join(out, "public")) if ".tmp-" in n or
                n.endswith(".lock")]


@pytest.mark.slow
def test_corrupt_index_does_not_break_import(tmp_path):
    """Catches: the index read at `import oneshot_d2` (a corrupt one would kill every entry
    point, including the tool that rewrites it), or a lazily registered public name loading
    without a word about the corrupt index."""
    public = tmp_path / "d2_empty" / "public"
    public.mkdir(parents=True)
    (public / "index.json").write_text('{"medseg_seg_train": {"type": "seg", ')
    r = run_script(["-c", "import oneshot_d2\n"
                    "from detectron2.data import DatasetCatalog\n"
                    "try:\n    DatasetCatalog.get('medseg_seg_train')\n"
                    "except Exception as e:\n    print(type(e).__name__, e)"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "index.json" not in r.stderr
    assert r.stdout.startswith("DatasetError") and "index.json" in r.stdout, r.stdout


def test_corrupt_index_is_rewritten_and_kept_aside(tmp_path, unique_name):
    """Catches: prepare_public dying on the corrupt index it should replace, deleting it
    instead of keeping it aside, or a bad entry making non-strict registration fail."""
    make_ucsd(str(tmp_path / "ucsd"))
    out = str(tmp_path / "d2")
    index_file = public_index_path(out)
    os.makedirs(os.path.dirname(index_file))
    with open(index_file, "w") as f:
        f.write("[1, 2")
    with captured_warnings() as warnings:
        index = prepare_public_datasets(out, ucsd=str(tmp_path / "ucsd"))
    assert set(index) == {"ucsd_cls_train", "ucsd_cls_val"}
    aside = [n for n in os.listdir(os.path.dirname(index_file)) if ".corrupt-" in n]
    assert len(aside) == 1 and any(aside[0] in w for w in warnings)
    renamed = {f"{unique_name}_{k}": v for k, v in index.items()}
    renamed[f"{unique_name}_bad"] = {"type": "volume"}
    with open(index_file, "w") as f:
        json.dump(renamed, f)
    with pytest.raises(DatasetError, match="unknown type"):
        register_public_datasets(out)
    with captured_warnings() as warnings:
        names = register_public_datasets(out, strict=False, replace=True)
    assert sorted(names) == sorted(k for k in renamed if not k.endswith("_bad"))
    assert any(f"{unique_name}_bad" in w for w in warnings)
