"""Model parts, registered with Detectron2's registries on import."""
from .backbone import build_resnet_single_fpn_backbone
from .image_heads import (
    IMAGE_HEAD_REGISTRY,
    AffinityHead,
    LSTMAttentionHead,
    build_image_head,
    image_cls_loss,
)
from .meta_arch import OneShotRCNN, image_cls_only
from .roi_heads import OneShotROIHeads, select_roi_batch

__all__ = ["OneShotRCNN", "image_cls_only", "OneShotROIHeads", "select_roi_batch",
           "IMAGE_HEAD_REGISTRY", "AffinityHead", "LSTMAttentionHead", "build_image_head",
           "image_cls_loss", "build_resnet_single_fpn_backbone"]
