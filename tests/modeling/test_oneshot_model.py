"""OneShotRCNN / OneShotROIHeads / CopyClsBranchesHook on a tiny CPU model (the shipped quick
config at 128 px)."""
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.hooks import SEG_LOSS_KEYS, CopyClsBranchesHook
from tests.common import AFFINITY_QUICK, SMALL_HEADS, TINY, make_cfg, seeded_model, split_batch


@pytest.fixture(scope="module")
def cfg(phantom_root):
    register_cncb_layout(phantom_root, "om")
    return make_cfg(AFFINITY_QUICK, *TINY, *SMALL_HEADS,
                    "DATASETS.TRAIN", "('om_seg_train',)",
                    "DATASETS.TRAIN_CLS", "('om_cls_train',)")


@pytest.fixture(scope="module")
def batch(cfg):
    return next(iter(OneShotTrainer.build_train_loader(cfg)))


def _model(cfg, seed=0):
    return seeded_model(cfg, seed)


def test_paired_batch(batch):
    seg, cls_items = split_batch(batch)
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
    c.SOLVER.IMAGE_HEAD_LR_FACTOR = 0.25
    opt = OneShotTrainer.build_optimizer(c, model)
    head_ids = {id(p) for p in model.image_head.parameters()}
    lrs = {"head": set(), "rest": set()}
    for g in opt.param_groups:
        kinds = {"head" if id(p) in head_ids else "rest" for p in g["params"]}
        assert len(kinds) == 1  # a group never mixes the head with the rest
        lrs[kinds.pop()].add(g["lr"])
    assert lrs["rest"] == {c.SOLVER.BASE_LR}
    assert len(lrs["head"]) == 1 and lrs["head"].pop() == pytest.approx(c.SOLVER.BASE_LR * 0.25)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])


def test_disabled_image_loss_is_zero_with_a_zero_gradient_for_every_head_parameter(cfg, batch):
    """Before LOSS_START_ITER the image path does not run, but every head parameter still gets
    a (zero) gradient, as DDP without find_unused_parameters requires."""
    model = _model(cfg).train()
    model.image_loss_enabled = False
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == set(SEG_LOSS_KEYS) | {"loss_image_cls"}
    assert float(losses["loss_image_cls"].detach()) == 0.0
    sum(losses.values()).backward()
    for p in model.image_head.parameters():
        assert p.grad is not None and not p.grad.any()


def test_enabled_image_loss_is_the_bce_of_the_head(cfg, batch):
    model = _model(cfg).train()
    _, cls_items = split_batch(batch)
    with EventStorage(0):
        loss = model(batch)["loss_image_cls"]
        expected = model.image_losses(cls_items)["loss_image_cls"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(loss.detach()) > 0.01  # 0.1 x (2-4 x BCE at ~chance)


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
    seg, cls_items = split_batch(batch)
    items = {"seg": seg, "cls": cls_items, "both": batch}[which]
    model = _model(cfg).train()
    with EventStorage(0):
        losses = model(items)
    keys = set(SEG_LOSS_KEYS) if which != "cls" else set()
    assert set(losses) == keys | {"loss_image_cls"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert (float(losses["loss_image_cls"]) == 0.0) == (which == "seg")


def test_empty_instances(cfg, batch):
    seg, _ = split_batch(batch)
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
    _, cls_items = split_batch(batch)
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


def _image_loss_grads(cfg, cls_items, scale):
    """(backbone grads, head grads) of the image loss alone, BACKBONE_GRAD_SCALE = scale."""
    c = cfg.clone()
    c.MODEL.ONESHOT.IMAGE_HEAD.BACKBONE_GRAD_SCALE = scale
    model = _model(c).train()
    model.roi_heads.copy_seg_to_cls()
    with EventStorage(0) as storage:
        loss = model(cls_items)["loss_image_cls"]
        acc = storage.latest()["image_cls/train_accuracy"][0]
    loss.backward()
    bb = [torch.zeros_like(p) if p.grad is None else p.grad.clone()
          for p in model.backbone.parameters()]
    head = [p.grad.clone() for p in model.image_head.parameters()]
    return float(loss.detach()), bb, head, acc


def test_backbone_grad_scale(cfg, batch):
    _, cls_items = split_batch(batch)
    loss1, bb1, head1, acc = _image_loss_grads(cfg, cls_items, 1.0)
    loss_h, bb_h, head_h, _ = _image_loss_grads(cfg, cls_items, 0.25)
    loss0, bb0, head0, _ = _image_loss_grads(cfg, cls_items, 0.0)
    assert loss1 == loss_h == loss0  # the forward pass is unchanged
    assert sum(float(g.abs().sum()) for g in bb1) > 0
    for g1, gh, g0 in zip(bb1, bb_h, bb0):
        torch.testing.assert_close(gh, 0.25 * g1, rtol=1e-5, atol=1e-10)
        assert not g0.any()
    for g1, gh, g0 in zip(head1, head_h, head0):  # the head learns alike
        torch.testing.assert_close(gh, g1)
        torch.testing.assert_close(g0, g1)
    assert acc in (0.0, 0.5, 1.0)  # logged: the share of the 2 items classified right


def test_train_accuracy_is_logged_from_the_logits(cfg, batch):
    _, cls_items = split_batch(batch)
    model = _model(cfg).train()
    with EventStorage(0) as storage:
        model(cls_items)
        acc = storage.latest()["image_cls/train_accuracy"][0]
        logits = model.classify(*_rpn(model, cls_items))["logits"]
    labels = torch.tensor([x["image_label"] for x in cls_items])
    assert acc == pytest.approx(float((logits.argmax(1) == labels).float().mean()))


def _rpn(model, items):
    images, features = _features(model, items)
    return features, model.proposals_without_losses(images, features)


def _features(model, items):
    images = model.preprocess_image(items)
    return images, model.backbone(images.tensor)


def test_classification_proposals_are_detectron2_rpn_test_proposals(cfg, batch):
    """proposals_without_losses (training mode) == Detectron2's RPN.forward at inference."""
    _, cls_items = split_batch(batch)
    model = _model(cfg).train()
    with torch.no_grad():
        images, features = _features(model, cls_items)
        ours = model.proposals_without_losses(images, features)
        assert model.proposal_generator.training  # flag restored
        model.proposal_generator.eval()
        ref, losses = model.proposal_generator(images, features, None)
    assert losses == {}
    assert [len(p) for p in ours] == [cfg.MODEL.RPN.POST_NMS_TOPK_TEST] * len(cls_items)
    for a, b in zip(ours, ref):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, b.objectness_logits)


def test_zero_proposals_fall_back_to_the_whole_image(cfg, batch):
    _, cls_items = split_batch(batch)
    model = _model(cfg).eval()
    with torch.no_grad():
        images, features = _features(model, cls_items[:1])
        empty = Instances(images.image_sizes[0])
        empty.proposal_boxes = Boxes(torch.zeros(0, 4))
        empty.objectness_logits = torch.zeros(0)
        rois = model.roi_heads.forward_cls_features(features, [empty])
    h, w = images.image_sizes[0]
    beta = cfg.MODEL.ONESHOT.ROI_BATCH_SIZE
    assert rois["num_kept"].tolist() == [0]
    assert torch.equal(rois["boxes"][0], torch.tensor([[0.0, 0.0, w, h]]).expand(beta, 4))
    assert rois["mask_features"].shape[:2] == (1, beta)


def test_whole_image_roi_option_puts_the_slice_first(cfg, batch):
    """MODEL.ONESHOT.WHOLE_IMAGE_ROI: slot 0 of every image's RoI batch is the whole slice, the
    others are the papers' selection of beta - 1 RoIs (the same model otherwise)."""
    _, cls_items = split_batch(batch)
    on = cfg.clone()
    on.MODEL.ONESHOT.WHOLE_IMAGE_ROI = True
    plain_model, whole_model = _model(cfg).eval(), _model(on).eval()
    assert whole_model.roi_heads.whole_image_roi and not plain_model.roi_heads.whole_image_roi
    with torch.no_grad():
        images, features = _features(whole_model, cls_items)
        proposals, _ = whole_model.proposal_generator(images, features, None)
        rois = whole_model.roi_heads.forward_cls_features(features, proposals)
        plain_model.roi_heads.roi_batch_size -= 1
        rest = plain_model.roi_heads.forward_cls_features(features, proposals)
    for i, (h, w) in enumerate(images.image_sizes):
        assert rois["boxes"][i, 0].tolist() == [0.0, 0.0, float(w), float(h)]
        assert torch.equal(rois["boxes"][i, 1:], rest["boxes"][i])
    assert rois["mask_features"].shape[1] == cfg.MODEL.ONESHOT.ROI_BATCH_SIZE


def test_inference_outputs_and_determinism(cfg, batch):
    model = _model(cfg).eval()
    model.roi_heads.copy_seg_to_cls()
    items = [batch[0], batch[2]]
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


def test_roi_boxes_rescaled_to_the_output_size_per_axis(cfg, batch):
    """128 x 128 input reported at height 384 (x3), width 256 (x2): exact per-axis scales."""
    model = _model(cfg).eval()
    item = batch[2]
    with torch.no_grad():
        raw = model.inference([item], do_postprocess=False)[0]["image_cls_boxes"]
        out = model([dict(item, height=384, width=256)])[0]["image_cls_boxes"]
    assert raw[:, 2:].max() > 1  # not all-zero boxes
    assert torch.allclose(out, raw * torch.tensor([2.0, 3.0, 2.0, 3.0]), atol=1e-5)


def test_prediction_does_not_depend_on_batch_neighbours(cfg, batch):
    """GroupNorm + zero padding: a 128x128 slice batched with a 96x128 one gives exactly what it
    gives alone (CTRCNN runs each image size separately)."""
    model = _model(cfg).eval()
    model.roi_heads.copy_seg_to_cls()
    item = batch[2]
    small = dict(batch[3], image=batch[3]["image"][:, :96, :], height=96, width=128)
    with torch.no_grad():
        alone = model([item])[0]
        mixed = model([small, item])
    assert torch.equal(mixed[1]["image_cls"], alone["image_cls"])
    assert torch.equal(mixed[1]["image_cls_boxes"], alone["image_cls_boxes"])
    boxes = [o["instances"].pred_boxes.tensor for o in (mixed[1], alone)]
    assert torch.equal(*boxes)
    assert mixed[0]["instances"].image_size == (96, 128)


@pytest.mark.parametrize("norm", ["per_image", "mean_std"])
def test_pixel_norm_effect(cfg, batch, norm):
    """per_image: each channel z-scored, so an affine change of intensities changes nothing;
    mean_std: (x - PIXEL_MEAN) / PIXEL_STD exactly."""
    c = cfg.clone()
    c.MODEL.PIXEL_NORM = norm
    c.MODEL.PIXEL_MEAN, c.MODEL.PIXEL_STD = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]
    model = _model(c)
    x = batch[2]["image"].float()
    out = model.preprocess_image([{"image": x}]).tensor[0, :, :128, :128]
    if norm == "per_image":
        assert torch.allclose(out.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(out.std(dim=(1, 2)), torch.ones(3), atol=1e-5)
        shifted = model.preprocess_image([{"image": 0.5 * x + 40}]).tensor[0, :, :128, :128]
        assert torch.allclose(shifted, out, atol=1e-4)
    else:
        mean = torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1)
        std = torch.tensor([50.0, 60.0, 70.0]).view(3, 1, 1)
        assert torch.allclose(out, (x - mean) / std, atol=1e-6)


def test_plain_baseline_uses_the_same_normalisation(cfg, batch):
    from tests.common import MASK_RCNN_QUICK
    from tests.common import make_cfg as _make

    base = _make(MASK_RCNN_QUICK, *TINY)
    one = seeded_model(cfg)
    plain = seeded_model(base)
    assert type(plain).__name__ == "CTRCNN" and plain.pixel_norm == one.pixel_norm == "per_image"
    x = [batch[0]]
    assert torch.equal(plain.preprocess_image(x).tensor, one.preprocess_image(x).tensor)


def test_train_and_inference_agree_with_one_slice_per_batch(cfg, batch):
    """CNCB paper setting (GN image head, 1 classification slice per step): the training-mode
    logits of a slice equal its inference logits (same proposals, batch-independent norm)."""
    c = cfg.clone()
    c.MODEL.ONESHOT.IMAGE_HEAD.NORM = "GN"
    model = _model(c)
    model.roi_heads.copy_seg_to_cls()
    item = batch[2]
    model.train()
    with torch.no_grad():
        images, features = _features(model, [item])
        train_logits = model.classify(features, model.proposals_without_losses(images, features))
        model.eval()
        probs = model([item])[0]["image_cls"]
    assert torch.allclose(torch.softmax(train_logits["logits"][0], 0), probs, atol=1e-6)
    # With BN, training normalises over this slice's RoIs only: the two disagree.
    c.MODEL.ONESHOT.IMAGE_HEAD.NORM = "BN"
    bn_model = _model(c)
    bn_model.roi_heads.copy_seg_to_cls()
    with torch.no_grad():
        images, features = _features(bn_model.train(), [item])
        bn_train = bn_model.classify(features, bn_model.proposals_without_losses(images, features))
        bn_probs = bn_model.eval()([item])[0]["image_cls"]
    # (beyond float noise: GN above agrees to 1e-6; a random model's BN gap is ~1e-4..1e-3)
    assert not torch.allclose(torch.softmax(bn_train["logits"][0], 0), bn_probs, atol=1e-5)


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
