"""INPUT.CLAHE: the transform equalises each slice as OpenCV does, leaves coordinates and masks
alone, and the dataset mapper (training, evaluation) and the predictor apply it alike, before
the resize."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.data.io import read_gray
from oneshot_d2.data.mapper import CTDatasetMapper
from oneshot_d2.data.transforms import CLAHETransform, input_transforms
from oneshot_d2.inference import OneShotPredictor
from tests.common import AFFINITY_QUICK, TINY, make_cfg

CLAHE_ON = ("INPUT.CLAHE.ENABLED", "True", "INPUT.CLAHE.CLIP_LIMIT", "3.0",
            "INPUT.CLAHE.TILE_GRID", "4")


def test_clahe_is_opencvs_per_channel():
    rng = np.random.default_rng(0)
    grey = (rng.random((40, 56)) * 120 + 40).astype(np.uint8)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(grey)
    t = CLAHETransform(3.0, 4)
    np.testing.assert_array_equal(t.apply_image(grey), expected)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(t.apply_image(rgb), np.repeat(expected[:, :, None], 3, 2))
    colour = rgb.copy()
    colour[:, :, 2] = 255 - grey
    out = t.apply_image(colour)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert not np.array_equal(out[:, :, 2], expected)
    assert not np.array_equal(expected, grey)  # it does change the slice
    coords = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(t.apply_coords(coords), coords)
    mask = (grey > 100).astype(np.uint8)
    np.testing.assert_array_equal(t.apply_segmentation(mask), mask)
    with pytest.raises(ValueError, match="uint8"):
        t.apply_image(grey.astype(np.float32))


def test_off_by_default():
    assert input_transforms(make_cfg(AFFINITY_QUICK)) == []


@pytest.fixture(scope="module")
def cls_test_files(phantom_root):
    register_cncb_layout(phantom_root, "it")
    return [d["file_name"] for d in DatasetCatalog.get("it_cls_test")]


def test_mapper_and_predictor_equalise_before_the_resize(cls_test_files, tmp_path):
    cfg = make_cfg(AFFINITY_QUICK, *TINY, *CLAHE_ON, "INPUT.MIN_SIZE_TEST", "96",
                   "INPUT.MAX_SIZE_TEST", "96", "MODEL.DEVICE", "cpu")
    path = cls_test_files[0]
    grey = read_gray(path)
    assert grey.shape[0] != 96  # a resize happens, so the order matters
    equalised = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(grey)
    from PIL import Image
    resized = np.asarray(Image.fromarray(equalised).resize((96, 96), Image.BILINEAR))
    mapped = CTDatasetMapper(cfg, False)({"file_name": path, "image_id": 0})["image"]
    assert tuple(mapped.shape) == (3, 96, 96)
    np.testing.assert_array_equal(mapped[0].numpy(), resized)
    torch.manual_seed(0)
    from oneshot_d2.engine import OneShotTrainer
    weights = tmp_path / "w.pth"
    torch.save({"model": OneShotTrainer.build_model(cfg).state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    predictor = OneShotPredictor(cfg, batch_size=1)
    assert torch.equal(predictor.model_input(grey)["image"], mapped)
    off = make_cfg(AFFINITY_QUICK, *TINY, "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST",
                   "96", "MODEL.DEVICE", "cpu")
    assert not torch.equal(CTDatasetMapper(off, False)({"file_name": path})["image"], mapped)
