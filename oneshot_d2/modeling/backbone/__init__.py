"""Backbones registered with Detectron2's ``BACKBONE_REGISTRY`` and pretrained trunk weights by
name (``pretrained://``, registered with Detectron2's ``PathManager``)."""
from .efficientnet_lite import (
    EfficientNetLite,
    build_efficientnet_lite_backbone,
    build_efficientnet_lite_fpn_backbone,
    build_efficientnet_lite_single_fpn_backbone,
)
from .pretrained import PRETRAINED_WEIGHTS, is_pretrained_name, pretrained_state_dict
from .single_fpn import build_resnet_single_fpn_backbone

__all__ = ["build_resnet_single_fpn_backbone", "EfficientNetLite",
           "build_efficientnet_lite_backbone", "build_efficientnet_lite_fpn_backbone",
           "build_efficientnet_lite_single_fpn_backbone", "PRETRAINED_WEIGHTS",
           "is_pretrained_name", "pretrained_state_dict"]
