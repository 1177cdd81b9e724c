"""The papers' per-image mask AP against hand-computed values, and its evaluator."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Instances

from oneshot_d2.evaluation import PerImageAPEvaluator
from oneshot_d2.evaluation.per_image_ap import (
    IOU_THRESHOLDS,
    image_ap,
    mask_iou,
    match_predictions,
    summarize_per_image_ap,
    voc_ap,
)


def _box_mask(x0, y0, x1, y1, size=20):
    m = np.zeros((size, size), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_thresholds():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_mask_iou_and_empty_union():
    a = _box_mask(0, 0, 10, 10)          # 100 px
    b = _box_mask(5, 0, 15, 10)          # 100 px, overlap 50 -> IoU 50 / 150
    empty = np.zeros((20, 20), dtype=bool)
    ious = mask_iou(np.stack([a, empty]), np.stack([b, empty]))
    assert ious[0, 0] == pytest.approx(1 / 3)
    assert ious[1, 1] == 0.0             # original: 0 / 0 = nan


def test_voc_ap_by_hand():
    # ranking TP FP TP with 2 GT: precision 1, 1/2, 2/3; recall .5 .5 1
    # envelope: at recall .5 -> max(1, .5, 2/3) = 1 ; at recall 1 -> 2/3 => AP = .5*1 + .5*2/3
    assert voc_ap(np.array([True, False, True]), 2) == pytest.approx(0.5 + 1 / 3)
    # one GT missed: TP only at rank 2 of 2 predictions, 2 GT -> .5 * 1/2
    assert voc_ap(np.array([False, True]), 2) == pytest.approx(0.25)


def test_one_prediction_matches_one_ground_truth():
    # one big prediction covering two GTs with IoU > 0.3 each: the original matched it to both
    ious = np.array([[0.45, 0.40]])
    tp = match_predictions(ious, np.array([1]), np.array([1, 1]), 0.3)
    assert tp.tolist() == [True]
    assert voc_ap(tp, 2) == pytest.approx(0.5)   # original: 1.0 (both GT "found")


def test_matching_respects_class_and_strict_threshold():
    ious = np.array([[0.5, 0.9]])
    assert match_predictions(ious, np.array([2]), np.array([2, 1]), 0.5).tolist() == [False]
    assert match_predictions(ious, np.array([1]), np.array([2, 1]), 0.5).tolist() == [True]


def test_image_rules_without_ground_truth_or_detections():
    empty = np.zeros((0, 20, 20), dtype=bool)
    none = np.zeros(0)
    gt = np.stack([_box_mask(0, 0, 10, 10)])
    assert image_ap(empty, none, none, empty, none).tolist() == [1.0] * 10     # nothing, nothing
    assert image_ap(gt, np.array([0.9]), np.array([1]), empty, none).tolist() == [0.0] * 10
    assert image_ap(empty, none, none, gt, np.array([1])).tolist() == [0.0] * 10


def test_image_ap_across_thresholds():
    gt = np.stack([_box_mask(0, 0, 10, 10)])
    pred = np.stack([_box_mask(0, 0, 10, 8)])          # IoU 0.8 exactly
    ap = image_ap(pred, np.array([0.9]), np.array([1]), gt, np.array([1]))
    # IoU > t for t < 0.8; strict at 0.80
    assert ap.tolist() == [1.0] * 6 + [0.0] * 4


def test_perfect_and_score_order():
    gts = np.stack([_box_mask(0, 0, 5, 5), _box_mask(10, 10, 20, 20)])
    fp = _box_mask(0, 15, 5, 20)
    preds = np.stack([fp, gts[0], gts[1]])
    # the false positive ranked first: precision 0, 1/2, 2/3 at recall 0, .5, 1 -> envelope 2/3
    ap = image_ap(preds, np.array([0.99, 0.9, 0.8]), np.ones(3), gts, np.ones(2))
    assert ap[0] == pytest.approx(2 / 3)
    # ranked last: AP 1
    ap = image_ap(preds, np.array([0.1, 0.9, 0.8]), np.ones(3), gts, np.ones(2))
    assert ap.tolist() == [1.0] * 10


def test_summary_means_over_images():
    per_image = np.array([[1.0] * 10, [0.0] * 5 + [1.0] * 5])
    res = summarize_per_image_ap(per_image)
    assert res["AP50"] == pytest.approx(50.0) and res["AP75"] == pytest.approx(100.0)
    assert res["AP"] == pytest.approx(75.0) and res["AP@0.95"] == pytest.approx(100.0)


def test_evaluator_on_registered_dataset(tmp_path):
    import pycocotools.mask as mask_util
    name = "test_per_image_ap_ds"
    m = _box_mask(2, 2, 12, 12)
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    records = [
        {"file_name": "a.png", "image_id": 1, "height": 20, "width": 20,
         "annotations": [{"segmentation": rle, "category_id": 0, "bbox": [2, 2, 10, 10],
                          "bbox_mode": 1, "iscrowd": 0}]},
        {"file_name": "b.png", "image_id": 2, "height": 20, "width": 20, "annotations": []},
    ]
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=["lesion"])
    ev = PerImageAPEvaluator(name, score_thresh=0.75, distributed=True, output_dir=str(tmp_path))
    ev.reset()

    def instances(masks, scores):
        inst = Instances((20, 20))
        inst.pred_masks = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, 20, 20))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
        return {"instances": inst}

    # image 1: exact mask (score .9) + a low-score FP filtered by the threshold; image 2: one
    # detection with score .8 on an image without lesions -> 0
    ev.process([{"image_id": 1}, {"image_id": 2}],
               [instances([m, _box_mask(14, 14, 18, 18)], [0.9, 0.5]),
                instances([_box_mask(0, 0, 3, 3)], [0.8])])
    res = ev.evaluate()["segm_per_image"]
    assert res["AP"] == pytest.approx(50.0) and res["AP50"] == pytest.approx(50.0)
    report = json.loads((tmp_path / "per_image_ap.json").read_text())
    assert [r["num_pred"] for r in report["images"]] == [1, 1]
    with pytest.raises(KeyError, match="not in"):
        ev.process([{"image_id": 99, "file_name": "x.png"}], [instances([], [])])
