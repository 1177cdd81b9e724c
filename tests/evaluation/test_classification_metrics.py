"""Slice-classification metrics against hand-computed values, and ClassificationEvaluator's
outputs (JSON, CSV, PNG, distributed gather on one process)."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog

from oneshot_d2.evaluation import ClassificationEvaluator
from oneshot_d2.evaluation.classification_metrics import (
    classification_metrics,
    confusion_matrix,
    roc_auc_binary,
)

NAMES3 = ["Normal", "CP", "COVID-19"]


def _onehot(preds, c=3, conf=0.8):
    probs = np.full((len(preds), c), (1 - conf) / (c - 1))
    probs[np.arange(len(preds)), preds] = conf
    return probs


def test_confusion_matrix_rows_are_truth():
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="label outside"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_three_class_metrics_by_hand():
    # truth:  N N N N  CP CP CP  C C C      predictions below
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    r = classification_metrics(labels, _onehot(preds), NAMES3)
    # confusion: N: [3,1,0]  CP: [0,2,1]  C: [1,0,2]
    assert r["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert r["accuracy"] == pytest.approx(70.0)
    # Normal: TP 3 FN 1 FP 1 TN 5
    assert r["sensitivity/Normal"] == pytest.approx(75.0)
    assert r["precision/Normal"] == pytest.approx(75.0)
    assert r["specificity/Normal"] == pytest.approx(100 * 5 / 6)
    assert r["f1/Normal"] == pytest.approx(75.0)
    # CP: TP 2 FN 1 FP 1 TN 6 -> sens 2/3, prec 2/3, spec 6/7, F1 2/3
    assert r["sensitivity/CP"] == pytest.approx(200 / 3)
    assert r["specificity/CP"] == pytest.approx(600 / 7)
    assert r["f1/CP"] == pytest.approx(200 / 3)
    # COVID: TP 2 FN 1 FP 1 TN 6 -> F1 2/3
    assert r["f1/COVID-19"] == pytest.approx(200 / 3)
    assert r["macro_f1"] == pytest.approx(100 * (0.75 + 2 / 3 + 2 / 3) / 3)
    # weighted by the split's shares 0.4 / 0.3 / 0.3
    assert r["weighted_f1"] == pytest.approx(100 * (0.4 * 0.75 + 0.3 * 2 / 3 + 0.3 * 2 / 3))
    assert r["support"] == {"Normal": 4, "CP": 3, "COVID-19": 3}
    assert r["absent_classes"] == [] and r["num_images"] == 10


def test_weighted_f1_with_paper_weights():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    r = classification_metrics(labels, _onehot(preds), NAMES3, f1_weights=[0.20, 0.35, 0.45])
    assert r["weighted_f1"] == pytest.approx(100 * (0.20 * 0.75 + 0.35 * 2 / 3 + 0.45 * 2 / 3))
    assert r["f1_weights"] == {"Normal": 0.20, "CP": 0.35, "COVID-19": 0.45}
    with pytest.raises(ValueError, match="F1 weights"):
        classification_metrics(labels, _onehot(preds), NAMES3, f1_weights=[1, 1])


def test_roc_auc_by_hand_with_ties():
    # positives 0.9, 0.4 ; negatives 0.4, 0.1 -> pairs: (0.9>0.4) (0.9>0.1) (0.4=0.4: 1/2) (0.4>0.1)
    assert roc_auc_binary(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.4, 0.1])) \
        == pytest.approx(3.5 / 4)
    assert roc_auc_binary(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert math.isnan(roc_auc_binary(np.array([1, 1]), np.array([0.1, 0.9])))


def _pairwise_auc(is_pos, scores):
    """Independent AUC: count ordered (positive, negative) pairs, ties one half."""
    pos = [s for s, p in zip(scores, is_pos) if p]
    neg = [s for s, p in zip(scores, is_pos) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


# 4 classes, 12 images; scores on a 0.1 grid so many ties, class 3 never the truth
LAB4 = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 1, 2])
PROB4 = np.array([
    [0.5, 0.2, 0.2, 0.1], [0.4, 0.4, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1],
    [0.2, 0.4, 0.2, 0.2], [0.4, 0.2, 0.3, 0.1], [0.1, 0.3, 0.5, 0.1], [0.2, 0.2, 0.5, 0.1],
    [0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.2], [0.2, 0.4, 0.3, 0.1], [0.2, 0.3, 0.3, 0.2],
])


def test_confusion_matrix_matches_a_counting_loop():
    preds = PROB4.argmax(axis=1)  # ties -> the first class (numpy argmax): image 11 -> b
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(LAB4, preds):
        expected[t, p] += 1
    cm = confusion_matrix(LAB4, preds, 4)
    assert cm.dtype == np.int64 and cm.tolist() == expected.tolist()
    # and against the table written out by hand (rows = truth): not symmetric, so a transposed
    # matrix fails
    assert cm.tolist() == [[3, 1, 0, 0], [1, 3, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    assert confusion_matrix(np.zeros(0, int), np.zeros(0, int), 2).tolist() == [[0, 0], [0, 0]]


def test_per_class_auc_matches_pairwise_count_with_ties():
    r = classification_metrics(LAB4, PROB4, ["a", "b", "c", "d"])
    for c, name in enumerate("abc"):
        want = _pairwise_auc(LAB4 == c, PROB4[:, c])
        assert r[f"auc/{name}"] == pytest.approx(100 * want, abs=1e-12)
        assert roc_auc_binary(LAB4 == c, PROB4[:, c]) == pytest.approx(want, abs=1e-12)
    # by hand for class b (positives = truth b): scores pos 0.6 0.4 0.2 0.3 0.4, neg 0.2 0.4 0.5
    # 0.2 0.2 0.1 0.3 -> per positive: 0.6: 7, 0.4: 5.5 (twice), 0.2: 2.5, 0.3: 4.5 -> 25 of 35
    assert r["auc/b"] == pytest.approx(100 * 25 / 35)
    assert math.isnan(r["auc/d"])  # absent class: nan, not an exception
    assert r["macro_auc"] == pytest.approx(
        100 * np.mean([_pairwise_auc(LAB4 == c, PROB4[:, c]) for c in range(3)]))


def test_roc_auc_positive_class_is_the_true_flag():
    # swapping which side is positive turns AUC into 1 - AUC
    is_pos = np.array([True, False, True, False, False])
    scores = np.array([0.8, 0.8, 0.3, 0.2, 0.1])
    assert roc_auc_binary(is_pos, scores) == pytest.approx(_pairwise_auc(is_pos, scores))
    assert roc_auc_binary(is_pos, scores) == pytest.approx(4.5 / 6)
    assert roc_auc_binary(~is_pos, scores) == pytest.approx(1.5 / 6)
    assert math.isnan(roc_auc_binary(is_pos, np.array([0.8, np.nan, 0.3, 0.2, 0.1])))


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 1])
    r = classification_metrics(labels, _onehot(labels), NAMES3)
    for key in ("accuracy", "macro_f1", "weighted_f1", "macro_auc"):
        assert r[key] == pytest.approx(100.0)
    assert all(r[f"specificity/{n}"] == pytest.approx(100.0) for n in NAMES3)


def test_all_one_class_and_absent_class_do_not_crash():
    labels = np.array([2, 2, 2, 2])           # Normal and CP absent from the split
    preds = np.array([2, 2, 0, 2])
    r = classification_metrics(labels, _onehot(preds), NAMES3)
    assert r["absent_classes"] == ["Normal", "CP"]
    assert r["accuracy"] == pytest.approx(75.0)
    assert math.isnan(r["sensitivity/Normal"]) and math.isnan(r["auc/COVID-19"])
    assert r["precision/Normal"] == 0.0 and r["f1/Normal"] == 0.0  # predicted but absent
    assert math.isnan(r["f1/CP"])                                  # absent, never predicted
    assert r["f1/COVID-19"] == pytest.approx(100 * 6 / 7)
    assert r["macro_f1"] == pytest.approx(100 * (0 + 6 / 7) / 2)   # nan skipped
    assert r["weighted_f1"] == pytest.approx(100 * 6 / 7)          # share 1 on COVID
    assert math.isnan(r["macro_auc"])


def test_empty_predictions():
    r = classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 2)), ["neg", "pos"])
    assert r["num_images"] == 0 and math.isnan(r["accuracy"])
    assert r["absent_classes"] == ["neg", "pos"]


def test_two_classes():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    r = classification_metrics(labels, probs, ["NonCOVID", "COVID"])
    assert r["sensitivity/COVID"] == pytest.approx(200 / 3)
    assert r["specificity/COVID"] == pytest.approx(50.0)
    assert r["sensitivity/NonCOVID"] == r["specificity/COVID"]
    # COVID scores: pos 0.7 0.8 0.4 vs neg 0.1 0.6 -> 5 of 6 pairs ordered
    assert r["auc/COVID"] == pytest.approx(100 * 5 / 6)
    assert r["auc/NonCOVID"] == pytest.approx(r["auc/COVID"])


def test_evaluator_writes_reports(tmp_path):
    name = "test_cls_eval_reports"
    MetadataCatalog.get(name).set(image_classes=NAMES3)
    ev = ClassificationEvaluator(name, distributed=True, output_dir=str(tmp_path))
    ev.reset()
    labels = [0, 1, 2, 2]
    preds = [0, 1, 2, 1]
    inputs = [{"image_id": f"img{i}", "file_name": f"/d/img{i}.png", "image_label": lab}
              for i, lab in enumerate(labels)]
    outputs = [{"image_cls": torch.as_tensor(_onehot([p])[0], dtype=torch.float32)}
               for p in preds]
    ev.process(inputs[:2], outputs[:2])
    ev.process(inputs[2:], outputs[2:])
    res = ev.evaluate()["classification"]
    assert res["accuracy"] == pytest.approx(75.0)
    assert all(isinstance(v, float) for v in res.values())
    report = json.loads((tmp_path / "classification_metrics.json").read_text())
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert report["class_names"] == NAMES3 and report["dataset"] == name
    with open(tmp_path / "classification_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prediction"] for r in rows] == ["Normal", "CP", "COVID-19", "CP"]
    # the ground truth column: the last image is wrong, so a label column filled from the
    # predictions (or shifted by one image) shows
    assert [r["label"] for r in rows] == ["Normal", "CP", "COVID-19", "COVID-19"]
    assert [(r["image_id"], r["file_name"]) for r in rows] == [
        (f"img{i}", f"/d/img{i}.png") for i in range(4)]
    for r, p in zip(rows, preds):
        assert [float(r[f"prob_{n}"]) for n in NAMES3] == pytest.approx(_onehot([p])[0].tolist())
    assert float(rows[0]["prob_Normal"]) == pytest.approx(0.8)
    png = (tmp_path / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # atomic writes renamed


def test_evaluator_absent_class_writes_null(tmp_path):
    name = "test_cls_eval_absent"
    MetadataCatalog.get(name).set(image_classes=["NonCOVID", "COVID"])
    ev = ClassificationEvaluator(name, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    ev.process([{"image_id": 1, "image_label": 1}],
               [{"image_cls": torch.tensor([0.3, 0.7])}])
    res = ev.evaluate()["classification"]
    assert math.isnan(res["sensitivity/NonCOVID"])
    report = json.loads((tmp_path / "classification_metrics.json").read_text())
    assert report["sensitivity/NonCOVID"] is None and report["absent_classes"] == ["NonCOVID"]


def test_evaluator_without_class_metadata_is_clear():
    with pytest.raises(KeyError, match="image_classes"):
        ClassificationEvaluator("test_cls_eval_no_meta_xyz")
