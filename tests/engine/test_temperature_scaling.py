"""Temperature scaling: the fit recovers a known temperature, the model's probabilities use the
saved temperature (argmax and AUC unchanged), training with CALIBRATION_DATASET saves it in
model_final.pth and --eval-only reproduces the final evaluation, tools/calibrate.py writes a new
checkpoint, and checkpoints from before the buffer load as uncalibrated."""
import json

import numpy as np
import pytest
import torch

from oneshot_d2.checkpoint import AtomicCheckpointer
from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import main
from oneshot_d2.evaluation.calibration import calibration_summary, fit_temperature
from tests.common import TINY, config_path, make_cfg, seeded_model, train_args

CLASSIFIER = config_path("real/image_classifier_R_18_FPN_1200iter_ucsd_2cls.yaml")


def test_fit_recovers_the_temperature_of_overconfident_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 3)) * 1.5  # the true logits
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(3.0 * z, labels)  # a model 3x too confident
    assert t == pytest.approx(3.0, rel=0.08)
    s = calibration_summary(3.0 * z, labels, t)
    assert s["nll_after"] < s["nll_before"] and s["ece_after"] < s["ece_before"] / 3
    # log-probabilities give the same temperature as logits (softmax is shift-invariant)
    log_p = 3.0 * z - np.log(np.exp(3.0 * z).sum(1, keepdims=True))
    assert fit_temperature(log_p, labels) == pytest.approx(t, rel=1e-4)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


@pytest.fixture(scope="module")
def cls_opts(phantom_root):
    register_cncb_layout(phantom_root, "ts")
    return (*TINY, "MODEL.ONESHOT.NUM_IMAGE_CLASSES", "3", "DATASETS.TRAIN", "('ts_cls_train',)",
            "DATASETS.TEST", "('ts_cls_test',)", "SOLVER.IMS_PER_BATCH", "3")


def test_probabilities_follow_the_temperature(cls_opts):
    model = seeded_model(make_cfg(CLASSIFIER, *cls_opts)).eval()
    batch = [{"image": torch.randint(0, 255, (3, 128, 128)).float()} for _ in range(3)]
    with torch.no_grad():
        logits = model.logits(batch)
        model.image_cls_temperature.fill_(2.5)
        probs = torch.stack([o["image_cls"] for o in model(batch)])
    torch.testing.assert_close(probs, torch.softmax(logits / 2.5, dim=1))
    assert "image_cls_temperature" in model.state_dict()  # saved with the weights


def test_training_calibrates_and_eval_only_reproduces(cls_opts, tmp_path):
    opts = (*cls_opts, "SOLVER.MAX_ITER", "2", "TEST.CLASSIFICATION.CALIBRATION_DATASET",
            "ts_cls_val")
    results = main(train_args(CLASSIFIER, tmp_path, *opts))
    summary = json.loads((tmp_path / "calibration.json").read_text())
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    assert float(saved["image_cls_temperature"]) == pytest.approx(summary["temperature"])
    assert summary["temperature"] != 1.0 and summary["dataset"] == "ts_cls_val"
    assert summary["nll_after"] <= summary["nll_before"] + 1e-9
    # the final evaluation used the calibrated model: --eval-only of model_final.pth agrees
    again = main(train_args(CLASSIFIER, tmp_path / "eval", *cls_opts, "MODEL.WEIGHTS",
                            str(tmp_path / "model_final.pth"), eval_only=True))
    for key in ("accuracy", "macro_auc", "ece", "brier", "nll"):
        assert again["classification"][key] == pytest.approx(results["classification"][key])


def test_calibrate_tool_writes_a_new_checkpoint(cls_opts, tmp_path):
    from oneshot_d2.cli import calibrate as tool

    model = seeded_model(make_cfg(CLASSIFIER, *cls_opts))
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    before = weights.read_bytes()
    out = tmp_path / "cal" / "model_calibrated.pth"
    summary = tool.main(["--config-file", CLASSIFIER, "--dataset", "ts_cls_val", "--output",
                         str(out), *cls_opts, "MODEL.WEIGHTS", str(weights)])
    assert weights.read_bytes() == before  # the input is never rewritten
    calibrated = torch.load(out, map_location="cpu")["model"]
    assert float(calibrated["image_cls_temperature"]) == pytest.approx(summary["temperature"])
    assert json.loads(open(str(out) + ".calibration.json").read())["temperature"] == \
        pytest.approx(summary["temperature"])
    assert not (tmp_path / "cal" / "last_checkpoint").exists()
    from oneshot_d2.errors import UsageError
    with pytest.raises(UsageError, match="the input weights"):
        tool.main(["--config-file", CLASSIFIER, "--dataset", "ts_cls_val", "--output",
                   str(weights), *cls_opts, "MODEL.WEIGHTS", str(weights)])


def test_checkpoint_without_temperature_loads_uncalibrated(cls_opts, tmp_path):
    model = seeded_model(make_cfg(CLASSIFIER, *cls_opts))
    old = {k: v for k, v in model.state_dict().items() if k != "image_cls_temperature"}
    torch.save({"model": old}, tmp_path / "old.pth")
    fresh = seeded_model(make_cfg(CLASSIFIER, *cls_opts), seed=1)
    fresh.image_cls_temperature.fill_(3.0)
    checkpointer = AtomicCheckpointer(fresh)
    checkpointer.load(str(tmp_path / "old.pth"))
    assert checkpointer.missing_keys == []  # --eval-only accepts it as a complete model
