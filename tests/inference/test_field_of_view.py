"""The scale check of predict (PREDICT.TRAINED_FIELD_OF_VIEW_MM, SPACING_TOLERANCE,
SPACING_MISMATCH): the mm per model pixel of a study against the training's, the warning, and
the crop / pad that puts a study at the training's scale with the outputs mapped back onto the
study's own pixels. The model is a stub that finds bright squares, so that where a lesion is
found is known."""
import numpy as np
import pytest
import torch
from detectron2.structures import Instances

from oneshot_d2.config import load_config
from oneshot_d2.inference.field_of_view import FieldOfView, scale_check
from oneshot_d2.inference.study import Study
from oneshot_d2.inference.study_prediction import predict_study
from tests.common import AFFINITY_QUICK


def _cfg(*opts):
    return load_config(AFFINITY_QUICK, list(opts))


def test_scale_check_compares_mm_per_model_pixel():
    # catches: the check on pixel spacing alone (a 512 px slice at 0.68 mm is the training's
    # scale at 256 px), the tolerance applied one way only, a check without a known scale
    cfg = _cfg("PREDICT.SPACING_MISMATCH", "warn")
    assert cfg.PREDICT.TRAINED_FIELD_OF_VIEW_MM == 350.0  # the phantom configs record it
    same, view = scale_check(cfg, (512, 512), (0.68, 0.68, 1.0))  # 348 mm
    assert same["action"] == "none" and view is None
    assert same["ratio"] == pytest.approx(348.16 / 350.0)
    wide, view = scale_check(cfg, (512, 512), (1.0, 1.0, 1.0))  # 512 mm: lungs look smaller
    assert wide["action"] == "warned" and view is None and wide["ratio"] == pytest.approx(512 / 350)
    tight, _ = scale_check(cfg, (300, 300), (1.0, 1.0, 1.0))  # 300 mm: x0.86, in tolerance
    assert tight["action"] == "none"
    tighter, _ = scale_check(cfg, (200, 200), (1.0, 1.0, 1.0))  # 200 mm: x0.57, beyond
    assert tighter["action"] == "warned" and tighter["ratio"] < 1
    resample = _cfg()  # the default: resample
    info, view = scale_check(resample, (512, 512), (1.0, 1.0, 1.0))
    assert info["action"] == "resampled" and view.size == (350, 350) and view.top == 81
    unknown, _ = scale_check(_cfg("PREDICT.TRAINED_FIELD_OF_VIEW_MM", "0.0"), (512, 512),
                             (1.0, 1.0, 1.0))
    assert unknown["action"] == "none" and "unknown" in unknown["reason"]
    no_spacing = scale_check(cfg, (512, 512), None)[0]
    assert no_spacing["reason"] == "the study has no (known) pixel spacing"


@pytest.mark.parametrize("size", [(30, 40), (90, 100)])  # a crop and a padding
def test_field_of_view_round_trip(size):
    # catches: the crop / pad off by its offset, labels put back shifted or flipped, boxes not
    # moved with the crop
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 60, 70), dtype=np.uint8)
    view = FieldOfView(top=(60 - size[0]) // 2, left=(70 - size[1]) // 2, size=size,
                       original=(60, 70))
    model = view.to_model(images, fill=7)
    assert model.shape == (2, *size)
    back = view.back(model[0])
    inside = view.back(np.ones(size, np.uint8)).astype(bool)
    np.testing.assert_array_equal(back[inside], images[0][inside])
    assert not back[~inside].any()
    if size[0] > 60:  # padding: the air fill around the whole slice
        assert model[0, 0, 0] == 7 and inside.all()
    box = np.array([[5.0, 6.0, 9.0, 12.0]])
    expected = (box + [view.left, view.top] * 2).clip(0, [70, 60, 70, 60])
    np.testing.assert_allclose(view.boxes_back(box), expected)  # boxes in the padding clipped


class BrightSquares:
    """A model stand-in: one GGO lesion wherever the slice is brighter than 200."""

    def __init__(self, cfg):
        self.cfg, self.batch_size = cfg, 4
        self.image_classes, self.lesion_classes = ["COVID-19", "Normal"], ["GGO"]
        self.seen = []

    def predict(self, images):
        for image in images:
            self.seen.append(image.shape)
            mask = torch.as_tensor(image > 200)[None]
            inst = Instances(image.shape)
            inst.pred_masks, inst.scores = mask, torch.tensor([0.9])
            inst.pred_classes = torch.tensor([0])
            ys, xs = np.nonzero(image > 200)
            yield {"image_cls": np.array([0.8, 0.2], np.float32), "instances": inst,
                   "image_cls_boxes": np.array([[xs.min(), ys.min(), xs.max(), ys.max()]],
                                               np.float32)}


@pytest.mark.parametrize("fov, expected_size", [(32.0, (32, 32)), (128.0, (128, 128))])
def test_resampled_study_gives_its_lesions_on_its_own_pixels(fov, expected_size):
    # catches: resampled outputs left on the model's pixels (labels of the wrong size or
    # shifted), RoI boxes not mapped back, the crop / pad not applied
    hu = np.full((3, 64, 64), -1000.0, np.float32)
    hu[:, 28:34, 30:37] = 200.0  # bright (above 200 in the lung window) near the centre
    study = Study("s", "s", "nifti", hu, True, (1.0, 1.0, 2.0), None, ["a", "b", "c"],
                  np.eye(4))
    plain = predict_study(BrightSquares(_cfg("PREDICT.TRAINED_FIELD_OF_VIEW_MM", str(fov),
                                             "PREDICT.SPACING_MISMATCH", "warn")), study)
    model = BrightSquares(_cfg("PREDICT.TRAINED_FIELD_OF_VIEW_MM", str(fov)))  # resample
    resampled = predict_study(model, study)
    assert plain.scale["action"] == "warned" and resampled.scale["action"] == "resampled"
    assert model.seen == [expected_size] * 3
    np.testing.assert_array_equal(resampled.labels, plain.labels)
    assert plain.labels[0, 28:34, 30:37].all() and plain.labels.sum() == 3 * 42
    np.testing.assert_allclose(resampled.roi_boxes[0], [[30, 28, 36, 33]])


def test_a_guessed_pixel_spacing_is_not_checked():
    # catches: a DICOM series without PixelSpacing (1 mm assumed) cropped to the training's
    # field of view by its guessed spacing, cutting its lungs
    hu = np.full((2, 64, 64), -1000.0, np.float32)
    hu[:, 2:6, 2:6] = 200.0  # a lesion the crop would cut
    study = Study("s", "s", "dicom", hu, True, (1.0, 1.0, 2.0), None, ["a", "b"], np.eye(4),
                  meta={"pixel_spacing_assumed": True})
    model = BrightSquares(_cfg("PREDICT.SPACING_MISMATCH", "resample"))
    pred = predict_study(model, study)
    assert pred.scale["action"] == "none" and "pixel spacing" in pred.scale["reason"]
    assert model.seen == [(64, 64)] * 2 and pred.labels[:, 2:6, 2:6].all()
