"""Bad images are refused by the one checked reader everywhere (converters, checker, training and
evaluation), naming the file; known-good slices and masks stay accepted. Each test's docstring
says which one-line slip in the code it catches."""
import os
import re
import shutil

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from oneshot_d2.data.build import build_oneshot_train_loader
from oneshot_d2.data.check import check_dataset_dicts
from oneshot_d2.data.datasets import label_masks_to_coco, register_ct_seg
from oneshot_d2.data.datasets.builtin import seg_json_path
from oneshot_d2.data.io import open_image, read_gray, read_label_image
from oneshot_d2.data.mapper import CTDatasetMapper
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.errors import DatasetError
from tests.bad_input import snapshot, truncate, write_png
from tests.common import MASK_RCNN_QUICK, TINY, make_cfg


def _seg_copy(phantom_root, tmp_path, name: str):
    """A copy of the phantom test images registered as a segmentation dataset ``name``."""
    images = tmp_path / "imgs"
    shutil.copytree(os.path.join(phantom_root, "segmentation", "imgs"), images)
    register_ct_seg(name, seg_json_path(phantom_root, "test", "merge"), str(images), ["lesion"])
    return images


def test_16_bit_slices_refused_everywhere(tmp_path):
    """Silent before: a 16-bit PNG (HU + 1024) was 0..7 for the converter (cv2) and clipped to
    255 for the trainer (PIL), and the checker reported 0 errors. Catches: any of the converter,
    the checker or the mapper reading it without the bit-depth check."""
    hu = write_png(tmp_path / "hu.png", np.full((40, 40), 1024 - 600, np.uint16))
    mask = write_png(tmp_path / "m.png", np.zeros((40, 40), np.uint8))
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=r"hu\.png: 16-bit image .*values 424\.\.424.*8-bit"):
        label_masks_to_coco([(hu, mask)], str(tmp_path), {"lesion": (1,)},
                            out_json=str(tmp_path / "o.json"))
    found = check_dataset_dicts([{"file_name": hu, "height": 40, "width": 40}], "d")
    assert len(found) == 1 and found[0].severity == "error" and "16-bit" in found[0].problem
    cfg = make_cfg(MASK_RCNN_QUICK, *TINY)
    with pytest.raises(DatasetError, match=r"hu\.png: 16-bit image .*\(dataset mine\)"):
        CTDatasetMapper(cfg, False, ("mine",))({"file_name": hu, "height": 40, "width": 40})
    assert snapshot(tmp_path) == before  # no JSON written
    # a 16-bit colour PNG opens in PIL as 8-bit "RGB" (high byte only): refused as well
    rgb16 = write_png(tmp_path / "rgb16.png", np.full((8, 8, 3), 1024 - 600, np.uint16))
    with pytest.raises(DatasetError, match=r"rgb16\.png: 16-bit colour PNG"):
        open_image(rgb16, decode=False)


def test_index_entry_with_wrongly_typed_field(tmp_path, caplog):
    """A valid-JSON index whose entry has a field of the wrong type: skipped with a warning at
    import (non-strict), a DatasetError naming the entry when strict. Catches: the TypeError
    escaping and breaking `import oneshot_d2`."""
    from oneshot_d2.data.datasets.public_ct import register_public_datasets

    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.json").write_text(
        '{"x_bad": {"type": "seg", "json": 5, "image_root": null, "classes": 3}}')
    assert register_public_datasets(str(tmp_path), strict=False) == []
    assert "x_bad" in caplog.text and "wrong type" in caplog.text
    with pytest.raises(DatasetError, match="entry 'x_bad' has a field of the wrong type"):
        register_public_datasets(str(tmp_path), strict=True)


def test_reader_agrees_with_detectron2(tmp_path):
    """The converters' reader and Detectron2's training reader see the same pixels (RGB, RGBA,
    palette, grey JPEG). Catches: read_gray going back to cv2 (other decoder, other luminance)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)
    paths = [tmp_path / "rgb.png", tmp_path / "rgba.png", tmp_path / "p.png", tmp_path / "g.jpg"]
    Image.fromarray(rgb).save(paths[0])
    Image.fromarray(np.dstack([rgb, np.full((9, 7), 128, np.uint8)])).save(paths[1])
    Image.fromarray(rgb).convert("P").save(paths[2])
    Image.fromarray(rgb[..., 0]).save(paths[3])
    for path in paths:
        assert np.array_equal(read_gray(str(path)), read_image(str(path), "L")[..., 0]), path


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "unreadable image, truncated or corrupt"),
    ("empty", "empty image file (0 bytes)"),
    ("delete", "image file not found"),
])
def test_damaged_image_in_converter_and_checker(tmp_path, damage, needle):
    """Silent before: libjpeg warned about a truncated JPEG without naming it and the converter
    went on. Catches: a decoder that is not run to the end (header-only open), or a message
    without the file."""
    img = tmp_path / "s.jpg"
    cv2.imwrite(str(img), np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    mask = write_png(tmp_path / "m.png", np.zeros((64, 64), np.uint8))
    {"truncate": lambda: truncate(img), "empty": lambda: open(img, "wb").close(),
     "delete": lambda: os.remove(img)}[damage]()
    with pytest.raises(DatasetError, match=re.escape(f"{img}: {needle}")):
        label_masks_to_coco([(str(img), mask)], str(tmp_path), {"lesion": (1,)})
    found = check_dataset_dicts([{"file_name": str(img)}], "d")
    assert [(f.severity, f.file) for f in found] == [("error", str(img))]
    assert needle.split(" (")[0] in found[0].problem


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete", "resize"])
def test_damaged_image_at_training_and_evaluation(phantom, tmp_path, unique_name, damage):
    """Images damaged after conversion fail in the data loaders with the file and the dataset
    named. Catches: the trainer's loaders built with Detectron2's plain DatasetMapper (a bare
    PIL OSError / SizeMismatchError mid-run)."""
    images = _seg_copy(phantom, tmp_path, unique_name)
    for name in os.listdir(images):
        path = images / name
        if damage == "truncate":
            truncate(path)
        elif damage == "empty":
            open(path, "wb").close()
        elif damage == "delete":
            os.remove(path)
        else:
            cv2.imwrite(str(path), np.zeros((100, 90), np.uint8))
    needle = {"truncate": "unreadable image, truncated or corrupt", "empty": "empty image file",
              "delete": "image file not found", "resize": "image is 90x100 (WxH) but its "
              "annotation records 128x128"}[damage]
    cfg = make_cfg(MASK_RCNN_QUICK, *TINY, "DATASETS.TRAIN", f"('{unique_name}',)")
    if damage == "delete":  # all images gone: the dataset itself refuses to load
        with pytest.raises(DatasetError, match=f"image file not found \\(4 of 4 images of "
                                               f"dataset '{unique_name}' missing"):
            DatasetCatalog.get(unique_name)
        return
    pattern = f"{images}/.*: {re.escape(needle)}.*dataset {unique_name}"
    with pytest.raises(DatasetError, match=pattern):
        next(iter(OneShotTrainer.build_test_loader(cfg, unique_name)))
    with pytest.raises(DatasetError, match=pattern):
        next(iter(build_oneshot_train_loader(cfg)))


def test_known_good_slices_and_masks(tmp_path):
    """RGBA / palette slices, uint16 label masks, 1x1 and 8000x8000 slices. Catches: a bit-depth
    check that refuses uint16 *masks* or 4-channel / palette slices, and size limits."""
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((40, 40, 4), 120, np.uint8)).save(rgba)
    pal = tmp_path / "pal.png"
    Image.fromarray(np.full((40, 40), 70, np.uint8)).convert("P").save(pal)
    mask16 = np.zeros((40, 40), np.uint16)
    mask16[2:20, 2:20] = 2
    m16 = write_png(tmp_path / "m16.png", mask16)
    assert read_label_image(m16).dtype == np.uint16
    coco = label_masks_to_coco([(str(rgba), m16), (str(pal), m16)], str(tmp_path),
                               {"lesion": (1, 2)}, allowed_values=(0, 1, 2))
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2
    one = write_png(tmp_path / "one.png", np.zeros((1, 1), np.uint8))
    assert read_gray(one).shape == (1, 1)
    big = write_png(tmp_path / "big.png", np.zeros((8000, 8000), np.uint8))
    assert read_gray(big).shape == (8000, 8000)
    assert open_image(big, decode=False).size == (8000, 8000)
    assert check_dataset_dicts([{"file_name": big, "height": 8000, "width": 8000},
                                {"file_name": str(rgba)}, {"file_name": str(pal)}], "d") == []
