"""The original code's "FPN" with one level: a trunk cut after one stage (``res4``, stride 16, in
the affinity code; ``res5``, stride 32, in the LSTM code), one lateral 1x1 and one output 3x3
conv, no extra top level. Used by every paper config (``configs/covid``)."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ...errors import ConfigError

__all__ = ["build_resnet_single_fpn_backbone", "single_level_fpn"]


def single_level_fpn(bottom_up: Backbone, cfg) -> FPN:
    """``bottom_up`` + a one-level FPN without top block on ``MODEL.FPN.IN_FEATURES`` (exactly
    one feature; its stride names the output: stride 16 -> ``p4``, 32 -> ``p5``).

    Raises:
        ConfigError: ``MODEL.FPN.IN_FEATURES`` is not one feature.
    """
    if len(cfg.MODEL.FPN.IN_FEATURES) != 1:
        raise ConfigError("a one-level FPN takes exactly one input feature, got "
                          f"MODEL.FPN.IN_FEATURES={cfg.MODEL.FPN.IN_FEATURES}")
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=None,
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_resnet_single_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (``MODEL.RESNETS``, ``OUT_FEATURES`` should be one stage, e.g. ``["res4"]``) +
    a one-level FPN without top block. Output: ``{"p4": (N, FPN.OUT_CHANNELS, H/16, W/16)}``
    for ``res4``, ``{"p5": (N, FPN.OUT_CHANNELS, H/32, W/32)}`` for ``res5``."""
    return single_level_fpn(build_resnet_backbone(cfg, input_shape), cfg)
