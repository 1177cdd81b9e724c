"""Label masks -> COCO: a hand-made mask with known components, the phantom set, bad data."""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data.datasets import load_coco_json

from oneshot_d2.data.datasets import cncb_masks_to_coco, mask_to_instances
from oneshot_d2.data.datasets.builtin import seg_json_path
from oneshot_d2.data.datasets.label_masks import CNCB_CATEGORY_VALUES
from oneshot_d2.errors import DatasetError


def _hand_mask():
    """60x60 CNCB mask: lung field everywhere in the middle, and
    A: GGO 11x11 (121 px, kept); B: GGO 10x10 (100 px, dropped: not > 100);
    C: consolidation 12x12 touching A on its right (merge: A+C one component);
    D: GGO two 8x8 squares touching only at a corner (8-connectivity: one 128 px component)."""
    m = np.zeros((60, 60), np.uint8)
    m[2:58, 2:58] = 1
    m[5:16, 5:16] = 2  # A
    m[5:17, 16:28] = 3  # C, adjacent to A
    m[40:50, 5:15] = 2  # B
    m[30:38, 40:48] = 2  # D1
    m[38:46, 48:56] = 2  # D2 (corner contact with D1)
    return m


def test_hand_mask_separate():
    inst = mask_to_instances(_hand_mask(), CNCB_CATEGORY_VALUES["separate"], min_area=100)
    ggo = [m for c, m in inst if c == 0]
    cons = [m for c, m in inst if c == 1]
    assert sorted(int(m.sum()) for m in ggo) == [121, 128]
    assert [int(m.sum()) for m in cons] == [144]


def test_hand_mask_merge():
    inst = mask_to_instances(_hand_mask(), CNCB_CATEGORY_VALUES["merge"], min_area=100)
    assert sorted(int(m.sum()) for _, m in inst) == [128, 121 + 144]
    assert {c for c, _ in inst} == {0}


def test_min_area_is_configurable():
    inst = mask_to_instances(_hand_mask(), CNCB_CATEGORY_VALUES["separate"], min_area=99)
    assert len([1 for c, _ in inst if c == 0]) == 3  # B (100 px) now kept


def _write_pair(root, stem, img, mask):
    os.makedirs(os.path.join(root, "imgs"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    if img is not None:
        cv2.imwrite(os.path.join(root, "imgs", stem + ".jpg"), img)
    if mask is not None:
        cv2.imwrite(os.path.join(root, "masks", stem + ".png"), mask)


def test_hand_mask_to_coco(tmp_path):
    root = str(tmp_path)
    _write_pair(root, "1_000", np.full((60, 60), 100, np.uint8), _hand_mask())
    (tmp_path / "split.txt").write_text("1_000.jpg\n")
    coco = cncb_masks_to_coco(root, "split.txt", "separate", out_json=str(tmp_path / "o.json"))
    assert [c["name"] for c in coco["categories"]] == ["GGO", "consolidation"]
    anns = sorted(coco["annotations"], key=lambda a: a["area"])
    assert [a["area"] for a in anns] == [121, 128, 144]
    assert anns[0]["bbox"] == [5.0, 5.0, 11.0, 11.0] and anns[0]["category_id"] == 1
    assert anns[2]["bbox"] == [16.0, 5.0, 12.0, 12.0] and anns[2]["category_id"] == 2
    dicts = load_coco_json(str(tmp_path / "o.json"), os.path.join(root, "imgs"))
    assert len(dicts) == 1 and len(dicts[0]["annotations"]) == 3
    decoded = mask_util.decode(dicts[0]["annotations"][0]["segmentation"])
    assert decoded.shape == (60, 60)


def test_phantom_conversion(phantom_root):
    coco = json.load(open(seg_json_path(phantom_root, "train", "merge")))
    assert len(coco["images"]) == 8 and coco["categories"] == [{"id": 1, "name": "lesion"}]
    assert len(coco["annotations"]) > 0
    assert all(a["area"] > 100 for a in coco["annotations"])
    # instances reproduce the lesion pixels of the masks (components > 100 px)
    img = coco["images"][0]
    stem = os.path.splitext(img["file_name"])[0]
    mask = cv2.imread(os.path.join(phantom_root, "segmentation", "masks", stem + ".png"), 0)
    union = np.zeros_like(mask, dtype=bool)
    for a in coco["annotations"]:
        if a["image_id"] == img["id"]:
            union |= mask_util.decode(a["segmentation"]).astype(bool)
    assert not (union & (mask < 2)).any()
    sep = json.load(open(seg_json_path(phantom_root, "train", "separate")))
    assert [c["name"] for c in sep["categories"]] == ["GGO", "consolidation"]


# ---- bad data: every error names the file --------------------------------------------------
def _one_item_root(tmp_path, img=None, mask=None, stem="9_000"):
    root = str(tmp_path)
    img = np.full((40, 40), 90, np.uint8) if img is None else img
    mask = np.zeros((40, 40), np.uint8) if mask is None else mask
    _write_pair(root, stem, img, mask)
    (tmp_path / "split.txt").write_text(stem + ".jpg\n")
    return root


@pytest.mark.parametrize("removed, message", [
    (("imgs", "9_000.jpg"), r"9_000\.jpg: image file not found"),
    (("masks", "9_000.png"), r"9_000\.png: mask file not found"),
])
def test_error_missing_file(tmp_path, removed, message):
    root = _one_item_root(tmp_path)
    os.remove(os.path.join(root, *removed))
    with pytest.raises(DatasetError, match=message):
        cncb_masks_to_coco(root, "split.txt")


def test_error_unreadable_image(tmp_path):
    root = _one_item_root(tmp_path)
    with open(os.path.join(root, "imgs", "9_000.jpg"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DatasetError, match=r"9_000\.jpg: unreadable image"):
        cncb_masks_to_coco(root, "split.txt")


def test_error_size_mismatch(tmp_path):
    root = _one_item_root(tmp_path, mask=np.zeros((30, 40), np.uint8))
    with pytest.raises(DatasetError, match=r"9_000\.png: mask size 40x30 .* differs"):
        cncb_masks_to_coco(root, "split.txt")


def test_error_values_outside_encoding(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[3:9, 3:9] = 255
    root = _one_item_root(tmp_path, mask=mask)
    with pytest.raises(DatasetError, match=r"9_000\.png: mask values \[255\] outside"):
        cncb_masks_to_coco(root, "split.txt")


def test_error_empty_split(tmp_path):
    root = _one_item_root(tmp_path)
    (tmp_path / "split.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"split\.txt: empty split"):
        cncb_masks_to_coco(root, "split.txt")
    with pytest.raises(DatasetError, match=r"nope\.txt: split file not found"):
        cncb_masks_to_coco(root, "nope.txt")


def test_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        cncb_masks_to_coco(str(tmp_path), "split.txt", mode="lungs")
