"""The real-data diagnostics: detections counted by group (fake outputs, counted by hand; and
the tool end to end), and the linear probe (fitted on separable features; and the tool on the
phantom with a random backbone file)."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from detectron2.structures import Instances

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine.linear_probe import fit_linear_probe
from oneshot_d2.evaluation.detection_counts import DetectionCountEvaluator
from tests.common import TINY, config_path, make_cfg, seeded_model

CLASSIFIER = config_path("real/image_classifier_R_18_FPN_1200iter_ucsd_2cls.yaml")
MASK_RCNN = config_path("quick_schedules/mask_rcnn_R_18_FPN_phantom_quick.yaml")


def load_tool(name):
    return importlib.import_module(f"oneshot_d2.cli.{name}")


def _instances(scores, masks):
    inst = Instances((4, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_masks = torch.tensor(np.array(masks), dtype=torch.bool).reshape(-1, 4, 4)
    return inst


def test_detection_counts_by_group_by_hand():
    full = np.ones((4, 4), bool)
    quarter = np.zeros((4, 4), bool)
    quarter[:2, :2] = True
    ev = DetectionCountEvaluator("severity", score_thresh=0.5, distributed=False)
    ev.reset()
    ev.process([{"severity": "CT-0"}, {"severity": "CT-0"}, {"severity": "CT-2"}, {}],
               [{"instances": _instances([0.4], [full])},              # below the threshold
                {"instances": _instances([0.9, 0.6], [quarter, quarter])},  # 2, area 1/4
                {"instances": _instances([0.5, 0.7, 0.2], [full, quarter, quarter])},  # 2, 1
                {"instances": _instances([], np.zeros((0, 4, 4), bool))}])
    res = ev.evaluate()["detections"]
    assert res["CT-0/slices"] == 2 and res["CT-0/per_slice"] == pytest.approx(1.0)
    assert res["CT-0/any"] == pytest.approx(50.0)
    assert res["CT-0/area"] == pytest.approx(100 * (0 + 0.25) / 2)
    assert res["CT-2/per_slice"] == pytest.approx(2.0) and res["CT-2/area"] == pytest.approx(100)
    assert res["-/slices"] == 1 and res["-/per_slice"] == 0.0  # no severity field
    assert res["all/slices"] == 4 and res["all/per_slice"] == pytest.approx(4 / 4)
    assert res["all/any"] == pytest.approx(50.0)


def test_linear_probe_fits_separable_features():
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 60)
    x = rng.normal(size=(80, 5))
    x[:, 0] += 3.0 * y  # one informative feature
    out = fit_linear_probe((x, y), (x + rng.normal(scale=0.1, size=x.shape), y),
                           ["Normal", "COVID"], c=1.0)
    assert out["val"]["macro_auc"] > 95 and out["train"]["balanced_accuracy"] > 90
    assert 0 < out["val"]["chosen_threshold"] < 1
    assert out["val"]["thresholded/balanced_accuracy"] > 90
    # uninformative features: chance
    noise = fit_linear_probe((rng.normal(size=(80, 5)), y), (rng.normal(size=(80, 5)), y),
                             ["Normal", "COVID"])
    assert noise["val"]["macro_auc"] < 80


@pytest.fixture(scope="module")
def phantom_names(phantom_root):
    register_cncb_layout(phantom_root, "rd")
    return "rd"


def test_probe_and_count_tools_end_to_end(phantom_names, tmp_path):
    cls_opts = [*TINY, "MODEL.ONESHOT.NUM_IMAGE_CLASSES", "3"]
    weights = tmp_path / "classifier.pth"
    torch.save({"model": seeded_model(make_cfg(CLASSIFIER, *cls_opts)).state_dict()}, weights)
    result = load_tool("linear_probe").main(
        ["--config-file", CLASSIFIER, "--train", "rd_cls_train", "--val", "rd_cls_val",
         "--output", str(tmp_path / "probe"), *cls_opts, "MODEL.WEIGHTS", str(weights)])
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert saved["val"]["accuracy"] == pytest.approx(result["val"]["accuracy"])
    assert saved["feature_dim"] == 5 * 128  # p2..p6 of the 128-channel FPN, pooled
    assert "chosen_threshold" not in saved["val"]  # three classes: no operating point

    det_weights = tmp_path / "maskrcnn.pth"
    torch.save({"model": seeded_model(make_cfg(MASK_RCNN, *TINY)).state_dict()}, det_weights)
    counts = load_tool("count_detections").main(
        ["--config-file", MASK_RCNN, "--dataset", "rd_cls_test", "--group-by", "image_label",
         "--score-thresh", "0.0", "--output", str(tmp_path / "det"), *TINY,
         "MODEL.WEIGHTS", str(det_weights)])
    det = counts["detections"]
    assert det["all/slices"] == 3
    assert sum(det[f"{g}/slices"] for g in ("0", "1", "2") if f"{g}/slices" in det) == 3
    assert (tmp_path / "det" / "detections.json").is_file()


def test_class_balanced_sampler_draws_classes_equally():
    import itertools

    from oneshot_d2.data.build import class_balanced_sampler

    dicts = [{"image_label": 0}] * 15 + [{"image_label": 1}] * 50  # MosMed-like 23 / 77 %
    sampler = class_balanced_sampler(dicts, seed=0)
    drawn = [dicts[i]["image_label"] for i in itertools.islice(iter(sampler), 20000)]
    share = sum(1 for y in drawn if y == 0) / len(drawn)
    assert share == pytest.approx(0.5, abs=0.02)  # uniform drawing would give 0.23


@pytest.mark.parametrize("config_file, datasets", [
    (CLASSIFIER, ("DATASETS.TRAIN", "('rd_cls_train',)")),  # the plain classifier
    (config_path("quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml"),
     ("DATASETS.TRAIN", "('rd_seg_train',)", "DATASETS.TRAIN_CLS", "('rd_cls_train',)"))])
def test_balanced_option_reaches_the_classification_loader(phantom_names, monkeypatch,
                                                           config_file, datasets):
    from oneshot_d2.data import build

    calls = []
    real = build.class_balanced_sampler
    monkeypatch.setattr(build, "class_balanced_sampler",
                        lambda dicts, **kw: calls.append(len(dicts)) or real(dicts, **kw))
    opts = (*TINY, "MODEL.ONESHOT.NUM_IMAGE_CLASSES", "3", *datasets)
    batch = next(iter(build.build_oneshot_train_loader(
        make_cfg(config_file, *opts, "DATALOADER.BALANCE_IMAGE_CLASSES", "True"))))
    assert calls == [6] and any("image_label" in x for x in batch)  # the 6 cls_train slices
    calls.clear()
    build.build_oneshot_train_loader(make_cfg(config_file, *opts))
    assert calls == []
