"""The benchmark package behind tools/benchmark.py (oneshot_d2.benchmark): the original code's
reference times, the one model builder (the models the benchmark times) and the mixed-precision
switch, which must be off while FLOPs are counted. CPU, seeded, a few seconds."""
import contextlib
import json
import os

import pytest
import torch

from oneshot_d2.benchmark.common import Precision, build_model, measure
from oneshot_d2.benchmark.models import model_options
from oneshot_d2.benchmark.paper import FAITHFUL, PAPER_ROWS, load_reference
from tests.common import REPO

REFERENCE = os.path.join(REPO, "docs", "benchmark_reference.json")
AFFINITY = "affinity: oneshot_affinity_R_18_faithful"
LSTM = "LSTM: oneshot_lstm_attn_R_50_FPN as X-50 32x4d"


# Catches: a mistyped or swapped number in docs/benchmark_reference.json, a "same_as" row left
# unresolved, or a PAPER_ROWS label renamed without its reference (its "vs original" would
# silently print "-").
def test_reference_file_gives_the_former_times():
    ref = load_reference(REFERENCE)
    assert ref[AFFINITY] == {"inference": 1.032 / 0.82, "cls": 0.314 / 0.73,
                             "train": 1.653 / 0.62}
    lstm = {"inference": 1.997 / 2.31, "cls": 1.515 / 1.71, "train": 9.02 / 1.57}
    assert ref[LSTM] == lstm
    assert ref["LSTM, X-50 32x4d, former Detectron2-default network"] == lstm
    assert ref["LSTM, X-50 32x4d, one-level network on res4 + fg IoU 0.5"] == lstm
    assert set(ref) == set(PAPER_ROWS)


# Catches: a row's seconds edited without its raw numbers (or the other way round).
def test_reference_seconds_must_follow_from_the_raw_numbers(tmp_path):
    with open(REFERENCE, encoding="utf-8") as f:
        doc = json.load(f)
    doc["rows"][AFFINITY]["measured_seconds"]["cls"] = 0.315
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="seconds.cls"):
        load_reference(str(path))


# Parameter counts (all, trainable) measured with the two builders of tools/benchmark.py before
# they were merged into build_model.
BUILT = {
    "paper: affinity faithful": (FAITHFUL, PAPER_ROWS[AFFINITY][1], 13596007, 11120224),
    "models: R18 mask_rcnn": (*model_options("R18", "mask_rcnn"), 14862422, 14862422),
    "models: R18 oneshot_affinity": (*model_options("R18", "oneshot_affinity"), 22261216,
                                     19439577),
    "models: R18 oneshot_lstm_attn": (*model_options("R18", "oneshot_lstm_attn"), 23494115,
                                      20672476),
    "models: R50 mask_rcnn": (*model_options("R50", "mask_rcnn"), 43973206, 43973206),
}


# Catches: an option dropped or swapped in the merge of the two builders (another head, the R50
# backbone's FREEZE_AT or the models' score threshold / learning rate lost), or the initial
# copy of the segmentation branch into the classification branch left out.
@pytest.mark.parametrize("name", list(BUILT))
def test_builder_gives_the_former_models(name):
    config, opts, total, trainable = BUILT[name]
    cfg, model, opt = build_model(REPO, config, opts, 64, "cpu")
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert (cfg.MODEL.WEIGHTS, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == ("", 64, 64)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0
    if name.startswith("models"):
        assert (cfg.TEST.DETECTIONS_PER_IMAGE, cfg.SOLVER.BASE_LR) == (100, 0.001)
    if hasattr(model.roi_heads, "copy_seg_to_cls"):
        assert model.eval().roi_heads.cls_scores_equal_seg_scores()


# Catches: autocast() ignoring the counting flag (FLOPs counted under autocast, where
# FlopCounterMode's decomposed ops meet mixed dtypes) or ignoring amp, and measure() counting
# without switching it.
def test_autocast_is_off_while_counting_flops():
    amp = Precision(amp=True)
    with amp.counting_flops():
        assert isinstance(amp.autocast("cpu"), contextlib.nullcontext)
    with amp.autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert isinstance(Precision(amp=False).autocast("cpu"), contextlib.nullcontext)

    seen = []
    measure(lambda: seen.append(amp.counting), iters=1, warmup=1, device="cpu", precision=amp)
    assert seen == [False, False, True] and not amp.counting
