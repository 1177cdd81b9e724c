"""``IMAGE_HEAD_REGISTRY``, the image-classification loss and the base class of image heads."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from ...config import LOSS_REDUCTIONS
from .layers import MaskSieve, MaskVectorizer

__all__ = ["IMAGE_HEAD_REGISTRY", "build_image_head", "image_cls_loss", "ImageHead"]

IMAGE_HEAD_REGISTRY = Registry("IMAGE_HEAD")
IMAGE_HEAD_REGISTRY.__doc__ = """
Image (slice) classification heads of the one-shot model. A head maps the RoI batch's mask
features (N, beta, C, 28, 28) to class logits (N, num_classes) and explanation tensors.
The registered object is called with ``cfg``.
"""


def build_image_head(cfg) -> nn.Module:
    """Build ``cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME`` from ``IMAGE_HEAD_REGISTRY``."""
    return IMAGE_HEAD_REGISTRY.get(cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME)(cfg)


def image_cls_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum"
                   ) -> torch.Tensor:
    """Per-class binary cross-entropy on one-hot targets (papers' eq. 7 / 10).

    Args:
        logits: (N, C) class logits.
        labels: (N,) int class indices.
        reduction: over classes, ``sum`` (papers) or ``mean`` (original code); images are
            averaged.
    Returns:
        scalar loss.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"image loss reduction must be one of {LOSS_REDUCTIONS}, got "
                         f"{reduction!r}")
    target = F.one_hot(labels.long(), logits.shape[1]).to(logits.dtype)
    per_class = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_image = per_class.sum(1) if reduction == "sum" else per_class.mean(1)
    return per_image.mean()


class ImageHead(nn.Module):
    """Shared front of the image heads: mask sieve, then vectorisation.
    Subclasses implement :meth:`classify` on the (N, beta, C) RoI vectors."""

    @configurable
    def __init__(self, *, channels: int, resolution: int, roi_batch_size: int, num_classes: int,
                 sieve_stages: int, sieve_order: str, norm: str = "BN"):
        super().__init__()
        self.roi_batch_size = roi_batch_size
        self.num_classes = num_classes
        self.sieve = MaskSieve(channels, sieve_stages, sieve_order, norm)
        self.vectorize = MaskVectorizer(channels, resolution, norm)

    @classmethod
    def from_config(cls, cfg):
        head = cfg.MODEL.ONESHOT.IMAGE_HEAD
        return {
            "channels": cfg.MODEL.ROI_MASK_HEAD.CONV_DIM,
            "resolution": 2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION,
            "roi_batch_size": cfg.MODEL.ONESHOT.ROI_BATCH_SIZE,
            "num_classes": cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES,
            "sieve_stages": head.SIEVE_STAGES,
            "sieve_order": head.SIEVE_ORDER,
            "norm": head.NORM,
        }

    def forward(self, mask_features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            mask_features: (N, beta, C, H, W) RoI-batch mask features.
        Returns:
            dict with ``logits`` (N, num_classes) and head-specific explanation tensors.
        """
        n, beta = mask_features.shape[:2]
        x = self.vectorize(self.sieve(mask_features.flatten(0, 1)))
        return self.classify(x.view(n, beta, -1))

    def classify(self, rois: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError
