"""Registration and manifests: missing images, wrong classes, empty split cells, Excel-style CSV
files and duplicate rows. Each test's docstring says which one-line slip in the code it catches."""
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from oneshot_d2.data.datasets import load_csv_manifest, register_ct_seg
from oneshot_d2.data.datasets.builtin import seg_json_path
from oneshot_d2.data.datasets.public_ct import medseg_to_coco
from oneshot_d2.data.io import read_manifest
from oneshot_d2.errors import DatasetError
from tests.bad_input import PREPARE_PUBLIC, assert_one_error, run_tool, snapshot, write_png


def test_register_ct_seg_missing_images_and_wrong_classes(phantom, tmp_path, unique_name):
    """README: missing images raise DatasetError. Silent before: a JSON whose images are all
    missing gave records; disagreeing class names gave Detectron2's metadata AssertionError.
    Catches: the existence check removed, or the category names compared in the wrong order."""
    json_file = seg_json_path(phantom, "train", "separate")
    register_ct_seg(unique_name + "_gone", json_file, str(tmp_path / "nowhere"), ["GGO",
                                                                                   "consolidation"])
    with pytest.raises(DatasetError, match=r"nowhere/.*: image file not found \(8 of 8 images"):
        DatasetCatalog.get(unique_name + "_gone")
    images = os.path.join(phantom, "segmentation", "imgs")
    register_ct_seg(unique_name + "_swap", json_file, images, ["consolidation", "GGO"])
    with pytest.raises(DatasetError, match=r"seg_train_separate\.json: categories \['GGO', "
                                           r"'consolidation'\] differ from the class names "
                                           r"\['consolidation', 'GGO'\]"):
        DatasetCatalog.get(unique_name + "_swap")
    register_ct_seg(unique_name + "_ok", json_file, images, ["GGO", "consolidation"])
    assert len(DatasetCatalog.get(unique_name + "_ok")) == 8


def _medseg_folder(tmp_path, manifest: str, bom: bool = False, crlf: bool = False) -> str:
    root = tmp_path / "medseg"
    root.mkdir()
    for name in ("a", "b", "c"):
        write_png(root / f"{name}.png", np.full((48, 48), 90, np.uint8))
        mask = np.zeros((48, 48), np.uint8)
        mask[5:20, 5:20] = 1
        write_png(root / f"{name}_m.png", mask)
    text = manifest.replace("\n", "\r\n") if crlf else manifest
    (root / "manifest.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return str(root)


def test_empty_split_cell_is_rejected(tmp_path):
    """Silent before: an empty split cell created a dataset named `medseg_seg_`. Catches: the
    non-empty check removed from the manifest reader or from prepare_public's columns; and any
    output (JSON, index) written before the error."""
    src = _medseg_folder(tmp_path, "split,image,mask\ntrain,a.png,a_m.png\n,b.png,b_m.png\n"
                                   "test,c.png,c_m.png\n")
    before = snapshot(src)
    out = tmp_path / "out"
    status, lines = run_tool(PREPARE_PUBLIC, "--medseg", src, "--out", str(out),
                             "--no-check")
    assert_one_error(status, lines, "prepare_public", "manifest.csv:3: empty 'split' cell")
    assert snapshot(src) == before and not os.path.exists(out / "public")  # no partial output
    csv = tmp_path / "cls.csv"
    csv.write_text("file_name,label,split\na.png,COVID,train\nb.png,COVID,\n")
    with pytest.raises(DatasetError, match=r"cls\.csv:3: empty 'split' cell"):
        load_csv_manifest(str(csv), ["NonCOVID", "COVID"], split="train", check_files=False)


def test_excel_manifest_with_bom_and_crlf_is_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark, so the first column was `\\ufeffsplit`
    and the manifest "lacked" it. Catches: encoding="utf-8" instead of "utf-8-sig", or CRLF
    line ends leaking into values."""
    src = _medseg_folder(tmp_path, "split,image,mask\ntrain,a.png,a_m.png\ntest,c.png,c_m.png\n",
                         bom=True, crlf=True)
    rows = read_manifest(os.path.join(src, "manifest.csv"), ("split", "image", "mask"))
    assert rows[0] == {"split": "train", "image": "a.png", "mask": "a_m.png"}
    written = medseg_to_coco(src, str(tmp_path / "out"), modes=("merge",))
    assert sorted(written) == ["test_merge", "train_merge"]


def test_duplicate_manifest_rows_warn_and_are_kept(tmp_path, caplog):
    """Catches: duplicates dropped silently (changes class shares) or not reported at all."""
    csv = tmp_path / "m.csv"
    csv.write_text("file_name,label\na.png,COVID\nb.png,NonCOVID\na.png,COVID\n")
    with caplog.at_level("WARNING"):
        rows = read_manifest(str(csv), ("file_name", "label"))
    assert len(rows) == 3
    assert any("m.csv: 1 row(s) listed more than once (lines 2, 4)" in r.getMessage()
               for r in caplog.records)
