"""Image-classification heads of the one-shot model (registry ``IMAGE_HEAD_REGISTRY``)."""
from .affinity import AffinityHead
from .build import IMAGE_HEAD_REGISTRY, ImageHead, build_image_head, image_cls_loss
from .lstm_attention import LSTMAttentionHead

__all__ = ["IMAGE_HEAD_REGISTRY", "ImageHead", "build_image_head", "image_cls_loss",
           "AffinityHead", "LSTMAttentionHead"]
