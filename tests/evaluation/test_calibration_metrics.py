"""Calibration and operating-point metrics against hand-computed values: expected calibration
error, Brier score, NLL, balanced accuracy, the threshold chosen on one split and the metrics at
it on another, through the evaluator and the trainer's THRESHOLD_DATASET."""
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog

from oneshot_d2.evaluation import ClassificationEvaluator
from oneshot_d2.evaluation.classification_metrics import (
    brier_score,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    thresholded_metrics,
)


def test_ece_by_hand():
    # 15 bins (b / 15, (b + 1) / 15]: confidences 0.9, 0.9 (bin 13), 0.7 (bin 10), 0.55
    # (bin 8): {0.9, 0.9} with one right -> |0.5 - 0.9| * 2; {0.7} right -> |1 - 0.7|;
    # {0.55} wrong -> |0 - 0.55|
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.7, 0.3], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])
    expected = (2 * 0.4 + 0.3 + 0.55) / 4
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    # one bin for everything: |mean accuracy - mean confidence|
    assert expected_calibration_error(labels, probs, num_bins=1) == pytest.approx(
        abs(2 / 4 - (0.9 + 0.9 + 0.7 + 0.55) / 4))
    # perfectly calibrated: confidence 0.75, three of four right
    cal = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), cal) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error(np.zeros(0, int), np.zeros((0, 2))))


def test_ece_bin_edges_are_right_closed():
    # 15 bins: confidence exactly 0.6 belongs to (8/15, 9/15] = bin 8, with 0.55 (> 8/15)
    probs = np.array([[0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 1])
    assert expected_calibration_error(labels, probs) == pytest.approx(abs(0.5 - 0.575))


def test_brier_and_nll_by_hand():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 0, 1])
    expected = ((0.2 ** 2 + 0.2 ** 2) + (0.7 ** 2 + 0.7 ** 2) + (0.5 ** 2 + 0.5 ** 2)) / 3
    assert brier_score(labels, probs) == pytest.approx(expected)
    r = classification_metrics(labels, probs, ["Normal", "COVID"])
    assert r["brier"] == pytest.approx(expected)
    assert r["nll"] == pytest.approx(-(np.log(0.8) + np.log(0.3) + np.log(0.5)) / 3)
    assert r["ece"] == pytest.approx(100 * expected_calibration_error(labels, probs))
    # balanced accuracy = mean sensitivity: Normal 1 of 2, COVID 0 of 1 (argmax of a tie: 0)
    assert r["balanced_accuracy"] == pytest.approx(100 * (0.5 + 0.0) / 2)
    # sensitivities 2/3 and 1 (mean 83.3); mean precision would be (1 + 1/2) / 2 = 75
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    r = classification_metrics(np.array([0, 0, 0, 1]), probs, ["Normal", "COVID"])
    assert r["balanced_accuracy"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_choose_threshold_maximises_balanced_accuracy_at_the_midpoint():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.9])
    positive = np.array([0, 0, 0, 1, 0, 1, 1], dtype=bool)
    # t in (0.35, 0.4]: sens 1, spec 3/4 -> 0.875 (the best); midpoint 0.375
    assert choose_threshold(positive, scores) == pytest.approx(0.375)
    at = thresholded_metrics(positive, scores, 0.375)
    assert at["sensitivity"] == pytest.approx(100.0)
    assert at["specificity"] == pytest.approx(75.0)
    assert at["balanced_accuracy"] == pytest.approx(87.5)
    assert at["accuracy"] == pytest.approx(100 * 6 / 7)
    # separable sets: any threshold in the gap, the midpoint of the gap
    assert choose_threshold(np.array([0, 0, 1, 1], bool),
                            np.array([0.1, 0.3, 0.8, 0.9])) == pytest.approx(0.55)
    # everything positive is best: the lowest score; no negatives: undefined
    assert choose_threshold(np.array([1, 1, 0], bool), np.array([0.2, 0.5, 0.1])) == \
        pytest.approx(0.15)
    assert np.isnan(choose_threshold(np.array([1, 1], bool), np.array([0.2, 0.5])))


def test_choose_threshold_agrees_with_an_exhaustive_search():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        scores = np.round(rng.random(n), 2)  # ties included
        positive = rng.random(n) < 0.6
        if positive.all() or not positive.any():
            continue
        t = choose_threshold(positive, scores)
        best = max(thresholded_metrics(positive, scores, c)["balanced_accuracy"]
                   for c in np.append(np.unique(scores), 2.0))
        assert thresholded_metrics(positive, scores, t)["balanced_accuracy"] == \
            pytest.approx(best)


def _evaluate(name, labels, probs, **kwargs):
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(image_classes=["Normal", "COVID"])
    ev = ClassificationEvaluator(name, distributed=False, **kwargs)
    ev.reset()
    ev.process([{"image_id": i, "image_label": int(y)} for i, y in enumerate(labels)],
               [{"image_cls": torch.tensor(p)} for p in probs])
    return ev.evaluate()["classification"]


def test_evaluator_reports_the_operating_point():
    train_scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.9])
    train_labels = np.array([0, 0, 0, 1, 0, 1, 1])
    probs = np.stack([1 - train_scores, train_scores], axis=1)
    chosen = _evaluate("t_op_train", train_labels, probs, choose_threshold=True)
    assert chosen["chosen_threshold"] == pytest.approx(0.375)
    # the validation split at the training split's threshold (not at its own best one)
    val_scores = np.array([0.3, 0.38, 0.5, 0.2, 0.8])
    val_labels = np.array([0, 0, 0, 1, 1])
    res = _evaluate("t_op_val", val_labels, np.stack([1 - val_scores, val_scores], 1),
                    threshold=chosen["chosen_threshold"])
    assert res["threshold"] == pytest.approx(0.375)
    # called positive: 0.38, 0.5, 0.8 -> Normal 1 of 3 right, COVID 1 of 2
    assert res["thresholded/sensitivity/Normal"] == pytest.approx(100 / 3)
    assert res["thresholded/sensitivity/COVID"] == pytest.approx(50.0)
    assert res["thresholded/balanced_accuracy"] == pytest.approx((100 / 3 + 50) / 2)
    assert res["thresholded/accuracy"] == pytest.approx(40.0)
    assert "chosen_threshold" not in res
    with pytest.raises(ValueError, match="needs 2 classes"):
        MetadataCatalog.get("t_op_3").set(image_classes=["a", "b", "c"])
        ClassificationEvaluator("t_op_3", threshold=0.5)


@pytest.fixture(scope="module")
def binary_sets(phantom_root):
    """The small phantom's classification slices as Normal vs not (2 classes)."""
    from detectron2.data import DatasetCatalog

    from oneshot_d2.data.datasets import register_ct_cls
    from oneshot_d2.data.datasets.builtin import register_cncb_layout

    register_cncb_layout(phantom_root, "bin3")
    for split in ("train", "test"):
        dicts = [dict(d, image_label=int(d["image_label"] != 0))
                 for d in DatasetCatalog.get(f"bin3_cls_{split}")]
        register_ct_cls(f"bin_cls_{split}", lambda dicts=dicts: dicts, ["Normal", "COVID"])
    return "bin_cls_train", "bin_cls_test"


@pytest.mark.slow
def test_trainer_chooses_the_threshold_on_one_set_and_applies_it_to_the_others(binary_sets,
                                                                                tmp_path):
    from oneshot_d2.engine import OneShotTrainer
    from tests.common import TINY, config_path, make_cfg, seeded_model

    train, test = binary_sets
    cfg = make_cfg(config_path("real/image_classifier_R_18_FPN_1200iter_ucsd_2cls.yaml"), *TINY,
                   "DATASETS.TEST", f"('{test}',)", "OUTPUT_DIR", str(tmp_path),
                   "TEST.CLASSIFICATION.THRESHOLD_DATASET", train)
    results = OneShotTrainer.test(cfg, seeded_model(cfg))
    assert list(results) == [train, test]  # the threshold set first, then DATASETS.TEST
    chosen = results[train]["classification"]["chosen_threshold"]
    assert results[test]["classification"]["threshold"] == pytest.approx(chosen)
    assert "thresholded/balanced_accuracy" in results[test]["classification"]
    # the same without the option: argmax metrics only
    cfg.TEST.CLASSIFICATION.THRESHOLD_DATASET = ""
    plain = OneShotTrainer.test(cfg, seeded_model(cfg))
    assert "threshold" not in plain["classification"]
    assert plain["classification"]["macro_auc"] == pytest.approx(
        results[test]["classification"]["macro_auc"])
