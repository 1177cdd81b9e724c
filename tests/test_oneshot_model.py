"""OneShotRCNN / OneShotROIHeads / CopyClsBranchesHook on a tiny CPU model."""
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from oneshot_d2 import add_oneshot_config
from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.hooks import SEG_LOSS_KEYS, CopyClsBranchesHook

from conftest import REPO

AFFINITY = os.path.join(REPO, "configs", "quick_schedules",
                        "oneshot_affinity_R_18_FPN_phantom_quick.yaml")
TINY = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CLS_IMS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.ONESHOT.IMAGE_HEAD.NUM_AFFINITIES", "32"]


@pytest.fixture(scope="module")
def cfg(phantom_root):
    register_cncb_layout(phantom_root, "om")
    c = get_cfg()
    add_oneshot_config(c)
    c.merge_from_file(AFFINITY)
    c.merge_from_list(TINY + ["DATASETS.TRAIN", "('om_seg_train',)",
                              "DATASETS.TRAIN_CLS", "('om_cls_train',)"])
    return c


@pytest.fixture(scope="module")
def batch(cfg):
    return next(iter(OneShotTrainer.build_train_loader(cfg)))


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return OneShotTrainer.build_model(cfg)


def _split(batch):
    return ([x for x in batch if "instances" in x], [x for x in batch if "image_label" in x])


def test_paired_batch(batch):
    seg, cls_items = _split(batch)
    assert len(seg) == 2 and len(cls_items) == 2 and len(batch) == 4


def test_frozen_branch_not_in_optimizer(cfg):
    model = _model(cfg)
    opt = OneShotTrainer.build_optimizer(cfg, model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    rh = model.roi_heads
    for module in rh.cls_branch_modules():
        for p in module.parameters():
            assert not p.requires_grad and id(p) not in in_opt
    assert all(id(p) in in_opt for p in model.image_head.parameters())
    model.train()
    assert rh.training and not any(m.training for m in rh.cls_branch_modules())


def test_image_head_lr_factor(cfg):
    model = _model(cfg)
    c = cfg.clone()
    c.defrost()
    c.SOLVER.IMAGE_HEAD_LR_FACTOR = 0.25
    opt = OneShotTrainer.build_optimizer(c, model)
    head_ids = {id(p) for p in model.image_head.parameters()}
    lrs = {"head": set(), "rest": set()}
    for g in opt.param_groups:
        kinds = {"head" if id(p) in head_ids else "rest" for p in g["params"]}
        assert len(kinds) == 1  # a group never mixes the head with the rest
        lrs[kinds.pop()].add(g["lr"])
    assert lrs["rest"] == {c.SOLVER.BASE_LR}
    assert len(lrs["head"]) == 1
    assert lrs["head"].pop() == pytest.approx(c.SOLVER.BASE_LR * 0.25)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("enabled", [False, True])
def test_image_loss_can_be_disabled(cfg, batch, enabled):
    model = _model(cfg).train()
    model.image_loss_enabled = enabled
    with EventStorage(0):
        losses = model(batch)
    assert ("loss_image_cls" in losses) == enabled
    assert set(SEG_LOSS_KEYS) <= set(losses)


def test_image_loss_start_hook(cfg):
    from oneshot_d2.engine.hooks import ImageLossStartHook

    class _Trainer:
        model = _model(cfg)
        iter = 0

    hook = ImageLossStartHook(10)
    hook.trainer = _Trainer()
    for it, expected in ((0, False), (9, False), (10, True), (11, True)):
        hook.trainer.iter = it
        hook.before_step()
        assert hook.trainer.model.image_loss_enabled == expected
    hook.trainer.iter = 3  # resume before the start
    hook.before_step()
    assert not hook.trainer.model.image_loss_enabled
    hook.after_train()
    assert hook.trainer.model.image_loss_enabled


def test_copy_makes_branches_equal_without_sharing(cfg):
    rh = _model(cfg).roi_heads
    seg_sd = rh.box_head.state_dict()
    assert not all(torch.equal(v, rh.cls_box_head.state_dict()[k]) for k, v in seg_sd.items())
    rh.copy_seg_to_cls()
    for seg, cls_ in zip(rh.seg_branch_modules(), rh.cls_branch_modules()):
        a, b = seg.state_dict(), cls_.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for pa, pb in zip(seg.parameters(), cls_.parameters()):
            assert pa.data_ptr() != pb.data_ptr()


@pytest.mark.parametrize("which", ["seg", "cls", "both"])
def test_mixed_batches(cfg, batch, which):
    seg, cls_items = _split(batch)
    items = {"seg": seg, "cls": cls_items, "both": batch}[which]
    model = _model(cfg).train()
    with EventStorage(0):
        losses = model(items)
    seg_keys = set(SEG_LOSS_KEYS)
    expected = {"seg": seg_keys, "cls": {"loss_image_cls"}, "both": seg_keys | {"loss_image_cls"}}
    assert set(losses) == expected[which]
    assert all(torch.isfinite(v) for v in losses.values())


def test_empty_instances(cfg, batch):
    seg, _ = _split(batch)
    item = dict(seg[0])
    item["instances"] = Instances(seg[0]["instances"].image_size)
    item["instances"].gt_boxes = seg[0]["instances"].gt_boxes[:0]
    item["instances"].gt_classes = seg[0]["instances"].gt_classes[:0]
    item["instances"].gt_masks = seg[0]["instances"].gt_masks[:0]
    model = _model(cfg).train()
    with EventStorage(0):
        losses = model([item])
    assert all(torch.isfinite(v) for v in losses.values())


def test_image_loss_gradient_reaches_backbone_only(cfg, batch):
    _, cls_items = _split(batch)
    model = _model(cfg).train()
    model.roi_heads.copy_seg_to_cls()
    with EventStorage(0):
        loss = model(cls_items)["loss_image_cls"]
    loss.backward()
    bb = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in bb)
    assert all(p.grad is not None for p in model.image_head.parameters())
    for module in model.roi_heads.cls_branch_modules():
        assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is None for p in model.proposal_generator.parameters())
    assert all(p.grad is None for p in model.roi_heads.box_head.parameters())


def test_inference_outputs_and_determinism(cfg, batch):
    model = _model(cfg).eval()
    model.roi_heads.copy_seg_to_cls()
    items = [dict(x, height=256, width=256) for x in batch[:1]] + batch[2:3]
    with torch.no_grad():
        a = model(items)
        b = model(items)
    for out_a, out_b in zip(a, b):
        assert out_a["image_cls"].shape == (3,)
        assert float(out_a["image_cls"].sum()) == pytest.approx(1.0, abs=1e-5)
        assert torch.equal(out_a["image_cls"], out_b["image_cls"])  # bit-identical
        assert out_a["image_cls_boxes"].shape == (cfg.MODEL.ONESHOT.ROI_BATCH_SIZE, 4)
        expl = out_a["image_cls_explanation"]
        assert expl["affinity"].shape == (32, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM)
        assert isinstance(out_a["instances"], Instances)
    # RoI boxes are rescaled to the requested output size (128 input -> 256 output)
    assert float(a[0]["image_cls_boxes"].max()) <= 256.0 + 1e-3


# ---- weight-copy hook ---------------------------------------------------------------------
class _FakeTrainer:
    def __init__(self):
        self.iter = 0
        self.start_iter = 0
        self.storage = EventStorage(0)


def _run_hook(mode, losses, period=3, window=1):
    hook = CopyClsBranchesHook(mode, period=period, window=window)
    hook.trainer = _FakeTrainer()
    hook.copy = lambda: setattr(hook, "num_copies", hook.num_copies + 1) or decisions.append(
        hook.trainer.iter)
    decisions = []
    with hook.trainer.storage:
        for i, value in enumerate(losses):
            hook.trainer.iter = i
            hook.trainer.storage.iter = i
            if value is not None:
                for k in SEG_LOSS_KEYS:
                    hook.trainer.storage.put_scalar(k, value / len(SEG_LOSS_KEYS))
            hook.after_step()
    return decisions, hook


def test_copy_mode_best():
    decisions, hook = _run_hook("best", [5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 2.0])
    assert decisions == [0, 1, 3, 6] and hook.best == pytest.approx(2.0)


def test_copy_mode_previous():
    decisions, _ = _run_hook("previous", [5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 2.0])
    assert decisions == [0, 1, 3, 5, 6]


def test_copy_mode_period():
    decisions, _ = _run_hook("period", [1.0] * 7, period=3)
    assert decisions == [2, 5]


def test_copy_skips_iterations_without_seg_loss():
    decisions, _ = _run_hook("best", [5.0, None, 4.0])
    assert decisions == [0, 2]


def test_copy_smoothing_window():
    # median over 3: 5, (5,1)->5, (5,1,4)->4, (1,4,4)->4, (4,4,3)->4 : one spike does not copy
    decisions, _ = _run_hook("best", [5.0, 1.0, 4.0, 4.0, 3.0], window=3)
    assert decisions == [0, 2]


def test_copy_state_roundtrip():
    _, hook = _run_hook("best", [5.0, 4.0, 4.5])
    state = hook.state_dict()
    fresh = CopyClsBranchesHook("best")
    fresh.load_state_dict(state)
    assert fresh.best == pytest.approx(4.0) and fresh.num_copies == 2
    assert all(isinstance(v, (int, float, list)) for v in state.values())
    assert math.isinf(CopyClsBranchesHook("previous").state_dict()["previous"])


def test_bad_copy_mode():
    with pytest.raises(ValueError, match="COPY.MODE"):
        CopyClsBranchesHook("sometimes")
