"""The paper configs build the original code's network, and the optimised inference
paths (shared RoI pooling, reused scores, slice class only) give exactly the outputs of running
the two branches separately."""
import contextlib

import numpy as np
import pytest
import torch

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.profiling import StageTimer, stage_flops
from oneshot_d2.modeling import image_cls_only
from tests.common import (
    AFFINITY_QUICK,
    LSTM_QUICK,
    SMALL_HEADS,
    TINY,
    config_path,
    make_cfg,
    seeded_model,
)
from tests.golden_inputs import golden_items

PAPER = {
    "affinity_R50": "covid/oneshot_affinity_R_50_FPN_100ep_cncb.yaml",
    "affinity_R50_A512": "covid/oneshot_affinity_R_50_FPN_A512_100ep_cncb.yaml",
    "lstm_R50": "covid/oneshot_lstm_attn_R_50_FPN_50ep_cncb.yaml",
    "lstm_X101": "covid/oneshot_lstm_attn_X_101_32x8d_FPN_50ep_cncb.yaml",
    "affinity_R18_faithful": "covid/oneshot_affinity_R_18_faithful_100ep_cncb.yaml",
}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_configs_run_the_original_network(name):
    """The released code: one map, 30 anchors per location, 400 -> 200 proposals in
    training and inference, NMS 0.75, 128-wide box head, one-conv mask head, legacy RoIAlign."""
    cfg = make_cfg(config_path(PAPER[name]), "MODEL.WEIGHTS", "")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_single_fpn_backbone"
    level = "p4" if "faithful" in name else "p5"
    assert list(cfg.MODEL.RPN.IN_FEATURES) == list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == [level]
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [[2, 4, 8, 16, 32]]
    assert [list(r) for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS] == [
        [0.1, 0.25, 0.5, 1.0, 1.5, 2.0]]
    rpn = cfg.MODEL.RPN
    assert (rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST) == (400, 400)
    assert (rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST) == (200, 200)
    assert rpn.NMS_THRESH == 0.75
    assert cfg.MODEL.ROI_BOX_HEAD.FC_DIM == 128 and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 2
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 1
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE == "ROIAlign"
    assert list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS) == [0.5, 0.75]
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.75


ONELEVEL_QUICK = "quick_schedules/oneshot_lstm_attn_R_18_onelevel_phantom_quick.yaml"
ONELEVEL_FINE = "quick_schedules/oneshot_lstm_attn_R_18_onelevel_res3_fg05_phantom_quick.yaml"


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            out.update(_flat(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def test_onelevel_accuracy_option_changes_only_the_map_and_the_foreground_iou():
    """The phantom accuracy option is the papers' one-level network with exactly two
    settings changed (map stride 8 at 256 px, RoI foreground IoU 0.5), so its results row
    measures those two and nothing else; the built model has one stride-8 map."""
    paper, fine = (_flat(make_cfg(config_path(c))) for c in (ONELEVEL_QUICK, ONELEVEL_FINE))
    changed = {k: (paper[k], fine[k]) for k in paper if paper[k] != fine[k]}
    assert changed == {
        "MODEL.RESNETS.OUT_FEATURES": (["res4"], ["res3"]),
        "MODEL.FPN.IN_FEATURES": (["res4"], ["res3"]),
        "MODEL.RPN.IN_FEATURES": (["p4"], ["p3"]),
        "MODEL.ROI_HEADS.IN_FEATURES": (["p4"], ["p3"]),
        "MODEL.ROI_HEADS.IOU_THRESHOLDS": ([0.5, 0.75], [0.5]),
        "MODEL.ROI_HEADS.IOU_LABELS": ([0, -1, 1], [0, 1]),
    }
    model = seeded_model(make_cfg(config_path(ONELEVEL_FINE), "MODEL.DEVICE", "cpu"))
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {"p3": 8}
    assert model.roi_heads.proposal_matcher.thresholds[1:-1] == [0.5]


def test_lstm_paper_model_has_the_original_shapes():
    """The built LSTM paper model (R-50, 256 px to keep the test fast): one stride-32 map,
    30 anchors per location, at most 200 proposals, fc 12544 -> 128, 16 RoIs."""
    cfg = make_cfg(config_path(PAPER["lstm_R50"]), "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
                   "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256")
    model = seeded_model(cfg).eval()
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {"p5": 32}
    assert model.proposal_generator.anchor_generator.num_anchors == [30]
    assert model.roi_heads.box_head.fc1.weight.shape == (128, 256 * 7 * 7)
    assert len([m for m in model.roi_heads.mask_head.children()
                if isinstance(m, torch.nn.Conv2d)]) == 2  # mask_fcn1 + 1x1 predictor
    model.roi_heads.copy_seg_to_cls()
    seg, cls_item = golden_items()
    with torch.no_grad():
        images = model.preprocess_image([cls_item])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        out = model([cls_item])[0]
    assert 0 < len(proposals[0]) <= 200
    assert out["image_cls_boxes"].shape == (16, 4)


# ---- optimised inference == the two branches run separately ---------------------------------
def _reference(model, x):
    """The earlier inference path: Detectron2's RoI heads for the lesions, then the
    classification branch with its own RoI pooling and box head."""
    with torch.no_grad():
        images = model.preprocess_image([x])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        instances, _ = model.roi_heads(images, features, proposals, None)
        cls_out = model.classify(features, proposals)
    return instances[0], torch.softmax(cls_out["logits"], 1)[0], cls_out["boxes"][0], \
        cls_out["box_scores"][0]


def _assert_equal_to_reference(model, x):
    ref_inst, ref_probs, ref_boxes, ref_scores = _reference(model, x)
    with torch.no_grad():
        out = model.inference([x], do_postprocess=False)[0]
    inst = out["instances"]
    assert len(inst) == len(ref_inst) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, b = inst.get(field), ref_inst.get(field)
        a, b = (a.tensor, b.tensor) if field == "pred_boxes" else (a, b)
        assert torch.equal(a, b), field
    assert torch.equal(out["image_cls"], ref_probs)
    assert torch.equal(out["image_cls_boxes"], ref_boxes)
    assert torch.equal(out["image_cls_box_scores"], ref_scores)
    return out


@pytest.fixture(params=[AFFINITY_QUICK, LSTM_QUICK], ids=["affinity", "lstm"])
def model(request):
    cfg = make_cfg(request.param, *TINY, *SMALL_HEADS, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                   "MODEL.ONESHOT.ROI_BATCH_SIZE", "4")
    m = seeded_model(cfg).eval()
    m.roi_heads.copy_seg_to_cls()
    return m


def test_shared_scoring_equals_separate_branches(model):
    """Equal weights: the segmentation branch's scores are reused, the outputs are exactly
    those of the two branches run separately; after any change to either branch's weights
    the classification branch scores again (and again equals the separate run)."""
    heads = model.roi_heads
    _, x = golden_items()
    assert heads.cls_scores_equal_seg_scores()
    _assert_equal_to_reference(model, x)
    calls = []
    hook = heads.cls_box_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model([x])
    assert not calls  # the frozen box head did not run: scores reused
    with torch.no_grad():  # a different classification branch: its own scores
        heads.cls_box_predictor.cls_score.weight.add_(
            torch.randn_like(heads.cls_box_predictor.cls_score.weight))
    assert not heads.cls_scores_equal_seg_scores()
    before = _assert_equal_to_reference(model, x)
    assert calls  # now it ran
    heads.copy_seg_to_cls()
    assert heads.cls_scores_equal_seg_scores()
    with torch.no_grad():  # an optimizer step on the segmentation branch (in place)
        heads.box_head.fc1.bias.add_(0.5)
    assert not heads.cls_scores_equal_seg_scores()
    after = _assert_equal_to_reference(model, x)
    assert not torch.equal(before["instances"].scores, after["instances"].scores)
    hook.remove()


def test_scores_not_shared_in_training_mode(model):
    model.train()
    assert not model.roi_heads.cls_scores_equal_seg_scores()


def test_image_cls_only_runs_no_lesion_path_and_changes_nothing(model):
    _, x = golden_items()
    with torch.no_grad():
        full = model([x])[0]
    heads = model.roi_heads
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1))
             for m in (heads.mask_head, heads.box_head)]

    def no_box_inference(*a, **k):
        raise AssertionError("segmentation box inference ran")

    heads.box_predictor.inference = no_box_inference
    with image_cls_only(model), torch.no_grad():
        only = model([x])[0]
    for h in hooks:
        h.remove()
    del heads.box_predictor.inference
    assert "instances" not in only
    # the box head runs once: its scores are the classification branch's (equal weights)
    assert len(calls) == 1
    for key in ("image_cls", "image_cls_boxes", "image_cls_box_scores"):
        assert torch.equal(only[key], full[key]), key
    assert model.inference_outputs == {"instances", "image_cls"}  # restored
    with torch.no_grad():
        assert "instances" in model([x])[0]


@pytest.mark.slow
def test_trainer_evaluates_classification_sets_on_the_slice_class_path(phantom_root,
                                                                       monkeypatch):
    """OneShotTrainer.test: the classification set runs without lesion outputs (no mask head
    call), with the same metrics as with the full inference; the segmentation set keeps its
    lesions."""
    register_cncb_layout(phantom_root, "sp")
    cfg = make_cfg(AFFINITY_QUICK, *TINY, *SMALL_HEADS, "MODEL.DEVICE", "cpu",
                   "DATASETS.TEST", "('sp_seg_test', 'sp_cls_test')")
    model = seeded_model(cfg).eval()
    model.roi_heads.copy_seg_to_cls()
    mask_calls = []
    hook = model.roi_heads.mask_head.register_forward_hook(lambda *a: mask_calls.append(1))
    cfg_cls = cfg.clone()
    cfg_cls.DATASETS.TEST = ("sp_cls_test",)
    fast = OneShotTrainer.test(cfg_cls, model)
    assert not mask_calls
    import oneshot_d2.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "image_cls_only", lambda m: contextlib.nullcontext())
    full = OneShotTrainer.test(cfg_cls, model)
    assert mask_calls  # the full inference ran the mask head
    np.testing.assert_equal(fast, full)  # exact; nan == nan
    both = OneShotTrainer.test(cfg, model)
    hook.remove()
    assert set(both) == {"sp_seg_test", "sp_cls_test"} and "segm" in both["sp_seg_test"]


# ---- the profiling helpers of the benchmarks (oneshot_d2.benchmark, tools/benchmark.py) ------
def test_stage_times_and_flops_add_up(model):
    _, x = golden_items()

    def run():
        with torch.no_grad():
            model([x])

    with StageTimer(model) as timer:
        run()
    flops = stage_flops(model, run)
    assert timer.seconds["backbone + FPN"] > 0 and timer.seconds["image head"] > 0
    # the classification mask head runs layer by layer: still timed and counted
    assert timer.seconds["classification mask features"] > 0
    assert flops["classification mask features"] > 0
    assert flops["classification box head"] == 0  # equal weights: scores reused
    stages = [v for k, v in flops.items() if k != "total"]
    assert sum(stages) == pytest.approx(flops["total"], rel=1e-6)


# ---- the CUDA path (skipped on machines without a GPU) ---------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@needs_cuda
@pytest.mark.parametrize("head", ["AffinityHead", "LSTMAttentionHead"])
def test_cuda_inference_equals_cpu(head):
    cfg = make_cfg(AFFINITY_QUICK, *TINY, "MODEL.ONESHOT.IMAGE_HEAD.NAME", head,
                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model = seeded_model(cfg).eval()
    model.roi_heads.copy_seg_to_cls()
    _, x = golden_items()
    with torch.no_grad():
        cpu = model([x])[0]
        gpu = model.to("cuda")([x])[0]
    torch.testing.assert_close(gpu["image_cls"].cpu(), cpu["image_cls"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu["image_cls_boxes"].cpu(), cpu["image_cls_boxes"], atol=1e-2,
                               rtol=1e-4)


@needs_cuda
def test_cuda_training_steps(phantom_root, tmp_path):
    from oneshot_d2.engine import setup
    from tests.common import dataset_opts, train_args

    register_cncb_layout(phantom_root, "cu")
    args = train_args(AFFINITY_QUICK, tmp_path, *TINY, *dataset_opts("cu"), "MODEL.DEVICE",
                      "cuda", "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()",
                      "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "0",
                      "TEST.PRECISE_BN.ENABLED", "False")
    trainer = OneShotTrainer(setup(args))
    trainer.train()
    losses = trainer.storage.latest()
    assert torch.isfinite(torch.tensor(losses["total_loss"][0]))
    assert next(trainer.model.parameters()).is_cuda
